"""TensorRT and the CUDA runtime, imported lazily: the one CUDA device helper that building an engine
(`segcls.core.engine`) and running one (`segcls.runtime.backends.tensorrt`) share.

Device memory, page-locked host memory, streams and events come from cuda-python (`cuda.bindings.runtime`;
`cuda.cudart` before 12.6).
"""

from __future__ import annotations

import ctypes

import numpy as np

from segcls.core.errors import BackendUnavailableError

INSTALL_HINT = "pip install 'segcls[gpu]'"


def import_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: the module is there but libnvinfer is not
        raise BackendUnavailableError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return tensorrt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise BackendUnavailableError(f"cuda-python is not installed: {INSTALL_HINT}") from None
    return cudart


class CudaDevice:
    """The few CUDA runtime calls TensorRT inference needs: one device, streams, events, raw buffers.

    cuda-python returns `(error, *values)` from every call; `_call` turns errors into exceptions. Host
    buffers come from `cudaHostAlloc` (page-locked): `cudaMemcpyAsync` from pageable memory is staged by
    the driver and does not overlap with compute. Events are made with `cudaEventBlockingSync`: the host
    thread sleeps in `synchronize` instead of spinning on a core the slide readers need.
    """

    def __init__(self, index: int = 0) -> None:
        self.cudart = import_cudart()
        count = self._call("cudaGetDeviceCount", unavailable=True)
        if not 0 <= index < count:
            raise BackendUnavailableError(f"CUDA device {index} does not exist; this machine has {count}")
        self.index = index
        self._call("cudaSetDevice", index, unavailable=True)
        props = self._call("cudaGetDeviceProperties", index)
        name = props.name
        self.name = (name.split(b"\0")[0].decode() if isinstance(name, bytes) else str(name)).strip()
        self.compute_capability = f"{props.major}.{props.minor}"
        self._buffers: list[int] = []
        self._host: list[int] = []
        self._streams: list = []
        self._events: list = []

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

    def host_array(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A numpy array in page-locked host memory, freed by `close()`."""
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        ptr = int(self._call("cudaHostAlloc", nbytes, self.cudart.cudaHostAllocDefault))
        self._host.append(ptr)
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
        return raw[: int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)

    def stream(self):
        self._streams.append(self._call("cudaStreamCreate"))
        return self._streams[-1]

    def event(self):
        """An event whose host waits block (sleep) rather than spin; no timing (cheaper to record)."""
        flags = self.cudart.cudaEventBlockingSync | self.cudart.cudaEventDisableTiming
        self._events.append(self._call("cudaEventCreateWithFlags", flags))
        return self._events[-1]

    def to_device(self, ptr: int, array: np.ndarray, stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", ptr, array.ctypes.data, array.nbytes, kind, stream)

    def to_host(self, array: np.ndarray, ptr: int, stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", array.ctypes.data, ptr, array.nbytes, kind, stream)

    def record(self, event, stream) -> None:
        self._call("cudaEventRecord", event, stream)

    def wait(self, stream, event) -> None:
        """Work queued on `stream` after this waits for `event` (on the GPU; the host goes on)."""
        self._call("cudaStreamWaitEvent", stream, event, 0)

    def synchronize(self, event) -> None:
        self._call("cudaEventSynchronize", event)

    def drain(self) -> None:
        """Wait until every stream of this device is idle: no copy or engine run is left in flight."""
        for stream in self._streams:
            self.cudart.cudaStreamSynchronize(stream)

    def close(self) -> None:
        self.drain()  # nothing may still be copying into memory about to be freed
        for event in self._events:
            self.cudart.cudaEventDestroy(event)
        for stream in self._streams:
            self.cudart.cudaStreamDestroy(stream)
        for ptr in self._buffers:
            self.cudart.cudaFree(ptr)
        for ptr in self._host:
            self.cudart.cudaFreeHost(ptr)
        self._buffers, self._host, self._streams, self._events = [], [], [], []
