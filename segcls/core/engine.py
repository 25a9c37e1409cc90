"""ONNX -> TensorRT engine + sidecar, with the TensorRT Python API.

Version differences are handled by feature detection, never by parsing version strings:
- TensorRT 10 networks are always explicit-batch (`NetworkDefinitionCreationFlag.EXPLICIT_BATCH` is
  deprecated and ignored; TensorRT 11 removed it), so it is never set.
- Precision comes from the ONNX graph: the network is created STRONGLY_TYPED where that flag exists
  (10.x; in 11.x it is kept for compatibility and ignored because strong typing is the only mode), and
  `BuilderFlag.FP16` (removed in 11, not allowed on strongly typed networks in 10) is never used. An FP16
  engine therefore needs the FP16 ONNX model (`segcls-export --fp16`).
  (docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html;
  .../tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html)
- One optimisation profile: batch 1..max at the tile size (H = W = tile); the engine accepts only that H, W.
- The timing cache (`IBuilderConfig.create_timing_cache(bytes)` / `ITimingCache.serialize()`) persists
  across builds; it is only valid for one TensorRT version and GPU, so its file name says which.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from segcls.core.atomic import atomic_path
from segcls.core.constants import check_multiple
from segcls.core.cuda import CudaDevice, import_tensorrt
from segcls.core.errors import ExportError, SegclsError
from segcls.core.hashing import file_sha256
from segcls.core.model_info import (
    INPUT_NAME,
    KEY_COMPUTE_CAPABILITY,
    KEY_DESCRIPTION,
    KEY_DEVICE_NAME,
    KEY_ONNX_SHA256,
    KEY_PROFILE,
    KEY_TENSORRT_VERSION,
    read_model_info,
    read_onnx_metadata,
    read_sidecar,
    sidecar_path,
)


@dataclass
class EngineResult:
    path: Path
    sidecar: Path
    timing_cache: Path
    seconds: float
    nbytes: int

    def summary(self) -> str:
        return f"wrote {self.path} ({self.nbytes / 2**20:.1f} MiB) and {self.sidecar.name} in {self.seconds:.0f} s"


def cache_root() -> Path:
    """`~/.cache/segcls` (or under `$XDG_CACHE_HOME`): timing caches and engines built on demand."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segcls"


