"""Which precision a backend computes an exported model in, or the one line that says why it cannot.

An exported model carries the precision it was exported (and verified) in. ONNX Runtime and TensorRT run
it as it is. OpenVINO runs it as it is too, or, for an FP32 (or FP16) model, in BF16 where the CPU has
native BF16 arithmetic (AVX512-BF16 or AMX): no calibration, about half the memory traffic, and every
convolution on the BF16 dot-product instructions. Without them BF16 is emulated and slower than FP32, so
it is refused. The torch backend (a training checkpoint) takes any of PRECISIONS (backends/torch.py).
"""

from __future__ import annotations

from pathlib import Path

from segcls.core.cpu import CpuInfo
from segcls.core.errors import SegclsError

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")  # what --precision may ask for; tf32: the torch backend on CUDA
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}  # OpenVINO's INFERENCE_PRECISION_HINT values


def run_precision(backend: str, model: Path, exported: str, requested: str | None, cpu: CpuInfo) -> str:
    """The precision `backend` computes `model` (exported in `exported`) in, when `requested` (None: as
    exported) is asked for; a SegclsError of one line where it cannot."""
    if requested is not None and requested not in PRECISIONS:
        raise SegclsError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested is None or requested == exported:
        return exported
    if backend == "openvino":
        if exported == "int8":
            raise SegclsError(
                f"{model.name} is an INT8 model: it runs its quantized layers in INT8 and the rest in FP32; "
                f"--precision {requested} is for FP32 models"
            )
        if requested == "bf16":
            require_bf16(cpu)
            return "bf16"
        if requested == "fp32":  # an FP16 model computed in FP32 (OpenVINO's CPU default for FP16 weights)
            return "fp32"
        raise SegclsError(
            f"OpenVINO on this CPU runs {model.name} in fp32 or bf16, not {requested} "
            "(an FP16 model is for GPUs: segcls-export --fp16)"
        )
    if requested == "bf16" and exported in ("fp32", "fp16"):
        raise SegclsError(
            f"{backend} runs {model.name} in the precision it was exported with ({exported}); --precision bf16 "
            "needs --backend openvino or auto (pip install 'segcls[openvino]')"
        )
    raise SegclsError(
        f"{backend} runs {model.name} in the precision it was exported with ({exported}), not {requested} "
        "(segcls-export --fp16 for an FP16 model, --int8 for INT8)"
    )


def require_bf16(cpu: CpuInfo) -> None:
    """Refuse BF16 on a CPU without native BF16 arithmetic, naming what it has."""
    if not cpu.bf16:
        has = " ".join(cpu.isa) or "no AVX flags"
        raise SegclsError(
            f"--precision bf16 needs a CPU with AVX512-BF16 or AMX; this one ({cpu.model}) has {has}, "
            "where BF16 would be emulated and slower than FP32"
        )
