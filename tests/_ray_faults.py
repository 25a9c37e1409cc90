"""Fault injection for the Ray cohort tests: models whose backend, in a Ray worker, dies or holds mid-slide.

They reach the workers as a `ModelSpec` passed to `infer_cohort` (a parameter, no hook in segcls), pickled by
value (`ray.cloudpickle.register_pickle_by_value`), since the workers cannot import this test folder.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segcls.runtime.backends import Backend, BackendOutput
from segcls.runtime.cohort import ModelSpec


def pickle_by_value() -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class _Wrapped(Backend):
    """A loaded backend, with `after_first_batch()` called once the first batch of a slide is stitched."""

    def __init__(self, inner: Backend) -> None:
        super().__init__()
        self.inner, self.name, self.description = inner, inner.name, inner.description

    def load(self) -> None:
        self.inner.load()
        self.description = self.inner.description

    def infer(self, batch: np.ndarray) -> BackendOutput:
        return self.inner.infer(batch)

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[BackendOutput]:
        for i, out in enumerate(self.inner.infer_stream(batches)):
            if i == 1:  # asked for the second output: the first batch is stitched, the mask half written
                self.after_first_batch()
            yield out

    def after_first_batch(self) -> None:
        raise NotImplementedError

    @property
    def device(self) -> str:
        return self.inner.device

    @property
    def on_cpu(self) -> bool:
        return self.inner.on_cpu

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True)
class CrashingModel(ModelSpec):
    """The worker that first gets past a slide's first batch while `armed` exists removes it and kills its own
    process, as an OOM kill would."""

    armed: str = ""

    def open(self, threads=None, log=lambda message: None) -> Backend:
        armed = Path(self.armed)

        class Crashing(_Wrapped):
            def after_first_batch(self) -> None:
                try:
                    armed.unlink()
                except FileNotFoundError:
                    return
                os._exit(17)

        return Crashing(super().open(threads, log))


@dataclass(frozen=True)
class HoldingModel(ModelSpec):
    """Each worker holds its first slide after the first batch: it writes its pid to `gate/<node id>` and waits
    (at most `hold_s`) for `gate/release`, so a test can kill a node, and the worker with it, mid-slide."""

    gate: str = ""
    hold_s: float = 120.0

    def open(self, threads=None, log=lambda message: None) -> Backend:
        gate = Path(self.gate)
        hold_s = self.hold_s

        class Holding(_Wrapped):
            held = False

            def after_first_batch(self) -> None:
                if self.held:
                    return
                self.held = True
                import ray

                held = gate / ray.get_runtime_context().get_node_id()
                held.with_suffix(".partial").write_text(str(os.getpid()))
                held.with_suffix(".partial").replace(held)  # the test reads a whole pid
                deadline = time.monotonic() + hold_s
                while not (gate / "release").exists() and time.monotonic() < deadline:
                    time.sleep(0.1)

        return Holding(super().open(threads, log))
