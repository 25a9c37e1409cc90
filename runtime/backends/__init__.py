"""Inference backends: one file each, one interface (base.py).

The model file decides the backend family (.onnx -> ONNX Runtime, .engine/.plan -> TensorRT, .pt/.pth
training checkpoint -> PyTorch; an .onnx file may also ask for TensorRT, which builds a cached engine);
within it, the backend uses the fastest device that really runs here and
says which through `Backend.device`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from segcls.core.errors import ModelError, SegclsError
from segcls.core.model_info import ENGINE_SUFFIXES
from segcls.runtime.backends.base import Backend, BackendOutput

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")  # the torch backend's; fp32 is IEEE, tf32 allows TF32 (CUDA)
_BY_SUFFIX = {".onnx": "onnxruntime", ".pt": "torch", ".pth": "torch"} | dict.fromkeys(ENGINE_SUFFIXES, "tensorrt")

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendOutput", "backend_for", "open_backend"]


def backend_for(model_path: str | Path) -> str:
    """The backend that runs this model file, from its suffix."""
    suffix = Path(model_path).suffix.lower()
    if suffix not in _BY_SUFFIX:
        raise ModelError(
            f"cannot tell what kind of model {model_path} is: expected .onnx (ONNX Runtime), "
            f"{'/'.join(ENGINE_SUFFIXES)} (TensorRT) or .pt/.pth (training checkpoint)"
        )
    return _BY_SUFFIX[suffix]


def open_backend(
    model_path: str | Path,
    backend: str = "auto",
    *,
    precision: str | None = None,
    tile: int = 1024,
    batch: int = 32,
    log: Callable[[str], None] = lambda message: None,
    **kwargs,
) -> Backend:
    """A loaded backend for `model_path`; `backend` "auto" picks it from the file type.

    `precision` is the torch backend's (ONNX and TensorRT models keep the precision they were exported
    with). An .onnx file with `backend="tensorrt"` runs on an engine built for it on first use and kept
    in `~/.cache/segcls/engines/` (for `tile` x `tile` inputs, up to `batch` per call). Other keyword
    arguments go to the backend's constructor (e.g. `threads` for ONNX Runtime).
    """
    if backend not in BACKENDS:
        raise SegclsError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    model_path = Path(model_path)
    if not model_path.exists():
        raise ModelError(f"model not found: {model_path}")
    kind = backend_for(model_path)
    if precision is not None and kind != "torch":  # before an engine build of minutes, not after it
        raise SegclsError(
            f"--precision is for the torch backend; {model_path.name} keeps the precision it was exported with "
            "(segcls-export --fp16 for an FP16 model)"
        )
    if backend == "tensorrt" and kind == "onnxruntime":
        from segcls.core.engine import cached_engine

        model_path, kind = cached_engine(model_path, tile=tile, max_batch=batch, log=log), "tensorrt"
        kwargs.pop("threads", None)  # ONNX Runtime's CPU threads, given for the .onnx: nothing to an engine
    if backend != "auto" and backend != kind:
        raise ModelError(f"the {backend} backend cannot run {model_path}: a {model_path.suffix} file needs {kind}")
    if kind == "onnxruntime":
        from segcls.runtime.backends.onnxruntime import OnnxRuntimeBackend as cls
    elif kind == "tensorrt":
        from segcls.runtime.backends.tensorrt import TensorRTBackend as cls
    else:
        from segcls.runtime.backends.torch import TorchBackend as cls

        kwargs["precision"] = precision
    instance = cls(model_path, **kwargs)
    instance.load()
    return instance
