"""Several ONNX Runtime sessions on the CPU: same outputs as one, in order, threads split between them,
a stream that stops or fails leaves no tile running, and a GPU provider keeps a single session."""

from __future__ import annotations

import threading
import time
from typing import ClassVar

import numpy as np
import onnxruntime
import pytest
from _runtime_models import exported_onnx, tissue_image

from segcls.core.errors import SegclsError
from segcls.runtime.backends import open_backend
from segcls.runtime.cores import cpu_sessions
from segcls.runtime.pipeline import InferOptions, infer_slide, open_model

_REAL_SESSION = onnxruntime.InferenceSession
SLOW, FAIL = 7, 9  # a tile whose first pixel is SLOW runs slowly, FAIL raises


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return exported_onnx(tmp_path_factory)


def _batch(n: int, h: int = 128, w: int = 192, seed: int = 0) -> np.ndarray:
    return np.stack([tissue_image(h, w, seed=seed + s) for s in range(n)])


class _Watched:
    """A real CPU session that records its threads and the runs in progress, and slows down or fails on
    tiles marked in their first pixel."""

    threads: ClassVar[list[int]] = []
    running: ClassVar[int] = 0
    most: ClassVar[int] = 0
    lock: ClassVar = threading.Lock()

    def __init__(self, path, options=None, providers=None, **kw):
        _Watched.threads.append(options.intra_op_num_threads)
        self._real = _REAL_SESSION(path, options, providers=["CPUExecutionProvider"], **kw)

    def run(self, names, feed):
        with _Watched.lock:
            _Watched.running += 1
            _Watched.most = max(_Watched.most, _Watched.running)
        try:
            marker = feed["image"][0, 0, 0, 0]
            if marker == SLOW:
                time.sleep(0.3)
            if marker == FAIL:
                raise RuntimeError("a tile failed")
            return self._real.run(names, feed)
        finally:
            with _Watched.lock:
                _Watched.running -= 1

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def watched(monkeypatch):
    monkeypatch.setattr(onnxruntime, "InferenceSession", _Watched)
    _Watched.threads, _Watched.running, _Watched.most = [], 0, 0
    return _Watched


def test_several_sessions_give_one_sessions_outputs(onnx_path):
    one, two = open_backend(onnx_path, threads=2), open_backend(onnx_path, threads=2, sessions=2)
    try:
        batches = [_batch(3), _batch(1, 64, 64, seed=5), _batch(2, 128, 192, seed=9), _batch(4, 96, 128, seed=2)]
        expected = [one.infer(b) for b in batches]
        for out, ref in zip(two.infer_stream(iter(batches)), expected, strict=True):
            assert out.labels.dtype == np.uint8 and out.labels.shape == ref.labels.shape
            np.testing.assert_array_equal(out.labels, ref.labels)
            np.testing.assert_allclose(out.probs, ref.probs, atol=1e-5)
            np.testing.assert_allclose(out.class_scores, ref.class_scores, atol=1e-4)
        single = two.infer(batches[0])  # one call of a batch: its tiles split over the sessions
        np.testing.assert_array_equal(single.labels, expected[0].labels)
    finally:
        one.close()
        two.close()


def test_threads_are_split_between_the_sessions(onnx_path, watched):
    backend = open_backend(onnx_path, threads=4, sessions=2)
    assert watched.threads == [2, 2] and backend.sessions == 2
    backend.close()
    watched.threads.clear()
    open_backend(onnx_path, threads=2).close()
    assert watched.threads == [2]


def test_tiles_run_side_by_side_and_come_back_in_order(onnx_path, watched):
    backend = open_backend(onnx_path, threads=2, sessions=2)
    slow = _batch(1, seed=1)
    slow[0, 0, 0] = SLOW  # batch 0 finishes last
    batches = [slow, _batch(1, seed=2), _batch(1, seed=3)]
    expected = [open_backend(onnx_path, threads=1).infer(b).labels for b in batches]
    outs = [out.labels.copy() for out in backend.infer_stream(iter(batches))]
    backend.close()
    for out, ref in zip(outs, expected, strict=True):
        np.testing.assert_array_equal(out, ref)
    assert watched.most == 2  # the two sessions really ran at once


def test_a_stopped_stream_leaves_no_tile_running(onnx_path, watched):
    backend = open_backend(onnx_path, threads=2, sessions=2)
    batches = [_batch(2, seed=s) for s in range(6)]
    for b in batches[1:]:
        b[:, 0, 0] = SLOW
    stream = backend.infer_stream(iter(batches))
    next(stream)
    stream.close()  # the pipeline stops early (an error while stitching, Ctrl-C)
    assert watched.running == 0
    backend.close()


def test_a_failing_tile_fails_the_stream(onnx_path, watched):
    backend = open_backend(onnx_path, threads=2, sessions=2)
    batches = [_batch(2, seed=s) for s in range(4)]
    batches[1][0, 0, 0] = FAIL  # fails while the batch's other tile still runs
    batches[1][1, 0, 0] = SLOW
    stream = backend.infer_stream(iter(batches))
    next(stream)
    with pytest.raises(RuntimeError, match="a tile failed"):
        next(stream)
    assert watched.running == 0
    backend.close()


def test_a_gpu_provider_keeps_one_session(onnx_path, monkeypatch):
    created = []

    class OnCuda(_Watched):
        def __init__(self, path, options=None, providers=None, **kw):
            created.append(providers)
            super().__init__(path, options, providers, **kw)

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", OnCuda)
    backend = open_backend(onnx_path, threads=2, sessions=2)
    assert len(created) == 1 and backend.device == "CUDAExecutionProvider"


def test_auto_sessions_follow_the_cores(onnx_path, watched):
    assert [cpu_sessions("auto", n) for n in (1, 2, 16)] == [1, 2, 2]
    assert cpu_sessions(3, 2) == 3
    open_model(onnx_path, "onnxruntime", threads=2).close()  # named: auto would time OpenVINO beside it
    assert watched.threads == [1, 1]
    watched.threads.clear()
    open_model(onnx_path, "onnxruntime", threads=1).close()
    assert watched.threads == [1]
    watched.threads.clear()
    open_model(onnx_path, "onnxruntime", threads=2, sessions=1).close()
    assert watched.threads == [2]


@pytest.mark.parametrize("bad", [0, -1, "two"])
def test_bad_sessions_are_refused(bad):
    with pytest.raises(SegclsError, match="--sessions must be"):
        InferOptions(sessions=bad)


def test_refused_by_the_backend(onnx_path):
    with pytest.raises(SegclsError, match="sessions must be >= 1"):
        open_backend(onnx_path, sessions=0)


def test_slide_labels_do_not_depend_on_the_sessions(tmp_path, onnx_path):
    from PIL import Image

    png = tmp_path / "region.png"
    Image.fromarray(tissue_image(700, 900, seed=3)).save(png)
    labels = []
    for sessions in (1, 2):
        opts = InferOptions(tile=256, overlap=48, batch=3, mpp=2.0, slide_mpp=2.0, sessions=sessions, progress=False)
        labels.append(infer_slide(png, onnx_path, tmp_path / f"mask{sessions}.tif", opts).labels)
    assert (labels[0] != 255).mean() > 0.2  # tissue was found and run
    np.testing.assert_array_equal(labels[0], labels[1])
