"""The TensorRT backend's overlapped stream, against the asynchronous cudart double (CPU): the order of
the calls it makes is checked, so the overlap is a tested fact, not a claim."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from test_export_tensorrt import _onnx

from segcls.core.engine import build_engine
from segcls.runtime.backends.tensorrt import TensorRTBackend

try:
    from tests.fake_tensorrt import fake_cudart, fake_tensorrt, install, reference_outputs
except ImportError:
    from fake_tensorrt import fake_cudart, fake_tensorrt, install, reference_outputs


@pytest.fixture(params=[10, 11])
def engine(request, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cudart = fake_cudart()
    install(monkeypatch, fake_tensorrt(request.param), cudart)
    path = build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", max_batch=2, tile=32).path
    return path, cudart


def _batches(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in sizes]


def _labelled(calls):
    """Each call, with the batch number for uploads and engine runs (the k-th of each)."""
    out, h2d, execs = [], 0, 0
    for call in calls:
        kind = call[0]
        if kind == "H2D":
            h2d += 1
            out.append(("H2D", h2d - 1))
        elif kind == "exec":
            execs += 1
            out.append(("exec", execs - 1))
        else:
            out.append((kind, None))
    return out


def test_upload_of_next_batch_is_queued_before_waiting_for_this_one(engine):
    path, cudart = engine
    batches = _batches([2, 2, 2, 1])  # last one partial
    seen = []
    with TensorRTBackend(path) as backend:
        cudart.calls.clear()
        for i, out in enumerate(backend.infer_stream(iter(batches))):
            seen.append(len(cudart.calls))
            expected = reference_outputs(batches[i], 4, np.float16)
            for got, want in zip(out, expected, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-6)
            assert out.labels.shape == (len(batches[i]), 4, 4)
        calls = list(cudart.calls)
    order = _labelled(calls)
    syncs = [i for i, (kind, _) in enumerate(order) if kind == "sync"]
    uploads = {k: i for i, (kind, k) in enumerate(order) if kind == "H2D"}
    execs = {k: i for i, (kind, k) in enumerate(order) if kind == "exec"}
    assert len(syncs) == len(uploads) == len(execs) == 4
    for k in range(3):  # batch k+1 was uploaded and queued before the host waited for batch k
        assert uploads[k + 1] < syncs[k] and execs[k + 1] < syncs[k]
    upload, compute = calls[uploads[0]][1], calls[execs[0]][1]
    assert {calls[uploads[k]][1] for k in range(4)} == {upload}  # copies in on their own stream
    assert {calls[execs[k]][1] for k in range(4)} == {compute} != {upload}  # one context, one stream
    downloads = {calls[i][1] for i, (kind, _) in enumerate(order) if kind == "D2H"}
    assert len(downloads) == 1 and downloads.isdisjoint({upload, compute})
    for k in range(4):  # the engine waits (on the GPU) for its own upload's event, recorded after it
        record = next(i for i in range(uploads[k], execs[k]) if order[i][0] == "record")
        wait = next(i for i in range(record, execs[k]) if order[i][0] == "wait")
        assert calls[record][1:] == (calls[wait][2], upload) and calls[wait][1] == compute
    assert cudart.ran.count("exec") == 4  # the double really ran the queued work


def test_outputs_are_valid_until_the_next_one(engine):
    """Views of the slot's page-locked buffers: the stream may reuse them once the next output is asked
    for, which is why `infer()` (used by callers that keep outputs) returns copies."""
    path, _ = engine
    batches = _batches([2, 2, 2], seed=1)
    with TensorRTBackend(path) as backend:
        stream = backend.infer_stream(iter(batches))
        first = next(stream)
        kept = first.labels.copy()
        list(stream)
        kept_infer = backend.infer(batches[0])
        backend.infer(batches[1])
    np.testing.assert_array_equal(kept, reference_outputs(batches[0], 4)[0])
    np.testing.assert_array_equal(kept_infer.labels, reference_outputs(batches[0], 4)[0])


def test_consumer_that_stops_early_leaves_nothing_queued(engine):
    path, cudart = engine
    backend = TensorRTBackend(path)
    backend.load()
    stream = backend.infer_stream(iter(_batches([2, 2, 2, 2])))
    next(stream)
    stream.close()  # batch 1 was in flight
    assert all(not queue for queue in cudart.streams.values())
    backend.close()
    assert cudart.memory == cudart.host == cudart.streams == cudart.events == {}


def test_close_waits_for_queued_work_before_releasing_the_context(engine):
    """A consumer that leaves the stream unfinished (an error, a `with` block left) and closes the backend:
    the engine run still queued must end before its context is released (`enqueueV3`: undefined
    behaviour otherwise), and only then is the memory freed."""
    path, cudart = engine
    trt = sys.modules["tensorrt"]
    backend = TensorRTBackend(path)
    backend.load()
    stream = backend.infer_stream(iter(_batches([2, 2, 2])))
    next(stream)  # batch 1 is queued, not run: the double runs work only when the host waits
    assert any(label == "exec" for queue in cudart.streams.values() for label, _ in queue)
    backend.close()
    assert trt.released_in_flight == []
    assert cudart.memory == cudart.host == cudart.streams == {}
    stream.close()


def test_the_host_sleeps_in_its_waits(engine):
    """Every event is created with cudaEventBlockingSync (and without timing): a spinning
    cudaEventSynchronize would take a core from the slide readers for the whole run."""
    path, cudart = engine
    with TensorRTBackend(path) as backend:
        backend.infer(_batches([2])[0])
        flags = list(cudart.event_flags.values())
    assert flags and all(f == cudart.cudaEventBlockingSync | cudart.cudaEventDisableTiming for f in flags)


def test_reload_after_close(engine):
    """close() resets `description`, so a second `with` block loads the engine again."""
    path, cudart = engine
    backend = TensorRTBackend(path)
    batch = _batches([2])[0]
    for _ in range(2):
        with backend:
            assert backend.description is not None
            np.testing.assert_array_equal(backend.infer(batch).labels, reference_outputs(batch, 4)[0])
        assert backend.description is None and cudart.memory == {}


def test_batch_larger_than_the_engine_runs_in_parts_in_order(engine):
    path, _ = engine
    batches = _batches([1, 5, 2], seed=2)  # 5 > max batch 2
    with TensorRTBackend(path) as backend:
        outs = [out.labels.copy() for out in backend.infer_stream(iter(batches))]
    for got, batch in zip(outs, batches, strict=True):
        np.testing.assert_array_equal(got, reference_outputs(batch, 4)[0])


@pytest.mark.parametrize("slots", [1, 3])
def test_other_slot_counts(engine, slots):
    path, _ = engine
    batches = _batches([2, 1, 2, 2, 1], seed=3)
    with TensorRTBackend(path, slots=slots) as backend:
        outs = [out.labels.copy() for out in backend.infer_stream(iter(batches))]
    for got, batch in zip(outs, batches, strict=True):
        np.testing.assert_array_equal(got, reference_outputs(batch, 4)[0])


def test_double_catches_reading_before_the_wait():
    """The cudart double runs queued copies only when the host waits: reading too early sees old data."""
    rt = fake_cudart()
    _, stream = rt.cudaStreamCreate()
    _, dev = rt.cudaMalloc(4)
    _, host = rt.cudaHostAlloc(4, rt.cudaHostAllocDefault)
    src = rt.host[host]
    src[:] = 7
    rt.cudaMemcpyAsync(dev, host, 4, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
    assert (rt.memory[dev] == 0).all()
    rt.cudaStreamSynchronize(stream)
    assert (rt.memory[dev] == 7).all()
    pageable = np.zeros(4, np.uint8)
    with pytest.raises(AssertionError, match="pageable"):
        rt.cudaMemcpyAsync(dev, pageable.ctypes.data, 4, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
