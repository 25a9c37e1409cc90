"""TensorRT backend: a serialised engine + its sidecar, run with the name-based tensor API.

Works on TensorRT 10 and 11 (`set_input_shape`, `set_tensor_address`, `execute_async_v3`; no bindings).
Device memory, page-locked host memory, streams and events come from cuda-python (`cuda.bindings.runtime`;
`cuda.cudart` before 12.6). An engine only runs on the
TensorRT version and GPU architecture it was built for, so the sidecar's record of both is checked
before deserialising, and a mismatch is refused with a message that says how to rebuild.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segcls.core.cuda import CudaDevice, import_tensorrt
from segcls.core.errors import ModelError
from segcls.core.model_info import (
    INPUT_NAME,
    KEY_COMPUTE_CAPABILITY,
    KEY_TENSORRT_VERSION,
    OUTPUT_NAMES,
    ModelInfo,
    read_model_info,
)
from segcls.runtime.backends.base import Backend, BackendOutput


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


@dataclass
class _Slot:
    """One buffer set (page-locked host + device, per I/O tensor) and the events of the batch in it."""

    uploaded: object  # recorded on the upload stream after the input's host->device copy
    ran: object  # recorded on the compute stream after the engine ran on it
    done: object  # recorded on the download stream after the outputs reached the host buffers
    device: dict[str, int] = field(default_factory=dict)
    host: dict[str, np.ndarray] = field(default_factory=dict)  # each sized for the profile's largest batch
    size: int = 0  # tiles of the batch in flight


class TensorRTBackend(Backend):
    """One execution context on one compute stream, an upload and a download stream, `slots` buffer sets.

    `infer_stream` queues batch k+1 (upload; engine after the upload's event; download after the
    engine's event) before it waits for batch k's outputs, so the upload of k+1 overlaps the engine on k
    and the download of k the engine on k+1. The context is only ever enqueued on its one stream
    (TensorRT: concurrent `enqueueV3` of one context on several streams is undefined); copies overlap
    it from their own streams. A slot is refilled only after its previous batch's download has finished.
    """

    name = "tensorrt"

    def __init__(self, model_path: str | Path, device: int = 0, slots: int = 2) -> None:
        super().__init__()
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.model_path = Path(model_path)
        self.device_index = device
        self.slots = slots
        self.info: ModelInfo | None = None
        self._cuda: CudaDevice | None = None
        self._runtime = self._engine = self._context = None
        self._dtypes: dict[str, np.dtype] = {}
        self._slots: list[_Slot] = []
        self._streams: tuple = ()  # upload, compute, download

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
        self.info, self.description, self.precision = info, info.description, info.precision

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
        # Buffers sized for the profile's largest input; each batch then uses a prefix of them.
        max_shape = tuple(engine.get_tensor_profile_shape(INPUT_NAME, 0)[2])
        context.set_input_shape(INPUT_NAME, max_shape)
        shapes = {name: tuple(context.get_tensor_shape(name)) for name in names}
        self._dtypes = {name: np.dtype(trt.nptype(engine.get_tensor_dtype(name))) for name in names}
        cuda = self._cuda
        self._streams = (cuda.stream(), cuda.stream(), cuda.stream())
        for _ in range(self.slots):
            slot = _Slot(cuda.event(), cuda.event(), cuda.event())
            for name in names:
                slot.host[name] = cuda.host_array(shapes[name], self._dtypes[name])
                slot.device[name] = cuda.malloc(slot.host[name].nbytes)
            self._slots.append(slot)
        self._engine, self._context = engine, context
        self._max_batch, self._tile = max_shape[0], tuple(max_shape[1:3])

    def _check(self, batch: np.ndarray) -> None:
        if self._context is None:
            raise RuntimeError("TensorRTBackend.infer() called before load()")
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            raise ModelError(f"expected a uint8 (B, H, W, 3) batch, got {batch.dtype} {batch.shape}")
        if tuple(batch.shape[1:3]) != self._tile:
            raise ModelError(
                f"{self.model_path} was built for {self._tile[0]}x{self._tile[1]} tiles, got "
                f"{batch.shape[1]}x{batch.shape[2]}; rebuild it with segcls-export --trt --tile"
            )

    def infer(self, batch: np.ndarray) -> BackendOutput:
        """Outputs the caller may keep (copies); a batch larger than the engine's runs in parts."""
        self._check(batch)
        chunks = (batch[i : i + self._max_batch] for i in range(0, len(batch), self._max_batch))
        parts = [tuple(a.copy() for a in out) for out in self.infer_stream(chunks)]
        return BackendOutput(*(np.concatenate(p) if len(parts) > 1 else p[0] for p in zip(*parts, strict=True)))

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[BackendOutput]:
        free, in_flight = deque(self._slots), deque()
        try:
            for batch in batches:
                self._check(batch)
                if len(batch) > self._max_batch:  # rare (--batch above the engine's): in parts, in order
                    while in_flight:
                        yield self._collect(in_flight[0])
                        free.append(in_flight.popleft())
                    yield self.infer(batch)
                    continue
                if not free:  # batch k+1 is taken; now wait for batch k
                    yield self._collect(in_flight[0])
                    free.append(in_flight.popleft())
                slot = free.popleft()
                self._queue(slot, batch)
                in_flight.append(slot)
            while in_flight:
                yield self._collect(in_flight[0])
                free.append(in_flight.popleft())
        finally:  # a consumer that stops early must not leave copies running into buffers it reuses
            for slot in in_flight:
                if self._cuda is not None:
                    self._cuda.synchronize(slot.done)

    def _queue(self, slot: _Slot, batch: np.ndarray) -> None:
        """Queue one batch (<= max batch) in `slot`; returns without waiting for the GPU."""
        cuda, context, n = self._cuda, self._context, len(batch)
        upload, compute, download = self._streams
        slot.host[INPUT_NAME][:n] = batch  # pageable -> page-locked, on the host
        cuda.to_device(slot.device[INPUT_NAME], slot.host[INPUT_NAME][:n], upload)
        cuda.record(slot.uploaded, upload)
        if not context.set_input_shape(INPUT_NAME, batch.shape):
            raise RuntimeError(f"TensorRT refused input shape {batch.shape} for {self.model_path}")
        for name, ptr in slot.device.items():
            context.set_tensor_address(name, ptr)
        cuda.wait(compute, slot.uploaded)
        if not context.execute_async_v3(int(compute)):  # takes the stream as an int handle
            raise RuntimeError(f"TensorRT execution of {self.model_path} failed (see the TensorRT log)")
        cuda.record(slot.ran, compute)
        cuda.wait(download, slot.ran)
        for name in OUTPUT_NAMES:
            cuda.to_host(slot.host[name][:n], slot.device[name], download)
        cuda.record(slot.done, download)
        slot.size = n

    def _collect(self, slot: _Slot) -> BackendOutput:
        """Wait for `slot`'s batch; its outputs are views of the slot's buffers, valid until it is reused."""
        self._cuda.synchronize(slot.done)
        return BackendOutput(*(slot.host[name][: slot.size] for name in OUTPUT_NAMES))

    def close(self) -> None:
        if self._cuda is not None:  # a run still queued must end before its context is released
            self._cuda.drain()
        self._context = self._engine = self._runtime = None  # TensorRT objects go before their memory
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None
        self._slots, self._streams = [], ()
        self.info = self.description = None  # closed = not loaded: entering a `with` block loads it again

    @property
    def on_cpu(self) -> bool:
        return False

    @property
    def device(self) -> str:
        if self._cuda is None:
            return f"cuda:{self.device_index}"
        return f"cuda:{self._cuda.index} ({self._cuda.name}, sm {self._cuda.compute_capability})"
