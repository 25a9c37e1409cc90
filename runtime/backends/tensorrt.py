"""TensorRT backend: a serialised engine + its sidecar, run with the name-based tensor API.

Works on TensorRT 10 and 11 (`set_input_shape`, `set_tensor_address`, `execute_async_v3`; no bindings).
Device memory and streams come from cuda-python (`cuda.bindings.runtime`). An engine only runs on the
TensorRT version and GPU architecture it was built for, so the sidecar's record of both is checked
before deserialising, and a mismatch is refused with a message that says how to rebuild.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segcls.errors import BackendUnavailableError, ModelError
from segcls.runtime.backends.base import Backend, BackendOutput
from segcls.runtime.model_info import (
    INPUT_NAME,
    KEY_COMPUTE_CAPABILITY,
    KEY_TENSORRT_VERSION,
    OUTPUT_NAMES,
    ModelInfo,
    read_model_info,
)

INSTALL_HINT = "pip install 'segcls[gpu]'"


def import_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: the module is there but libnvinfer is not
        raise BackendUnavailableError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return tensorrt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise BackendUnavailableError(f"cuda-python is not installed: {INSTALL_HINT}") from None
    return cudart


class CudaDevice:
    """The few CUDA runtime calls TensorRT inference needs: one device, one stream, raw buffers.

    cuda-python returns `(error, *values)` from every call; `_call` turns errors into exceptions.
    """

    def __init__(self, index: int = 0) -> None:
        self.cudart = _import_cudart()
        count = self._call("cudaGetDeviceCount", unavailable=True)
        if not 0 <= index < count:
            raise BackendUnavailableError(f"CUDA device {index} does not exist; this machine has {count}")
        self.index = index
        self._call("cudaSetDevice", index, unavailable=True)
        props = self._call("cudaGetDeviceProperties", index)
        name = props.name
        self.name = (name.split(b"\0")[0].decode() if isinstance(name, bytes) else str(name)).strip()
        self.compute_capability = f"{props.major}.{props.minor}"
        self.stream = self._call("cudaStreamCreate")
        self._buffers: list[int] = []

    def _call(self, fn: str, *args, unavailable: bool = False):
        err, *values = getattr(self.cudart, fn)(*args)
        if err != self.cudart.cudaError_t.cudaSuccess:
            cls = BackendUnavailableError if unavailable else RuntimeError
            raise cls(f"CUDA {fn} failed: {getattr(err, 'name', err)}")
        return values[0] if len(values) == 1 else values or None

    def malloc(self, nbytes: int) -> int:
        ptr = int(self._call("cudaMalloc", max(int(nbytes), 1)))
        self._buffers.append(ptr)
        return ptr

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", ptr, array.ctypes.data, array.nbytes, kind, self.stream)

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", array.ctypes.data, ptr, array.nbytes, kind, self.stream)

    def synchronize(self) -> None:
        self._call("cudaStreamSynchronize", self.stream)

    def close(self) -> None:
        for ptr in self._buffers:
            self.cudart.cudaFree(ptr)
        self._buffers.clear()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None


def check_engine_compatible(info: ModelInfo, tensorrt_version: str, compute_capability: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU architecture (it would not deserialise,
    or worse, TensorRT would abort the process)."""
    built_trt = str(info.metadata.get(KEY_TENSORRT_VERSION))
    built_cc = str(info.metadata.get(KEY_COMPUTE_CAPABILITY))
    if built_trt != tensorrt_version or built_cc != compute_capability:
        raise ModelError(
            f"{info.path} was built with TensorRT {built_trt} for compute capability {built_cc}, but this "
            f"machine has TensorRT {tensorrt_version} and compute capability {compute_capability}; "
            "rebuild the engine here with `segcls-export --trt` (or use the ONNX model)"
        )


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model_path: str | Path, device: int = 0) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.device_index = device
        self.info: ModelInfo | None = None
        self._cuda: CudaDevice | None = None
        self._runtime = self._engine = self._context = None
        self._ptrs: dict[str, int] = {}
        self._dtypes: dict[str, np.dtype] = {}

    def load(self) -> None:
        info = read_model_info(self.model_path)
        if not info.is_engine:
            raise ModelError(f"{self.model_path} is not a TensorRT engine (its metadata has no TensorRT version)")
        trt = import_tensorrt()
        self._cuda = CudaDevice(self.device_index)
        try:
            check_engine_compatible(info, trt.__version__, self._cuda.compute_capability)
            self._load_engine(trt, info)
        except BaseException:
            self.close()
            raise
        self.info, self.description = info, info.description

    def _load_engine(self, trt, info: ModelInfo) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if engine is None:  # TensorRT logs the reason and returns None
            raise ModelError(f"TensorRT could not deserialise {self.model_path} (corrupt or incompatible engine)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if sorted(names) != sorted((INPUT_NAME, *OUTPUT_NAMES)):
            raise ModelError(f"{self.model_path} has I/O tensors {names}; expected {[INPUT_NAME, *OUTPUT_NAMES]}")
        if engine.get_tensor_mode(INPUT_NAME) != trt.TensorIOMode.INPUT:
            raise ModelError(f"{self.model_path}: '{INPUT_NAME}' is not the engine's input")
        context = engine.create_execution_context()
        # Buffers sized for the profile's largest input; each call then uses a prefix of them.
        max_shape = tuple(engine.get_tensor_profile_shape(INPUT_NAME, 0)[2])
        context.set_input_shape(INPUT_NAME, max_shape)
        for name in names:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shape = tuple(context.get_tensor_shape(name))
            self._dtypes[name] = dtype
            self._ptrs[name] = self._cuda.malloc(int(np.prod(shape)) * dtype.itemsize)
            context.set_tensor_address(name, self._ptrs[name])
        self._engine, self._context = engine, context
        self._max_batch, self._tile = max_shape[0], tuple(max_shape[1:3])

    def infer(self, batch: np.ndarray) -> BackendOutput:
        if self._context is None:
            raise RuntimeError("TensorRTBackend.infer() called before load()")
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            raise ModelError(f"expected a uint8 (B, H, W, 3) batch, got {batch.dtype} {batch.shape}")
        if tuple(batch.shape[1:3]) != self._tile:
            raise ModelError(
                f"{self.model_path} was built for {self._tile[0]}x{self._tile[1]} tiles, got "
                f"{batch.shape[1]}x{batch.shape[2]}; rebuild it with segcls-export --trt --tile"
            )
        parts = [self._infer(batch[i : i + self._max_batch]) for i in range(0, len(batch), self._max_batch)]
        return BackendOutput(*(np.concatenate(p) if len(parts) > 1 else p[0] for p in zip(*parts, strict=True)))

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """One engine call (batch <= max batch); `execute_async_v3` takes the stream as an int handle."""
        batch = np.ascontiguousarray(batch)
        self._context.set_input_shape(INPUT_NAME, batch.shape)
        self._cuda.to_device(self._ptrs[INPUT_NAME], batch)
        if not self._context.execute_async_v3(int(self._cuda.stream)):
            raise RuntimeError(f"TensorRT execution of {self.model_path} failed (see the TensorRT log)")
        outputs = []
        for name in OUTPUT_NAMES:
            out = np.empty(tuple(self._context.get_tensor_shape(name)), self._dtypes[name])
            self._cuda.to_host(out, self._ptrs[name])
            outputs.append(out)
        self._cuda.synchronize()
        return tuple(outputs)

    def close(self) -> None:
        self._context = self._engine = self._runtime = None  # TensorRT objects go before their memory
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None

    @property
    def device(self) -> str:
        if self._cuda is None:
            return f"cuda:{self.device_index}"
        return f"cuda:{self._cuda.index} ({self._cuda.name}, sm {self._cuda.compute_capability})"
