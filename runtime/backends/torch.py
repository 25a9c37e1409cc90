"""PyTorch on a training checkpoint: no export step, CUDA when torch sees a GPU.

The checkpoint's network is wrapped in `DeployedModel`, the module the ONNX graph is exported from, so
this backend and the exported ones produce the same outputs from the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segcls.runtime.backends.base import Backend, BackendOutput


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self._device = device
        self.module = None

    def load(self) -> None:
        try:
            import torch
        except ImportError:
            from segcls.errors import BackendUnavailableError

            raise BackendUnavailableError("torch is not installed: pip install 'segcls[train]'") from None
        from segcls.checkpoint import load_model
        from segcls.export.graph import DeployedModel

        model, self.description, _ = load_model(self.path)
        self._device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.module = DeployedModel(model, self.description).eval().to(self._device)

    def infer(self, batch: np.ndarray) -> BackendOutput:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.uint8)).to(self._device)
            labels, probs, scores = self.module(x)
        return BackendOutput(labels.cpu().numpy(), probs.float().cpu().numpy(), scores.float().cpu().numpy())

    @property
    def device(self) -> str:
        if self._device and self._device.startswith("cuda"):
            import torch

            return f"{self._device} ({torch.cuda.get_device_name(torch.device(self._device))})"
        return self._device or "not loaded"

    def close(self) -> None:
        self.module = None
        self.description = None  # closed = not loaded: entering a `with` block loads it again
