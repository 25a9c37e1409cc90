"""segcls-bench slide and readers: the JSON has its keys, each baseline writes a mask of the read frame."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import tifffile
from _runtime_models import exported_onnx
from click.testing import CliRunner

from segcls.bench.baselines import plain_loop, sliding_window
from segcls.bench.cli import main
from segcls.runtime.slide import open_slide
from segcls.runtime.tiling import plan_read

CMU = Path(__file__).parent / "data" / "cmu-1-small-region.svs"
HAVE_MONAI = importlib.util.find_spec("monai") is not None


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return exported_onnx(tmp_path_factory)  # random weights, trained mpp 2.0


def read_frame_shape(mpp: float) -> tuple[int, int]:
    with open_slide(CMU) as slide:
        w, h = plan_read(slide, mpp).size
    return h, w


def test_plain_loop_writes_a_mask_of_the_read_frame(model, tmp_path):
    out = tmp_path / "plain.tif"
    result = plain_loop(CMU, model, out, mpp=2.0)
    mask = tifffile.imread(out)
    assert mask.shape == read_frame_shape(2.0) == (741, 554)
    assert result["tiles"] == 1 and result["size"] == [554, 741]
    assert mask.dtype.name == "uint8" and mask.max() < 3  # class indices of a 3-class model


@pytest.mark.skipif(not HAVE_MONAI, reason="monai (the optional bench extra) is not installed")
def test_sliding_window_writes_a_mask_of_the_read_frame(model, tmp_path):
    out = tmp_path / "window.tif"
    result = sliding_window(CMU, model, out, mpp=1.0)
    mask = tifffile.imread(out)
    assert mask.shape == read_frame_shape(1.0) == (1481, 1108)
    assert result["tiles"] == 4  # 2 x 2 windows of 1024 with 1/16 overlap over 1108 x 1481
    assert mask.max() < 3


def test_bench_slide_json_has_its_keys(model, tmp_path):
    out = tmp_path / "bench.json"
    args = ["slide", str(CMU), "--model", str(model), "--mpp", "2.0", "--rounds", "1", "-o", str(out)]
    args += ["--option", "tile=256", "--option", "overlap=32", "--methods", "plain,window,before"]
    args += ["--model", f"{model}@onnxruntime"]  # segcls again, its backend named: a variant in the same rounds
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    result = json.loads(out.read_text())
    for key in ("e2e_over_backend", "e2e_over_read", "speedup_vs_plain_loop", "speedup_vs_sliding_window"):
        assert key in result
    for key in ("e2e_over_backend", "e2e_over_read", "speedup_vs_plain_loop", "speedup_vs_before"):
        assert result[key]["median"] > 0
    assert (result["speedup_vs_sliding_window"] is not None) == HAVE_MONAI
    methods = result["methods"]
    assert result["segcls"]["tiles"]["total"] == 12  # 554 x 741 in 256 px tiles with 192 px cores: 3 x 4
    assert methods["segcls"]["tiles"] == result["segcls"]["tiles"]["run"] >= 1  # network inputs, split or not
    assert methods["plain"]["tiles"] == 1
    # the before of the before/after: the same tiles run whole, more network input than trimmed
    assert methods["before"]["tiles"] == 12 and result["before"] == {"trim": False}
    trimmed, whole = (result["runs"][m][0]["summary"]["tiles"]["input_mpx"] for m in ("segcls", "before"))
    assert whole == pytest.approx(12 * 256**2 / 1e6, abs=1e-3) and trimmed < whole
    for m in methods.values():
        assert m["mask_size"] == [554, 741] and m["peak_rss_mb"]["median"] > 0
    stages = result["segcls_stages_s"]
    assert set(stages) >= {"read+decode (reader threads)", "tissue", "inference", "stitch", "write", "total"}
    assert result["environment"]["versions"]["onnxruntime"]
    (variant,) = result["variants"].values()
    assert list(result["variants"]) == [f"{model}@onnxruntime"] and variant["backend"] == "onnxruntime"
    assert variant["precision"] == "fp32" and variant["tiles"] == result["segcls"]["tiles"]
    for key in ("speedup_vs_plain_loop", "segcls_over_this", "e2e_over_backend", "seconds"):
        assert variant[key]["median"] > 0
    assert result["segcls"]["precision"] == "fp32" and "backend_choice" in result["segcls"]
    assert "speedup vs plain loop" in out.with_suffix(".md").read_text()
    assert f"| {model.name}@onnxruntime | onnxruntime | fp32 |" in out.with_suffix(".md").read_text()


def test_bench_slide_before_runs_its_own_options_and_refuses_bad_ones(model, tmp_path):
    out = tmp_path / "bench.json"
    args = ["slide", str(CMU), "--model", str(model), "--mpp", "2.0", "--rounds", "1", "-o", str(out)]
    args += ["--option", "tile=256", "--methods", "before", "--before", "overlap=64", "--before", "trim=false"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    result = json.loads(out.read_text())
    assert result["before"] == {"overlap": 64, "trim": False}
    assert result["runs"]["before"][0]["summary"]["tiles"]["total"] == 30  # 256 px tiles, 128 px cores: 5 x 6
    assert result["runs"]["segcls"][0]["summary"]["tiles"]["total"] == 20  # the default overlap 48: 4 x 5
    assert "before (overlap=64, trim=false)" in out.with_suffix(".md").read_text()
    bad = CliRunner().invoke(main, [*args[:8], "--before", "overlap=sixty"])
    assert bad.exit_code == 2 and "not KEY=JSON" in bad.output


def test_bench_slide_reports_a_failed_method_in_one_line(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    done = CliRunner().invoke(
        main, ["slide", str(CMU), "--model", str(bad), "--rounds", "1", "-q", "-o", str(tmp_path / "r.json")]
    )
    assert done.exit_code != 0
    assert done.output.startswith("Error: the segcls run failed") and len(done.output.splitlines()) == 1


def test_readers_command(tmp_path):
    out = tmp_path / "readers.json"
    args = ["readers", str(CMU), "--workers", "1,2", "--rounds", "1", "--max-tiles", "6", "-o", str(out)]
    args += ["--tile", "512", "--decoders", "segcls,openslide"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    (result,) = json.loads(out.read_text())["results"]
    assert [(r["decoder"], r["workers"]) for r in result["rows"]] == [
        (d, w) for d in ("tifffile", "openslide") for w in (1, 2)
    ]
    assert result["tiles"] == 6 and all(r["tiles_per_s"] > 0 for r in result["rows"])


def test_baselines_run_the_baseline_model(monkeypatch, tmp_path):
    """`--baseline-model`: segcls runs --model (e.g. INT8), the plain loop the baseline (e.g. FP32)."""
    import segcls.bench.slide as bench

    ran = []

    def run_method(method, slide, model, *args, open_only=False):
        if not open_only:  # the untimed open before the rounds
            ran.append((method, model.path.name))

    monkeypatch.setattr(bench, "run_method", run_method)
    monkeypatch.setattr(bench, "summarize", lambda *a: {})
    result = bench.bench_slide(CMU, "int8.onnx", rounds=2, methods=("segcls", "plain"), baseline_model="fp32.onnx")
    assert ran == [("segcls", "int8.onnx"), ("plain", "fp32.onnx"), ("plain", "fp32.onnx"), ("segcls", "int8.onnx")]
    assert result["baseline_model"] == "fp32.onnx"


def test_overlap_study_rows_with_and_without_trimming(model):
    from _runtime_models import tissue_image

    from segcls.bench.overlap import choose, overlap_agreement

    image = tissue_image(384, 384, seed=2)
    rows = {t: overlap_agreement(model, image, 2.0, (0, 32), (128,), tissue=t) for t in ("none", "auto")}
    for r in rows["none"] + rows["auto"]:
        assert 0 <= r["agreement"] <= 1 and r["work"] > 0 and r["tile"] == 128
    assert [r["scored"] for r in rows["none"]] == [1.0, 1.0]  # every pixel is scored without a tissue mask
    assert all(0.1 < r["scored"] < 1 for r in rows["auto"])
    # trimmed to the tissue, the same overlap runs less network input
    assert all(a["work"] < n["work"] for a, n in zip(rows["auto"], rows["none"], strict=True))
    assert rows["none"][1]["agreement"] > rows["none"][0]["agreement"]  # context helps
    assert choose(rows["none"], 128, needed=0.0)["overlap"] == 0  # least work when everything passes


def test_bench_shapes_reports_cost_per_mpx_and_refuses_bad_shapes(model, tmp_path):
    out = tmp_path / "shapes.json"
    done = CliRunner().invoke(
        main, ["shapes", str(model), "--shapes", "128x128,64x128", "--rounds", "2", "-o", str(out)]
    )
    assert done.exit_code == 0, done.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["shape"] for r in rows] == [[128, 128], [64, 128]]
    assert rows[0]["vs_first"]["median"] == 1.0 and all(r["ms_per_mpx"] > 0 for r in rows)
    bad = CliRunner().invoke(main, ["shapes", str(model), "--shapes", "100x128"])
    assert bad.exit_code == 2 and "multiple of 16" in bad.output


@pytest.mark.parametrize(
    "args",
    [
        ["overlap", str(CMU), "--model", "MODEL", "--overlaps", "32,x"],
        ["readers", str(CMU), "--workers", "1,two"],
        ["mask-write", "--sizes", "20000,big"],
    ],
)
def test_bench_lists_of_integers_are_checked_in_one_line(model, args):
    done = CliRunner().invoke(main, [str(model) if a == "MODEL" else a for a in args])
    assert done.exit_code == 2 and "expected comma-separated integers" in done.output
    assert "Traceback" not in done.output
