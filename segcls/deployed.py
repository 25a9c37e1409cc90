"""The deployable network: decoded pixels in, the runtime's outputs out.

uint8 NHWC RGB -> cast, normalise, transpose (in the graph, so a runtime moves 4x fewer bytes to the
GPU) -> network -> `labels` (argmax, uint8), `probs` (softmax), `class_scores`, all at stride 8.
"""

from __future__ import annotations

import torch
from torch import nn

from segcls.core.description import ModelDescription
from segcls.model import SegClsNet


class DeployedModel(nn.Module):
    def __init__(self, model: SegClsNet, description: ModelDescription) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(description.mean, dtype=torch.float32) * 255.0
        std = torch.tensor(description.std, dtype=torch.float32) * 255.0
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.register_buffer("inv_std", (1.0 / std).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).to(self.mean.dtype)
        x = (x - self.mean) * self.inv_std
        out = self.model(x, full_res=False)
        probs = torch.softmax(out.low_res_logits, dim=1)
        labels = torch.argmax(out.low_res_logits, dim=1).to(torch.uint8)
        return labels, probs, out.class_scores