def device_slug(device_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", device_name).strip("-") or "gpu"


def default_timing_cache(tensorrt_version: str, compute_capability: str, device_name: str) -> Path:
    """Keyed by device name too: an H100 and an H200 are both sm 9.0 but TensorRT refuses the other's cache."""
    sm = compute_capability.replace(".", "")
    return cache_root() / f"tensorrt-{tensorrt_version}-sm{sm}-{device_slug(device_name)}.timing"


def network_flags(trt) -> int:
    """`create_network` flags: STRONGLY_TYPED when the enum has it (10.x; ignored by 11.x), else none."""
    flags = trt.NetworkDefinitionCreationFlag
    return 1 << int(flags.STRONGLY_TYPED) if hasattr(flags, "STRONGLY_TYPED") else 0


def _tensorrt_and_gpu(device: int):
    """The tensorrt module and GPU `device`'s compute capability and name (what engines are keyed by)."""
    trt = import_tensorrt()
    cuda = CudaDevice(device)
    try:
        return trt, cuda.compute_capability, cuda.name
    finally:
        cuda.close()


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    max_batch: int = 32,
    tile: int = 1024,
    workspace_gib: float = 4.0,
    timing_cache: str | Path | None = None,
    device: int = 0,
    log: Callable[[str], None] = lambda message: None,
) -> EngineResult:
    """Build `engine_path` and its sidecar from a segcls ONNX model on GPU `device`."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if max_batch < 1:
        raise SegclsError(f"--max-batch must be >= 1, got {max_batch}")
    check_multiple("--tile", tile)
    read_model_info(onnx_path)  # refuses a file that is not a segcls ONNX model
    trt, capability, device_name = _tensorrt_and_gpu(device)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(trt.__version__, capability, device_name)

    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {'; '.join(errors) or 'no details'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    shapes = {k: (b, tile, tile, 3) for k, b in (("min", 1), ("opt", max_batch), ("max", max_batch))}
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    _attach_timing_cache(config, cache_path, log)

    log(f"building TensorRT {trt.__version__} engine for {device_name} (sm {capability}), "
        f"batch 1..{max_batch} at {tile}x{tile}; this takes minutes")  # fmt: skip
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:  # the builder logs why and returns None
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")

    sidecar = {
        **read_onnx_metadata(onnx_path),
        KEY_ONNX_SHA256: file_sha256(onnx_path),
        KEY_TENSORRT_VERSION: trt.__version__,
        KEY_COMPUTE_CAPABILITY: capability,
        KEY_DEVICE_NAME: device_name,
        KEY_PROFILE: {k: list(v) for k, v in shapes.items()},
    }
    sidecar[KEY_DESCRIPTION] = json.loads(sidecar[KEY_DESCRIPTION])  # an object, for people reading it
    side_path = sidecar_path(engine_path)
    with ExitStack() as stack:  # both files appear together or neither does
        engine_tmp = stack.enter_context(atomic_path(engine_path))
        side_tmp = stack.enter_context(atomic_path(side_path))
        engine_tmp.write_bytes(memoryview(serialized))
        side_tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    _save_timing_cache(config, cache_path, log)
    seconds = time.perf_counter() - start
    return EngineResult(engine_path, side_path, cache_path, seconds, engine_path.stat().st_size)


def _attach_timing_cache(config, path: Path, log: Callable[[str], None]) -> None:
    """Start from the cache at `path` when TensorRT accepts it, else from an empty one.

    `set_timing_cache(..., ignore_mismatch=False)` returns False for a cache made on a device with other
    properties (and then the config has none); a mismatched cache is never forced in, since its timings
    describe another GPU.
    """
    if path.is_file():
        if config.set_timing_cache(config.create_timing_cache(path.read_bytes()), ignore_mismatch=False):
            return
        log(f"warning: timing cache {path} was made on another GPU or TensorRT; building without it and replacing it")
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        log("warning: TensorRT refused an empty timing cache; building without one")


def _save_timing_cache(config, path: Path, log: Callable[[str], None]) -> None:
    """A cache that cannot be saved only makes the next build slower: say so and go on."""
    cache = config.get_timing_cache()
    if cache is None:  # none was attached (see `_attach_timing_cache`)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(memoryview(cache.serialize()))
    except (OSError, SegclsError) as e:
        log(f"warning: timing cache not saved to {path}: {e}")


def cached_engine(
    onnx_path: str | Path,
    *,
    tile: int = 1024,
    max_batch: int = 32,
    device: int = 0,
    log: Callable[[str], None] = lambda message: None,
) -> Path:
    """The engine for `onnx_path` in `~/.cache/segcls/engines/`, built on first use and reused after.

    An engine runs only where it was built, so the key is the model's sha256, the TensorRT version, the
    compute capability and the device name (TensorRT tells an H100 from an H200, both sm 9.0), plus the
    tile and batch the profile was built for.
    """
    onnx_path = Path(onnx_path)
    read_model_info(onnx_path)
    trt, capability, device_name = _tensorrt_and_gpu(device)
    sha = file_sha256(onnx_path)
    name = f"{sha[:16]}-trt{trt.__version__}-sm{capability.replace('.', '')}-{device_slug(device_name)}"
    path = cache_root() / "engines" / f"{name}-t{tile}-b{max_batch}.engine"
    if path.is_file() and sidecar_path(path).is_file() and read_sidecar(path).get(KEY_ONNX_SHA256) == sha:
        log(f"TensorRT engine from the cache: {path}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    result = build_engine(onnx_path, path, max_batch=max_batch, tile=tile, device=device, log=log)
    log(result.summary())
    return path
