"""A stand-in for the part of `torch.cuda` the torch backend's streamed path and `GraphedModule` use
(Stream, Event, stream, current_stream, CUDAGraph, graph), running on the CPU.

Torch ops on the CPU run at once, so this double cannot show a missing stream wait. What it does check:
- events: every one made is recorded with its flags (`api.events`); a host wait or a stream wait on an
  event never recorded fails (CUDA would return at once and the host would read unfinished outputs);
- graphs: `graph(g)` records the aten ops the block runs (a TorchDispatchMode) and `g.replay()` runs them
  again on the very tensors of the capture, writing each result into the op's captured output. So, as on
  a GPU, a replay reads whatever is in the static input's memory now and overwrites the static outputs;
  the captured float outputs are poisoned (NaN) at the end of the capture, as a real capture leaves them
  unwritten until the first replay.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class FakeEvent:
    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self.flags = {"enable_timing": enable_timing, "blocking": blocking, "interprocess": interprocess}
        self.recorded = 0
        self.waits = 0  # host waits

    def record(self, stream=None) -> None:
        self.recorded += 1

    def query(self) -> bool:
        return self.recorded > 0

    def synchronize(self) -> None:
        assert self.recorded, "the host waits for an event that was never recorded (CUDA returns at once)"
        self.waits += 1


class FakeStream:
    def __init__(self, name: str) -> None:
        self.name = name

    def wait_event(self, event: FakeEvent) -> None:
        assert event.recorded, f"stream {self.name} waits for an event that was never recorded"

    def wait_stream(self, stream: FakeStream) -> None:
        pass

    def __repr__(self) -> str:
        return f"FakeStream({self.name})"


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _Recorder(TorchDispatchMode):
    """Runs every aten op as usual and keeps (op, args, kwargs, outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


class FakeGraph:
    def __init__(self) -> None:
        self.ops: list | None = None
        self.replays = 0

    def replay(self) -> None:
        assert self.ops is not None, "replay of a graph never captured"
        for func, args, kwargs, captured in self.ops:
            result = func(*args, **kwargs)
            for old, new in zip(tree_flatten(captured)[0], tree_flatten(result)[0], strict=True):
                if isinstance(old, torch.Tensor) and old is not new:
                    old.copy_(new)
        self.replays += 1

    def poison_outputs(self) -> None:
        """NaN into every float tensor the capture made (not into its inputs, weights or their views)."""
        made, used = set(), set()
        for _, args, kwargs, out in self.ops:
            for t in tree_flatten((args, kwargs))[0]:
                if isinstance(t, torch.Tensor) and _storage(t) not in made:
                    used.add(_storage(t))
            made |= {_storage(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)}
        for _, _, _, out in self.ops:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.is_floating_point() and _storage(t) not in used:
                    t.fill_(float("nan"))


class FakeTorchCuda:
    """`torch.cuda`'s stream / event / graph calls, on the CPU; `events` and `graphs` list what was made."""

    def __init__(self) -> None:
        self.events: list[FakeEvent] = []
        self.graphs: list[FakeGraph] = []
        self.default = FakeStream("default")
        self._current = self.default

    def Stream(self, device=None, priority: int = 0) -> FakeStream:  # torch.cuda's names
        return FakeStream(f"side{len(self.events)}")

    def Event(self, **flags) -> FakeEvent:
        self.events.append(FakeEvent(**flags))
        return self.events[-1]

    @contextlib.contextmanager
    def stream(self, stream: FakeStream):
        before, self._current = self._current, stream
        try:
            yield
        finally:
            self._current = before

    def current_stream(self, device=None) -> FakeStream:
        return self._current

    def CUDAGraph(self) -> FakeGraph:
        self.graphs.append(FakeGraph())
        return self.graphs[-1]

    @contextlib.contextmanager
    def graph(self, graph: FakeGraph, pool=None, stream=None, capture_error_mode: str = "global"):
        recorder = _Recorder()
        with recorder:
            yield
        graph.ops = recorder.ops
        graph.poison_outputs()
