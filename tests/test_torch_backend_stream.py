"""The torch backend's CUDA path (slots, padding to one input shape, events, CUDA graph replay, TF32) run
on the CPU through a stand-in for torch.cuda (tests/fake_torch_cuda.py), against the plain CPU path.
What only a GPU shows (the copies overlapping, the speed) is bench/gpu_check.py's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _runtime_models import save_checkpoint, tissue_image

from segcls.core.errors import SegclsError
from segcls.runtime.backends import open_backend
from segcls.runtime.backends.torch import TorchBackend, _kept, tf32_allowed

try:
    from tests.fake_torch_cuda import FakeTorchCuda
except ImportError:
    from fake_torch_cuda import FakeTorchCuda

TILE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("stream") / "model.pt")


@pytest.fixture(scope="module")
def tiles():
    return np.stack([tissue_image(TILE, TILE, seed=s) for s in range(7)])


@pytest.fixture(scope="module")
def reference(checkpoint, tiles):
    with open_backend(checkpoint, "torch", device="cpu") as backend:
        return backend.infer(tiles)


def _streamed(checkpoint, mode="eager", **kwargs):
    api = FakeTorchCuda()
    backend = TorchBackend(checkpoint, device="cpu", mode=mode, cuda=api, **kwargs)
    backend.load()
    return backend, api


def _run(backend, tiles, sizes):
    """Stream `tiles` in batches of `sizes`; copies of each output (they are valid until the next)."""
    outs = [_kept(o) for o in backend.infer_stream(np.split(tiles, np.cumsum(sizes)[:-1]))]
    return [np.concatenate(column) for column in zip(*outs, strict=True)]


def _assert_matches(got, reference):
    labels, probs, scores = got
    assert labels.shape == reference.labels.shape and labels.dtype == np.uint8
    assert (labels == reference.labels).mean() > 0.999  # a padded batch may round differently near ties
    np.testing.assert_allclose(probs, reference.probs, atol=1e-5)
    np.testing.assert_allclose(scores, reference.class_scores, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_streamed_path_matches_the_plain_one(checkpoint, tiles, reference, mode):
    backend, api = _streamed(checkpoint, mode)
    with backend:
        _assert_matches(_run(backend, tiles, [3, 3, 1]), reference)  # a partial last batch
        _assert_matches(_run(backend, tiles, [3, 2, 2]), reference)  # a second run, same buffers
        kept = backend.infer(tiles[:2])  # copies, kept past later batches
        _run(backend, tiles, [3, 3, 1])
    np.testing.assert_array_equal(kept.labels, reference.labels[:2])
    assert kept.probs.dtype == np.float32
    if mode == "graph":
        assert len(api.graphs) == 1 and api.graphs[0].replays == 3 + 3 + 1 + 3


def test_one_input_shape_per_run_the_last_batch_padded(checkpoint, tiles, reference):
    """The network runs the largest batch so far: a smaller last batch is padded (one cuDNN autotune, one
    graph, one compile), and there are two slots of buffers, not a set per batch shape."""
    backend, _ = _streamed(checkpoint)
    shapes = []
    with backend:
        backend.module.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
        _assert_matches(_run(backend, tiles, [3, 3, 1]), reference)
        assert shapes == [(3, TILE, TILE, 3)] * 3
        assert backend.shapes_run == {(3, TILE, TILE, 3)}
        assert len(backend._slots) == 2 and {tuple(s.host.shape) for s in backend._slots} == {(3, TILE, TILE, 3)}
        _assert_matches(_run(backend, tiles, [2, 5]), reference)  # grows once to 5, never shrinks
        assert shapes[3:] == [(3, TILE, TILE, 3), (5, TILE, TILE, 3)]
        _run(backend, tiles, [1, 1, 1])
        assert shapes[5:] == [(5, TILE, TILE, 3)] * 3 and len(backend._slots) == 2


def test_the_host_sleeps_in_its_waits(checkpoint, tiles):
    """Every event is blocking-sync: a spinning wait would take a core from the slide readers."""
    backend, api = _streamed(checkpoint)
    with backend:
        _run(backend, tiles, [3, 3, 1])
    assert api.events and all(e.flags["blocking"] and not e.flags["enable_timing"] for e in api.events)
    assert sum(e.waits for e in api.events) >= 3  # one host wait per batch, on its `done` event


def test_consumer_that_stops_early_leaves_nothing_pending(checkpoint, tiles):
    backend, _ = _streamed(checkpoint)
    with backend:
        stream = backend.infer_stream(np.split(tiles[:6], 3))
        next(stream)  # batch 1 is queued too
        stream.close()
        assert not any(slot.pending for slot in backend._slots)
        _assert_matches(_run(backend, tiles, [4, 3]), backend.infer(tiles))  # and the backend runs on


@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("tf32", True)])
def test_fp32_means_ieee_fp32(checkpoint, tiles, precision, tf32):
    """torch lets cuDNN use TF32 for FP32 convolutions by default; the backend's fp32 turns it off (and
    cuBLAS's) while the network runs, tf32 turns both on, and both are restored after."""

    def switches():
        return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32

    before = switches()
    for backend in (TorchBackend(checkpoint, "cpu", precision), _streamed(checkpoint, precision=precision)[0]):
        seen = []
        with backend:
            backend.module.register_forward_hook(lambda *_, seen=seen: seen.append(switches()))
            backend.infer(tiles[:2])
        assert seen and set(seen) == {(tf32, tf32)}
        assert switches() == before


def test_tf32_switches_restored_after_an_error():
    before = torch.backends.cudnn.allow_tf32
    with pytest.raises(ValueError), tf32_allowed(not before):
        assert torch.backends.cudnn.allow_tf32 == (not before)
        raise ValueError
    assert torch.backends.cudnn.allow_tf32 == before


def test_modes_and_their_devices(checkpoint):
    with pytest.raises(SegclsError, match="--torch-mode must be one of eager, graph, compile, compile-graph"):
        TorchBackend(checkpoint, mode="fast")
    with pytest.raises(SegclsError, match="--torch-mode graph needs a CUDA GPU; this backend runs on cpu"):
        TorchBackend(checkpoint, device="cpu", mode="graph").load()
    backend, _ = _streamed(checkpoint, "graph")
    assert backend.device == "cpu (fp32, graph)" and backend.on_cpu
    backend.close()


@pytest.mark.slow  # Inductor compiles the network on 2 CPU cores: ~40 s quiet, ~100 s busy
def test_compiled_network_compiles_once_per_run(checkpoint, tiles, reference):
    """torch.compile on the CPU (CUDA graphs cannot run here): padded batches give one shape, so one
    compilation serves the run, and its outputs match eager's."""
    from torch._dynamo.utils import counters

    backend, _ = _streamed(checkpoint, "compile")
    with backend:
        frames = counters["stats"]["unique_graphs"]
        _assert_matches(_run(backend, tiles, [3, 3, 1]), reference)
        assert counters["stats"]["unique_graphs"] - frames == 1 and backend.shapes_run == {(3, TILE, TILE, 3)}
        assert backend.device == "cpu (fp32, compile)"
