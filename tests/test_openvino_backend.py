"""The OpenVINO backend: the exported .onnx as ONNX Runtime runs it, asynchronous requests in order, the
model cache, BF16 only where the CPU has it and checked before use, and a runtime that imports without it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _runtime_models import exported_onnx, tissue_image, without_metadata

from segcls.core.cpu import CpuInfo, cpu_info, read_cpu_info
from segcls.core.errors import ModelError, SegclsError
from segcls.runtime.backends import BackendOutput, open_backend
from segcls.runtime.backends.check import compare
from segcls.runtime.backends.openvino import OpenVinoBackend
from segcls.runtime.backends.precision import run_precision

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return exported_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino-cache")


def batch(n: int, height: int = 64, width: int = 96, seed: int = 0) -> np.ndarray:
    return np.stack([tissue_image(height, width, seed + i) for i in range(n)])


def test_outputs_match_onnx_runtime_on_the_same_file(model, cache):
    images = batch(3)
    with open_backend(model, threads=1) as ort, OpenVinoBackend(model, threads=2, cache_dir=cache) as ov:
        expected, got = ort.infer(images), ov.infer(images)
        assert ov.name == "openvino" and ov.precision == "fp32" and ov.on_cpu and not ov.fixed_tile
        assert ov.device.startswith("CPU (") and ov.description.classes == ort.description.classes
    assert got.labels.dtype == np.uint8 and got.labels.shape == (3, 8, 12)
    assert got.probs.shape == (3, 3, 8, 12) and got.class_scores.shape == (3, 3)
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_allclose(got.probs, expected.probs, atol=1e-4)
    np.testing.assert_allclose(got.class_scores, expected.class_scores, rtol=1e-4, atol=1e-4)


def test_stream_keeps_the_order_across_batch_sizes_and_shapes(model, cache):
    """Trimmed tiles arrive in batches of different shapes; two streams run tiles side by side."""
    batches = [batch(3, 64, 96), batch(1, 48, 32, seed=5), batch(2, 96, 64, seed=7), batch(4, 32, 32, seed=9)]
    with OpenVinoBackend(model, threads=2, streams=2, cache_dir=cache) as ov:
        expected = [ov.infer(b) for b in batches]  # one batch at a time
        got = list(ov.infer_stream(iter(batches)))
    assert len(got) == len(batches)
    for g, e, b in zip(got, expected, batches, strict=True):
        assert g.labels.shape == (len(b), b.shape[1] // 8, b.shape[2] // 8)
        np.testing.assert_array_equal(g.labels, e.labels)
        np.testing.assert_array_equal(g.class_scores, e.class_scores)


def test_a_stream_stopped_early_leaves_no_request_running(model, cache):
    with OpenVinoBackend(model, threads=2, streams=2, cache_dir=cache) as ov:
        stream = ov.infer_stream(iter([batch(2)] * 5))
        next(stream)
        stream.close()  # the pipeline stops (an error, Ctrl-C): requests still running are awaited
        again = ov.infer(batch(2))  # every request is idle and usable again (a busy one would raise)
    assert again.labels.shape == (2, 8, 12)


def test_compiled_model_is_kept_in_the_cache(model, tmp_path):
    OpenVinoBackend(model, threads=1, cache_dir=tmp_path / "c").__enter__().close()
    assert any((tmp_path / "c").iterdir()), "OpenVINO's model cache wrote nothing"


def test_model_without_segcls_metadata_is_refused(model, tmp_path):
    bare = without_metadata(model, tmp_path / "bare.onnx")
    with pytest.raises(ModelError, match="no segcls metadata"):
        open_backend(bare, "openvino")


def test_open_backend_checks_openvino_against_onnx_runtime_and_prints_it(model, cache):
    lines = []
    with open_backend(model, "openvino", threads=2, sessions=2, log=lines.append, cache_dir=cache) as ov:
        assert ov.streams == 2 and ov.threads == 2
    (line,) = lines
    assert line.startswith("verification (fp32, openvino CPU vs ONNX Runtime fp32, 8 cases): labels agreement")
    assert "ok, needs >= 0.999" in line


@pytest.mark.skipif(not cpu_info().bf16, reason="this CPU has no native BF16 (AVX512-BF16 or AMX)")
def test_bf16_is_checked_against_fp32_before_use(model, cache):
    lines = []
    try:
        backend = open_backend(model, "openvino", precision="bf16", log=lines.append, cache_dir=cache)
    except ModelError as e:  # a random network has near ties: its BF16 may miss 99.5 %, and is then refused
        assert "failed verification on openvino bf16: labels agreement" in str(e)
    else:
        assert backend.precision == "bf16"
        backend.close()
    assert len(lines) == 1 and lines[0].startswith("verification (bf16, openvino CPU vs ONNX Runtime fp32")
    assert "needs >= 0.995" in lines[0]


def test_check_judges_labels_agreement_at_the_precision_bar():
    labels = np.zeros((1, 10, 100), np.uint8)
    probs, scores = np.zeros((1, 2, 10, 100), np.float32), np.ones((1, 2), np.float32)
    ref = BackendOutput(labels, probs, scores)
    off = labels.copy()
    off.flat[:6] = 1  # 0.6 % of the labels differ
    got = BackendOutput(off, probs, scores)
    assert not compare(got, ref, "bf16", "fp32", "openvino CPU", 1).passed  # needs 99.5 %
    assert compare(got, ref, "int8", "int8", "openvino CPU", 1).passed  # needs 99 %
    off.flat[:6] = 0
    off.flat[:2] = 1  # 0.2 %
    assert not compare(got, ref, "fp32", "fp32", "openvino CPU", 1).passed  # needs 99.9 %
    assert compare(ref, ref, "fp32", "fp32", "openvino CPU", 1).passed


def fake_cpu(tmp_path, flags: str) -> CpuInfo:
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n")
    return read_cpu_info(tmp_path / "cpuinfo")


def test_bf16_is_refused_in_one_line_on_a_cpu_without_it(model, tmp_path):
    avx512 = fake_cpu(tmp_path, "fpu sse2 avx2 fma avx512f avx512_vnni")
    with pytest.raises(SegclsError) as error:
        run_precision("openvino", model, "fp32", "bf16", avx512)
    message = str(error.value)
    assert "needs a CPU with AVX512-BF16 or AMX" in message and "Test CPU" in message and "\n" not in message
    assert "avx2 fma avx512f avx512_vnni" in message
    assert run_precision("openvino", model, "fp32", "bf16", fake_cpu(tmp_path, "avx2 amx_bf16")) == "bf16"
    assert run_precision("openvino", model, "fp32", "bf16", fake_cpu(tmp_path, "avx512_bf16")) == "bf16"


@pytest.mark.parametrize(
    "backend, exported, requested, message",
    [
        ("onnxruntime", "fp32", "bf16", "needs --backend openvino or auto"),
        ("onnxruntime", "fp32", "fp16", "segcls-export --fp16"),
        ("openvino", "int8", "bf16", "is an INT8 model"),
        ("openvino", "fp32", "fp16", "fp32 or bf16"),
        ("tensorrt", "fp16", "fp32", "in the precision it was exported with (fp16)"),
    ],
)
def test_precisions_a_backend_cannot_run_are_refused(tmp_path, backend, exported, requested, message):
    cpu = fake_cpu(tmp_path, "avx512f avx512_bf16")
    with pytest.raises(SegclsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_precision(backend, tmp_path / "m.onnx", exported, requested, cpu)


def test_a_model_runs_in_its_own_precision_when_none_or_that_one_is_asked(tmp_path):
    cpu = fake_cpu(tmp_path, "avx2")
    for backend in ("onnxruntime", "openvino", "tensorrt"):
        assert run_precision(backend, tmp_path / "m.onnx", "int8", None, cpu) == "int8"
        assert run_precision(backend, tmp_path / "m.onnx", "fp32", "fp32", cpu) == "fp32"


def test_the_runtime_imports_and_names_the_extra_without_openvino(model):
    """A deployment without OpenVINO: the runtime and its CLI import; asking for it is one line."""
    code = (
        "import sys; sys.modules['openvino'] = None\n"  # `import openvino` now raises ImportError
        "import segcls.runtime.cli, segcls.runtime.pipeline\n"
        "from segcls.runtime.backends import open_backend\n"
        f"open_backend({str(model)!r}, 'openvino')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0
    assert "BackendUnavailableError: openvino is not installed: pip install 'segcls[openvino]'" in done.stderr


def test_the_check_runs_once_per_model_and_machine(model, tmp_path):
    """The second load reads the kept result: no ONNX Runtime beside it again."""
    from segcls.runtime.backends.check import cached_check

    lines = []
    with OpenVinoBackend(model, threads=1, cache_dir=tmp_path / "ov") as ov:
        first = cached_check(ov, model, tmp_path / "checks", lines.append)
        again = cached_check(ov, model, tmp_path / "checks", lines.append)
    assert first.passed and not first.cached and again.cached and again.summary == first.summary
    assert lines[1] == f"{first.summary} (checked earlier on this machine)"
    assert len(list((tmp_path / "checks").glob("*.json"))) == 1


def test_a_signal_after_two_backends_were_closed_is_handled(model, tmp_path):
    """Each openvino.Core's CPU plugin swaps the thread's signal stack and puts back the one it found; two
    Cores closed in the order they were made left an unmapped one, and the next signal (Ctrl-C, SIGTERM)
    crashed the process. All backends share one Core."""
    code = (
        "import os, signal, numpy as np\n"
        "from segcls.runtime.backends.openvino import OpenVinoBackend\n"
        f"first = OpenVinoBackend({str(model)!r}, threads=1, cache_dir={str(tmp_path)!r}).__enter__()\n"
        f"second = OpenVinoBackend({str(model)!r}, threads=1, streams=2, cache_dir={str(tmp_path)!r}).__enter__()\n"
        "for b in (first, second):\n"
        "    b.infer(np.zeros((1, 32, 32, 3), np.uint8)); b.close()\n"
        "del first, second\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('handled', flush=True))\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "handled" in done.stdout, (done.returncode, done.stderr[-500:])
