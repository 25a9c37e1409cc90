"""The deployable network: decoded pixels in, the runtime's outputs out.

uint8 NHWC RGB -> cast, normalise, transpose (in the graph, so a runtime moves 4x fewer bytes to the
GPU) -> network -> `labels` (argmax, uint8), `probs` (softmax), `class_scores`, all at stride 8.
`GraphedModule` replays it as a CUDA graph (the torch backend's "graph" modes).
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


class GraphedModule:
    """`module` captured once as a CUDA graph for the shape of `example`, then replayed.

    A replay launches the whole network with one call, with none of the per-kernel Python and launch
    overhead, on the memory the capture used: a call copies its input into that static input, replays,
    and returns the static outputs, which the next call overwrites (copy them out first). Warm-up runs on
    a side stream before the capture, as torch's CUDA graph notes ask, so cuDNN's autotuning and lazy
    initialisation happen outside it. `api` is `torch.cuda`, or a stand-in with its Stream /
    current_stream / stream / CUDAGraph / graph (tests/fake_torch_cuda.py runs this on the CPU).
    """

    def __init__(self, module, example: torch.Tensor, api, warmup: int = 2) -> None:
        self.static_input = example.clone()
        device = example.device
        side = api.Stream(device=device)
        side.wait_stream(api.current_stream(device))
        with api.stream(side):
            for _ in range(warmup):
                module(self.static_input)
        api.current_stream(device).wait_stream(side)
        self.graph = api.CUDAGraph()
        # thread_local: only this thread's unsafe CUDA calls break the capture (reader threads make none)
        with api.graph(self.graph, capture_error_mode="thread_local"):
            self.static_outputs = module(self.static_input)

    def __call__(self, image: torch.Tensor):
        self.static_input.copy_(image)
        self.graph.replay()
        return self.static_outputs
