"""PyTorch on a training checkpoint: no export step, CUDA when torch sees a GPU.

The checkpoint's network is wrapped in `DeployedModel`, the module the ONNX graph is exported from, so
this backend and the exported ones produce the same outputs from the same pixels. torch is imported in
`load()` only: the runtime imports without it.

On CUDA this is the fast path of a machine without TensorRT:
- FP16 by default (`precision`), channels_last, cuDNN autotuning (`cudnn.benchmark`);
- one input shape per run: two slots of buffers sized for the largest batch so far, and a smaller (last)
  batch padded up to it, so cuDNN autotunes once, a CUDA graph is captured once and a compiled network
  is compiled once (`shapes_run` records the shapes the network ran);
- `mode`: "eager" (cuDNN kernels launched one by one), "graph" (the network captured as a CUDA graph and
  replayed with one launch, `segcls.deployed.GraphedModule`), "compile" (torch.compile's Inductor),
  "compile-graph" (both); which is fastest is measured by bench/gpu_check.py;
- `infer_stream` keeps the GPU fed: batch k+1 is copied into its slot's page-locked buffer, uploaded on a
  side stream and queued behind batch k before the host waits for batch k's labels and scores. The host
  waits on blocking-sync events: it sleeps, leaving its core to the slide readers. Probs stay on the GPU
  until something indexes them (the crop stitcher without a probs output never does).

"fp32" is IEEE FP32 on every device: TF32 is off for cuDNN convolutions and cuBLAS matmuls while the
network runs (torch lets cuDNN use TF32 by default); "tf32" allows it (Ampere and newer), by name.

`cuda` is `torch.cuda` on a CUDA device; a stand-in with its Stream / Event / stream / current_stream /
CUDAGraph / graph runs the same streamed path on another device (tests/fake_torch_cuda.py, on the CPU).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segcls.core.errors import BackendUnavailableError, ModelError, SegclsError
from segcls.runtime.backends import PRECISIONS
from segcls.runtime.backends.base import Backend, BackendOutput
from segcls.runtime.backends.lazy import LazyArray

MODES = ("eager", "graph", "compile", "compile-graph")
_DTYPES = {"fp32": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _import_torch():
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError("torch is not installed: pip install 'segcls[train]'") from None
    return torch


@contextlib.contextmanager
def tf32_allowed(allowed: bool) -> Iterator[None]:
    """torch's process-wide TF32 switches for cuDNN convolutions and cuBLAS matmuls, set for the block and
    restored after. The `allow_tf32` flags (torch 2.4 to 2.13), not the `fp32_precision` strings of torch
    >= 2.9: cuDNN's one flag keeps its convolution and RNN precisions equal, which torch's own readers of
    that flag (Inductor's convolution templates) require."""
    import torch

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    try:
        before = cudnn.allow_tf32, matmul.allow_tf32
    except RuntimeError:  # conv and RNN precisions set apart through fp32_precision: torch's defaults after
        before = True, False
    cudnn.allow_tf32 = matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


@dataclass
class _Slot:
    """One batch in flight: its buffers (sized for the largest batch so far) and its two events."""

    host: Any  # uint8 (B, H, W, 3), page-locked on CUDA: the batch, padded
    image: Any  # the same on the device
    labels: Any  # uint8 (B, h, w), page-locked
    scores: Any  # float32 (B, C), page-locked
    probs: Any  # (B, C, h, w) on the device: float16, float32 at fp32/tf32 (a graph's outputs are reused)
    uploaded: Any  # recorded on the side stream after the upload; the compute stream waits for it
    done: Any  # recorded on the compute stream after the downloads; the host waits for it
    size: int = 0  # tiles of the batch in the slot (the rest is padding)
    pending: bool = False  # queued and not yet waited for


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        path: str | Path,
        device: str | None = None,
        precision: str | None = None,
        mode: str = "eager",
        cuda: Any = None,
    ) -> None:
        super().__init__()
        if precision is not None and precision not in PRECISIONS:
            raise SegclsError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if mode not in MODES:
            raise SegclsError(f"--torch-mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self._device = device
        self._requested_precision = precision
        self._api = cuda  # torch.cuda (set by load() on a CUDA device) or a stand-in; None: one batch at a time
        self.precision: str | None = None
        self.module = None  # the DeployedModel
        self.shapes_run: set[tuple[int, ...]] = set()  # network input shapes so far; a fixed-shape run has one
        self._network = None  # what runs a batch: the module, compiled, or its CUDA graph
        self._slots: list[_Slot] = []
        self._turn = 0  # the slot the next batch goes into
        self._side = None  # the upload stream

    def load(self) -> None:
        torch = _import_torch()
        from segcls.checkpoint import load_model
        from segcls.deployed import DeployedModel

        model, description, _ = load_model(self.path)
        self._device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        cuda = self._device.startswith("cuda")
        self.precision = self._requested_precision or ("fp16" if cuda else "fp32")
        dtype = getattr(torch, _DTYPES[self.precision])
        module = DeployedModel(model, description).eval().to(self._device, dtype=dtype)
        if cuda:
            torch.backends.cudnn.benchmark = True  # one input shape per run (padded batches): autotune once
            module = module.to(memory_format=torch.channels_last)  # the NHWC input is channels_last already
            self._api = self._api or torch.cuda
        if "graph" in self.mode and self._api is None:
            raise SegclsError(f"--torch-mode {self.mode} needs a CUDA GPU; this backend runs on {self._device}")
        if self._api is not None:
            self._side = self._api.Stream(device=torch.device(self._device))
        self.module, self.description = module, description
        self._network = module
        if self.mode.startswith("compile"):  # compiled on the first batch; one shape per run when streamed
            self._network = torch.compile(module, dynamic=False if self._api is not None else None)

    @property
    def _streamed(self) -> bool:
        return self._api is not None

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """The numerics the network runs (and is captured or compiled) under: inference mode, TF32 only by name."""
        import torch

        with torch.inference_mode(), tf32_allowed(self.precision == "tf32"):
            yield

    def infer(self, batch: np.ndarray) -> BackendOutput:
        """Outputs the caller may keep (float32 probs on the host)."""
        batch = self._checked(batch)
        if self._streamed:
            (out,) = [_kept(o) for o in self.infer_stream([batch])]
            return out
        import torch

        with self._running():
            x = torch.from_numpy(batch).to(self._device)
            self.shapes_run.add(tuple(x.shape))
            labels, probs, scores = self._network(x)
            return BackendOutput(labels.cpu().numpy(), probs.float().cpu().numpy(), scores.float().cpu().numpy())

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[BackendOutput]:
        """Streamed (CUDA): batch k+1 queued (upload and network) before the wait for batch k; else one by one."""
        if not self._streamed:
            yield from super().infer_stream(batches)
            return
        queued: deque[_Slot] = deque()
        try:
            for batch in batches:
                batch = self._checked(batch)
                if not self._fits(batch.shape):  # a larger batch or another tile: new buffers, once
                    while queued:
                        yield self._collect(queued.popleft())
                    self._allocate(batch.shape)
                slot = self._slots[self._turn]  # its last batch was collected before this one was asked for
                self._turn = (self._turn + 1) % len(self._slots)
                self._launch(slot, batch)
                queued.append(slot)
                if len(queued) == len(self._slots):
                    yield self._collect(queued.popleft())
            while queued:
                yield self._collect(queued.popleft())
        finally:  # a consumer that stops early leaves no copy running into buffers the next run reuses
            for slot in queued:
                slot.done.synchronize()
                slot.pending = False

    def _checked(self, batch: np.ndarray) -> np.ndarray:
        if self.module is None:
            raise RuntimeError("TorchBackend.infer() called before load()")
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        if batch.ndim != 4 or batch.shape[3] != 3:
            raise ModelError(f"expected a uint8 (B, H, W, 3) batch, got {batch.dtype} {batch.shape}")
        return batch

    def _fits(self, shape: tuple[int, ...]) -> bool:
        """Whether the slots hold a batch of `shape`: the same tile, as many tiles or more."""
        held = tuple(self._slots[0].host.shape) if self._slots else None
        return held is not None and held[1:] == tuple(shape[1:]) and held[0] >= shape[0]

    def _allocate(self, shape: tuple[int, ...], slots: int = 2) -> None:
        """Buffers for batches of up to shape[0] tiles of this size (the old ones, if any, are idle)."""
        import torch

        if self._slots and self._slots[0].host.shape[1:] == shape[1:]:
            shape = (max(shape[0], self._slots[0].host.shape[0]), *shape[1:])
        b, h, w, _ = shape
        stride, classes = self.description.stride, self.description.num_classes
        out = (b, h // stride, w // stride)
        pin = self._device.startswith("cuda")  # page-locked: what makes a host <-> GPU copy asynchronous
        probs_dtype = torch.float32 if self.precision in ("fp32", "tf32") else torch.float16
        self._slots, self._network = [], self._network if "graph" not in self.mode else None
        for _ in range(slots):
            self._slots.append(
                _Slot(
                    host=torch.zeros(shape, dtype=torch.uint8, pin_memory=pin),
                    image=torch.empty(shape, dtype=torch.uint8, device=self._device),  # no kernel to race the upload
                    labels=torch.zeros(out, dtype=torch.uint8, pin_memory=pin),
                    scores=torch.zeros((b, classes), dtype=torch.float32, pin_memory=pin),
                    probs=torch.empty((b, classes, *out[1:]), dtype=probs_dtype, device=self._device),
                    uploaded=self._event(),
                    done=self._event(),
                )
            )
        self._turn = 0
        self._side.wait_stream(self._api.current_stream(torch.device(self._device)))  # memory freed or made there
        if "graph" in self.mode:  # captured now, while nothing is in flight, on the first slot's zeros
            from segcls.deployed import GraphedModule

            network = torch.compile(self.module, dynamic=False) if self.mode == "compile-graph" else self.module
            with self._running():
                self._network = GraphedModule(network, self._slots[0].image, self._api)
            self.shapes_run.add(tuple(shape))

    def _event(self):
        """Blocking sync: the host thread sleeps in `synchronize()` instead of spinning on a core."""
        return self._api.Event(blocking=True)

    def _launch(self, slot: _Slot, batch: np.ndarray) -> None:
        """Queue one batch: upload on the side stream, the network on the compute stream after the upload,
        then the labels/scores downloads and the probs copy; returns without waiting for the GPU."""
        import torch

        n = len(batch)
        slot.host.numpy()[:n] = batch  # rows n.. keep an earlier batch's tiles: padding, never read back
        slot.size, slot.pending = n, True
        with self._api.stream(self._side):
            slot.image.copy_(slot.host, non_blocking=True)
            slot.uploaded.record(self._side)
        compute = self._api.current_stream(torch.device(self._device))
        compute.wait_event(slot.uploaded)
        with self._running():
            self.shapes_run.add(tuple(slot.image.shape))
            labels, probs, scores = self._network(slot.image)
            slot.labels.copy_(labels, non_blocking=True)
            slot.scores.copy_(scores.float(), non_blocking=True)
            slot.probs.copy_(probs)  # on the device; a graph's outputs are overwritten by its next replay
        slot.done.record(compute)

    def _collect(self, slot: _Slot) -> BackendOutput:
        """Wait for `slot`'s batch; labels and scores are views of its buffers, valid until it is reused."""
        slot.done.synchronize()
        slot.pending = False
        n = slot.size
        probs = slot.probs[:n]
        lazy_probs = LazyArray(lambda: probs.cpu().numpy(), tuple(probs.shape))  # on the stream that made it
        return BackendOutput(slot.labels[:n].numpy(), lazy_probs, slot.scores[:n].numpy())

    @property
    def on_cpu(self) -> bool:
        return not (self._device and self._device.startswith("cuda"))

    @property
    def device(self) -> str:
        mode = "" if self.mode == "eager" else f", {self.mode}"
        if self._device and self._device.startswith("cuda"):
            import torch

            name = torch.cuda.get_device_name(torch.device(self._device))
            return f"{self._device} ({name}, {self.precision}{mode})"
        if self._device and (self.precision not in (None, "fp32") or mode):
            return f"{self._device} ({self.precision}{mode})"
        return self._device or "not loaded"

    def close(self) -> None:
        for slot in self._slots:  # nothing may still be copying into buffers about to be freed
            if slot.pending:
                slot.done.synchronize()
        self.module = self._network = None
        self._slots = []
        self.description = None  # closed = not loaded: entering a `with` block loads it again


def _kept(out: BackendOutput) -> BackendOutput:
    """Copies of a streamed output (whose buffers the next batch reuses), probs as float32 on the host."""
    return BackendOutput(out.labels.copy(), np.array(out.probs, dtype=np.float32), out.class_scores.copy())
