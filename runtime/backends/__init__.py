"""Inference backends: one file each, one interface (base.py).

The model file decides the backend family (.onnx -> ONNX Runtime, .engine/.plan -> TensorRT, .pt/.pth
training checkpoint -> PyTorch); an .onnx file may also ask for OpenVINO (the CPU, `segcls[openvino]`)
or TensorRT (which builds a cached engine). Within it, the backend uses the fastest device that really
runs here and says which through `Backend.device`. Which of the backends that can run an .onnx is the
fastest on this machine is measured, not assumed: `choice.choose_backend`, what `--backend auto` does in
the pipeline (`pipeline.open_model`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from segcls.core.cpu import cpu_info
from segcls.core.errors import ModelError, SegclsError
from segcls.core.model_info import ENGINE_SUFFIXES, read_model_info
from segcls.runtime.backends.base import Backend, BackendOutput
from segcls.runtime.backends.precision import PRECISIONS, run_precision

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt", "torch")
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
    check: bool = True,
    log: Callable[[str], None] = lambda message: None,
    **kwargs,
) -> Backend:
    """A loaded backend for `model_path`; `backend` "auto" is the backend of the file type (ONNX Runtime
    for an .onnx: the pipeline's `open_model` is what measures the fastest one).

    `precision`: None runs an exported model in the precision it was exported with; OpenVINO also runs an
    FP32 model in "bf16" on a CPU with native BF16 (`backends/precision.py`); the torch backend takes
    fp32|fp16|bf16 (default fp16 on CUDA, fp32 on the CPU). An .onnx file with `backend="tensorrt"` runs on
    an engine built for it on first use and kept in `~/.cache/segcls/engines/` (for `tile` x `tile`
    inputs, up to `batch` per call). OpenVINO's outputs are checked against ONNX Runtime's on the same file
    before it is used (`check.cached_check`: once per model, precision, CPU and versions; the line goes to
    `log`; `check=False` skips it). Other
    keyword arguments go to the backend's constructor (e.g. `threads`, and `sessions`: ONNX Runtime's
    sessions, OpenVINO's streams).
    """
    if backend not in BACKENDS:
        raise SegclsError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    model_path = Path(model_path)
    if not model_path.exists():
        raise ModelError(f"model not found: {model_path}")
    kind = backend_for(model_path)
    if kind != "torch" and backend != "torch":  # before an engine build of minutes, not after it
        exported = read_model_info(model_path).precision
        run_precision(backend if backend != "auto" else kind, model_path, exported, precision, cpu_info())
    if backend == "tensorrt" and kind == "onnxruntime":
        from segcls.core.engine import cached_engine

        model_path, kind = cached_engine(model_path, tile=tile, max_batch=batch, log=log), "tensorrt"
        kwargs.pop("threads", None)  # ONNX Runtime's CPU threads, given for the .onnx: nothing to an engine
        kwargs.pop("sessions", None)
    if backend == "openvino" and kind == "onnxruntime":
        kind = "openvino"
    if backend != "auto" and backend != kind:
        raise ModelError(f"the {backend} backend cannot run {model_path}: a {model_path.suffix} file needs {kind}")
    if kind == "onnxruntime":
        from segcls.runtime.backends.onnxruntime import OnnxRuntimeBackend as cls
    elif kind == "openvino":
        from segcls.runtime.backends.openvino import OpenVinoBackend as cls

        kwargs["precision"] = precision
        if "sessions" in kwargs:
            kwargs["streams"] = kwargs.pop("sessions")
    elif kind == "tensorrt":
        from segcls.runtime.backends.tensorrt import TensorRTBackend as cls
    else:
        from segcls.runtime.backends.torch import TorchBackend as cls

        kwargs["precision"] = precision
    instance = cls(model_path, **kwargs)
    instance.load()
    if kind == "openvino" and check:
        from segcls.runtime.backends.check import cached_check

        try:
            result = cached_check(instance, model_path, log=log)
            if not result.passed:
                raise ModelError(f"{model_path} failed verification on {kind} {instance.precision}: {result.failed}")
        except BaseException:
            instance.close()
            raise
    return instance
