"""`--backend auto` on an .onnx: the fastest backend that passed its check, measured once per model and
machine and cached; stated in the run's line and summary. Timings are given to the chooser (`probe=`) or
read from a cache entry, so no test depends on which backend is faster on the machine that runs it."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from _runtime_models import exported_onnx, tissue_image

from segcls.core.errors import BackendUnavailableError, ModelError, SegclsError
from segcls.runtime.backends.choice import BackendChoice, Measured, candidates, choose_backend, probe_backends
from segcls.runtime.options import InferOptions
from segcls.runtime.pipeline import infer_slide, open_model

BOTH = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return exported_onnx(tmp_path_factory)


def fixed(rates: dict[str, float | None], failed: tuple[str, ...] = ()):
    """A probe that reports these tiles/s (None: not timed) and records that it ran."""
    calls = []

    def probe(model, found, threads, sessions, tile, log):
        calls.append((tuple(found), threads, sessions, tile))
        return [
            Measured(name, precision, name not in failed, "fixed figures", None if name in failed else rates[name])
            for name, precision in found
        ]

    probe.calls = calls
    return probe


def choose(model, tmp_path, probe, **kwargs):
    return choose_backend(model, threads=2, sessions=2, tile=64, installed=BOTH, cache_dir=tmp_path, probe=probe,
                          **kwargs)  # fmt: skip


@pytest.mark.parametrize("rates, winner", [({"onnxruntime": 3.0, "openvino": 5.0}, "openvino"),
                                           ({"onnxruntime": 5.0, "openvino": 3.0}, "onnxruntime")])  # fmt: skip
def test_the_fastest_backend_is_chosen_and_kept(model, tmp_path, rates, winner):
    probe = fixed(rates)
    choice = choose(model, tmp_path, probe)
    assert choice.backend == winner and choice.precision == "fp32" and not choice.cached
    assert probe.calls == [((("onnxruntime", "fp32"), ("openvino", "fp32")), 2, 2, 64)]
    again = choose(model, tmp_path, fixed({"onnxruntime": 9.0, "openvino": 1.0}))  # the cache answers
    assert again.backend == winner and again.cached
    assert [m.tiles_per_s for m in again.measured] == [rates["onnxruntime"], rates["openvino"]]
    entry = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert entry["entry"]["backend"] == winner and entry["entry"]["tile"] == 64
    assert f"auto: {winner} fp32" in again.line() and "measured earlier on this machine" in again.line()


def test_a_backend_that_fails_its_check_is_not_chosen_however_fast(model, tmp_path):
    choice = choose(model, tmp_path, fixed({"onnxruntime": 1.0, "openvino": 100.0}, failed=("openvino",)))
    assert choice.backend == "onnxruntime"
    assert "openvino (failed its check)" in choice.line()


def test_no_backend_passing_is_an_error(model, tmp_path):
    with pytest.raises(ModelError, match="no backend runs"):
        choose(model, tmp_path, fixed({}, failed=BOTH))


def test_the_key_changes_with_the_run_so_a_changed_setup_is_measured_again(model, tmp_path):
    probe = fixed({"onnxruntime": 1.0, "openvino": 2.0})
    choose(model, tmp_path, probe)
    choose_backend(model, threads=2, sessions=1, tile=64, installed=BOTH, cache_dir=tmp_path, probe=probe)
    choose_backend(model, threads=2, sessions=2, tile=128, installed=BOTH, cache_dir=tmp_path, probe=probe)
    assert len(probe.calls) == 3 and len(list(tmp_path.glob("*.json"))) == 3


def test_an_unreadable_cache_entry_is_measured_again(model, tmp_path):
    choose(model, tmp_path, fixed({"onnxruntime": 1.0, "openvino": 2.0}))
    next(tmp_path.glob("*.json")).write_text("{not json")
    probe = fixed({"onnxruntime": 1.0, "openvino": 2.0})
    assert not choose(model, tmp_path, probe).cached and len(probe.calls) == 1


def test_one_candidate_is_chosen_without_a_probe(model, tmp_path):
    def never(*args):
        raise AssertionError("probed with a single candidate")

    choice = choose_backend(model, threads=1, sessions=1, installed=("onnxruntime",), cache_dir=tmp_path, probe=never)
    assert choice.backend == "onnxruntime" and choice.measured == [] and "only backend" in choice.line()
    assert list(tmp_path.iterdir()) == []


def test_bf16_needs_openvino_and_a_cpu_with_bf16(model, tmp_path):
    """Without OpenVINO, BF16 is refused naming the extra; on a CPU without BF16, naming what it lacks."""
    from segcls.core.cpu import cpu_info

    assert candidates(model, "bf16", ("onnxruntime",)) == []
    error, message = (
        (BackendUnavailableError, r"runs on OpenVINO, which is not installed: pip install 'segcls\[openvino\]'")
        if cpu_info().bf16
        else (SegclsError, "needs a CPU with AVX512-BF16 or AMX")
    )
    with pytest.raises(error, match=message):
        choose_backend(model, "bf16", threads=1, sessions=1, installed=("onnxruntime",), cache_dir=tmp_path)


def test_a_precision_no_backend_runs_is_refused_in_the_words_of_onnx_runtime(model, tmp_path):
    with pytest.raises(SegclsError, match="segcls-export --fp16"):
        choose_backend(model, "fp16", threads=1, sessions=1, installed=BOTH, cache_dir=tmp_path)


def test_choice_round_trips_through_its_dict():
    choice = BackendChoice("openvino", "int8", 1024, [Measured("onnxruntime", "int8", True, "ref", 6.0),
                                                       Measured("openvino", "int8", True, "ok", 10.7)])  # fmt: skip
    assert BackendChoice.from_dict(json.loads(json.dumps(choice.to_dict()))) == choice


def test_the_pipeline_runs_on_the_choice_and_says_so(model, tmp_path):
    pytest.importorskip("openvino")
    chooser = functools.partial(choose_backend, installed=BOTH, cache_dir=tmp_path / "cache",
                                probe=fixed({"onnxruntime": 1.0, "openvino": 2.0}))  # fmt: skip
    lines = []
    backend = open_model(model, "auto", threads=2, sessions=2, tile=64, choose=chooser, log=lines.append)
    assert backend.name == "openvino" and backend.choice["backend"] == "openvino"
    assert any(line.startswith("auto: openvino fp32, 2.00 tiles/s of 64 px against onnxruntime 1.00") for line in lines)
    from PIL import Image

    Image.fromarray(tissue_image(160, 224)).save(tmp_path / "s.png")
    options = InferOptions(
        tile=64, overlap=16, tissue="none", slide_mpp=2.0, progress=False, summary=tmp_path / "s.json"
    )
    with backend:
        result = infer_slide(tmp_path / "s.png", backend, tmp_path / "m.tif", options)
    assert (
        "openvino fp32 on CPU" in result.line
        and "auto: fastest of openvino 2.00, onnxruntime 1.00 tiles/s" in result.line
    )
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["backend"] == "openvino" and summary["precision"] == "fp32"
    assert [m["backend"] for m in summary["backend_choice"]["measured"]] == list(BOTH)


def test_a_named_backend_is_not_probed(model, tmp_path):
    def never(*args, **kwargs):
        raise AssertionError("probed although the backend was named")

    with open_model(model, "onnxruntime", threads=1, choose=never) as backend:
        assert backend.name == "onnxruntime" and backend.choice is None


def test_the_real_probe_measures_every_candidate(model):
    """What the default probe reports (not which backend wins): both timed, ONNX Runtime the reference."""
    pytest.importorskip("openvino")
    found = candidates(model, None, BOTH)
    measured = probe_backends(model, found, threads=2, sessions=2, tile=32, log=lambda message: None)
    assert [(m.backend, m.precision) for m in measured] == found == [("onnxruntime", "fp32"), ("openvino", "fp32")]
    assert measured[0].passed and "reference" in measured[0].check
    assert measured[1].check.startswith("verification (fp32, openvino CPU vs ONNX Runtime fp32")
    assert all(m.tiles_per_s and m.tiles_per_s > 0 for m in measured if m.passed)
    assert np.isfinite([m.tiles_per_s for m in measured if m.passed]).all()


def test_the_real_probe_opens_a_model_in_its_own_precision(model, tmp_path):
    """An INT8 model is probed as INT8 on both backends (a copy of the FP32 graph labelled int8 will do)."""
    pytest.importorskip("openvino")
    import onnx

    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key == "segcls.precision":
            prop.value = "int8"
    onnx.save(proto, str(tmp_path / "m.int8.onnx"))
    found = candidates(tmp_path / "m.int8.onnx", None, BOTH)
    assert found == [("onnxruntime", "int8"), ("openvino", "int8")]
    measured = probe_backends(tmp_path / "m.int8.onnx", found, threads=1, sessions=1, tile=32, log=lambda m: None)
    assert [m.passed for m in measured] == [True, True], [m.check for m in measured]
    assert "needs >= 0.99)" in measured[1].check  # the INT8 bar
