"""What this CPU can run: its model name and instruction-set flags, read once from /proc/cpuinfo.

ONNX Runtime and OpenVINO pick kernels from CPUID at run time (AVX-512 FP32 convolutions, VNNI INT8,
AVX512-BF16 / AMX BF16), so a benchmark records these flags and a BF16 request is refused where they are
missing.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The flags that change which kernels run: FP32 convolutions use AVX-512 where it is there, INT8 ones VNNI
# (several times AVX2's int8 throughput), BF16 AVX512-BF16 or AMX.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def isa(self) -> list[str]:
        """The flags of ISA_FLAGS this CPU has, in that order."""
        return [f for f in ISA_FLAGS if f in self.flags]

    @property
    def bf16(self) -> bool:
        """Native BF16 arithmetic (AVX512-BF16 or AMX); without it BF16 is emulated, slower than FP32."""
        return any(f in self.flags for f in BF16_FLAGS)


def read_cpu_info(path: str | Path = CPUINFO) -> CpuInfo:
    """The first CPU's model name and flags; empty flags where the file is missing (not Linux)."""
    fields: dict[str, str] = {}
    try:
        with open(path) as f:
            for key, value in (line.split(":", 1) for line in f if ":" in line):
                fields.setdefault(key.strip(), value.strip())  # the first CPU's
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    return CpuInfo(model, frozenset(fields.get("flags", "").split()))


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU, read once per process."""
    return read_cpu_info()
