"""PyTorch on a training checkpoint: no export step, CUDA when torch sees a GPU.

The checkpoint's network is wrapped in `DeployedModel`, the module the ONNX graph is exported from, so
this backend and the exported ones produce the same outputs from the same pixels. torch is imported in
`load()` only: the runtime imports without it.

On CUDA the network runs in FP16 by default (`precision`), channels_last, with cuDNN autotuning, and
`infer_stream` keeps the GPU fed: batch k+1 is copied into a page-locked buffer and uploaded on a side
stream, and queued behind batch k, before the host waits for batch k's labels. Only labels and class
scores come back to the host every batch; `probs` stay on the GPU until something indexes them (the
crop stitcher without a probs output never does).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from segcls.core.errors import BackendUnavailableError, SegclsError
from segcls.runtime.backends import PRECISIONS
from segcls.runtime.backends.base import Backend, BackendOutput
from segcls.runtime.backends.lazy import LazyArray


def _import_torch():
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError("torch is not installed: pip install 'segcls[train]'") from None
    return torch


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, path: str | Path, device: str | None = None, precision: str | None = None) -> None:
        super().__init__()
        if precision is not None and precision not in PRECISIONS:
            raise SegclsError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.path = Path(path)
        self._device = device
        self._requested_precision = precision
        self.precision: str | None = None
        self.module = None
        self._pinned: dict[tuple, object] = {}

    def load(self) -> None:
        torch = _import_torch()
        from segcls.checkpoint import load_model
        from segcls.deployed import DeployedModel

        model, description, _ = load_model(self.path)
        self._device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        cuda = self._device.startswith("cuda")
        self.precision = self._requested_precision or ("fp16" if cuda else "fp32")
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        module = DeployedModel(model, description).eval().to(self._device, dtype=dtype)
        if cuda:
            torch.backends.cudnn.benchmark = True  # one tile size all slide long: autotune once
            module = module.to(memory_format=torch.channels_last)  # the NHWC input is channels_last already
            self._side = torch.cuda.Stream(device=self._device)
        self.module, self.description = module, description

    @property
    def _cuda(self) -> bool:
        return bool(self._device and self._device.startswith("cuda"))

    def infer(self, batch: np.ndarray) -> BackendOutput:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.uint8)).to(self._device)
            labels, probs, scores = self.module(x)
            return BackendOutput(labels.cpu().numpy(), probs.float().cpu().numpy(), scores.float().cpu().numpy())

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[BackendOutput]:
        """On CUDA: queue batch k+1 (upload and network) before waiting for batch k; else one by one."""
        if not self._cuda:
            yield from super().infer_stream(batches)
            return
        import torch

        queued = None
        for k, batch in enumerate(batches):
            with torch.inference_mode():  # not held across the yield: the caller's grad mode is its own
                launched = self._launch(self._upload(batch, k % 2), k % 2)
            if queued is not None:
                yield self._finish(queued)
            queued = launched
        if queued is not None:
            yield self._finish(queued)

    def _host_buffer(self, slot: int, name: str, shape: tuple[int, ...], dtype):
        """A page-locked host tensor per (slot, output, shape): reused, so memory stays bounded."""
        import torch

        key = (slot, name, shape)
        if key not in self._pinned:
            self._pinned[key] = torch.empty(shape, dtype=dtype, pin_memory=True)
        return self._pinned[key]

    def _upload(self, batch: np.ndarray, slot: int):
        """Pageable -> page-locked (host), then a non-blocking copy on the side stream."""
        import torch

        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        host = self._host_buffer(slot, "image", batch.shape, torch.uint8)
        host.numpy()[...] = batch  # slot k % 2 was last uploaded for batch k-2, which has finished
        with torch.cuda.stream(self._side):
            x = host.to(self._device, non_blocking=True)
            uploaded = torch.cuda.Event()
            uploaded.record(self._side)
        return x, uploaded

    def _launch(self, upload, slot: int):
        """Queue the network on the compute stream after the upload, then the labels/scores downloads."""
        import torch

        x, uploaded = upload
        compute = torch.cuda.current_stream(self._device)
        compute.wait_event(uploaded)
        x.record_stream(compute)  # allocated on the side stream, used on this one
        labels, probs, scores = self.module(x)
        labels_host = self._host_buffer(slot, "labels", tuple(labels.shape), torch.uint8)
        scores_host = self._host_buffer(slot, "scores", tuple(scores.shape), torch.float32)
        labels_host.copy_(labels, non_blocking=True)
        scores_host.copy_(scores.float(), non_blocking=True)
        done = torch.cuda.Event()
        done.record(compute)
        return done, labels_host, probs.half(), scores_host  # .half(): no-op in fp16; bf16 has no numpy dtype

    @staticmethod
    def _finish(queued) -> BackendOutput:
        done, labels_host, probs, scores_host = queued
        done.synchronize()
        lazy_probs = LazyArray(lambda: probs.cpu().numpy(), tuple(probs.shape))  # on the stream that made it
        return BackendOutput(labels_host.numpy(), lazy_probs, scores_host.numpy())

    @property
    def on_cpu(self) -> bool:
        return not self._cuda

    @property
    def device(self) -> str:
        if self._cuda:
            import torch

            return f"{self._device} ({torch.cuda.get_device_name(torch.device(self._device))}, {self.precision})"
        if self._device and self.precision not in (None, "fp32"):
            return f"{self._device} ({self.precision})"
        return self._device or "not loaded"

    def close(self) -> None:
        self.module = None
        self._pinned.clear()
        self.description = None  # closed = not loaded: entering a `with` block loads it again
