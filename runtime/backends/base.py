"""The one interface every inference backend implements (after Polygraphy's runners).

A backend takes decoded pixels as they are (uint8 NHWC RGB) and returns the network's outputs at its
native stride; the pipeline never knows which backend it drives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from segcls.core.description import ModelDescription


class BackendOutput(NamedTuple):
    labels: np.ndarray  # uint8 (B, H/8, W/8)
    probs: np.ndarray  # float32 or float16 (B, C, H/8, W/8), softmax over C
    class_scores: np.ndarray  # float (B, C), the classification layer


class Backend(ABC):
    """load() -> infer(batch)* -> close(); also a context manager."""

    name: str = "backend"

    def __init__(self) -> None:
        self.description: ModelDescription | None = None
        self.precision: str | None = None  # what the network computes in, once loaded: fp32|fp16|bf16|int8
        self.choice: dict | None = None  # how `--backend auto` chose this backend (`choice.BackendChoice`)

    @abstractmethod
    def load(self) -> None:
        """Open the model and the device; sets `self.description`."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> BackendOutput:
        """`batch`: uint8 (B, H, W, 3), H and W multiples of 16."""

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[BackendOutput]:
        """The outputs of `batches`, in order, as they finish.

        The pipeline drives every backend through this. The default runs one batch at a time; a GPU
        backend overrides it to take batch k+1 from `batches` (and start its upload) before it yields the
        outputs of batch k, so copies overlap compute. An output is only valid until the next one is
        requested: a backend may reuse its buffers.
        """
        for batch in batches:
            yield self.infer(batch)

    def close(self) -> None:  # noqa: B027 - backends without resources need no close
        """Release the device and the model."""

    @property
    def device(self) -> str:
        """Where it really runs, e.g. 'CPUExecutionProvider' or 'cuda:0 (NVIDIA H100)'."""
        return "cpu"

    @property
    def on_cpu(self) -> bool:
        """Whether the network runs on the host's cores, which the slide readers then share with it
        (`cores.reader_budget`)."""
        return True

    @property
    def fixed_tile(self) -> bool:
        """Whether every input should be a whole tile of one shape: an engine's profile, kernels autotuned
        per shape, full batches. A backend that runs a smaller input in proportionally less time (a CPU)
        gets tiles trimmed to their tissue instead (`plan.trim_tiles`)."""
        return not self.on_cpu

    def __enter__(self) -> Backend:
        if self.description is None:  # `with open_backend(...)` gets a backend that is loaded already
            self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
