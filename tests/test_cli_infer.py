"""segcls-infer: real slide end to end, batches of slides, and every bad input -> Error:, exit != 0, no mask."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
from _runtime_models import exported_onnx, tissue_image, without_metadata
from click.testing import CliRunner
from PIL import Image

from segcls.runtime.cli import main

DATA = Path(__file__).parent / "data"
CMU = DATA / "cmu-1-small-region.svs"
FAST = ["--tile", "256", "--overlap", "32", "-q"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return exported_onnx(tmp_path_factory)


@pytest.fixture
def png_slide(tmp_path):
    """A plain image: no mpp, one level."""
    path = tmp_path / "small.png"
    Image.fromarray(tissue_image(256, 384, seed=2)).save(path)
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_real_aperio_slide_end_to_end(tmp_path, model):
    out = tmp_path / "cmu.mask.tif"
    r = invoke(CMU, "-o", out, "--model", model, "--mpp", 4.0, *FAST, "--summary", "--probs", "--geojson")
    assert r.exit_code == 0, r.output
    assert "tiles in" in r.output and str(out) in r.output
    src = openslide.OpenSlide(str(CMU))
    mask = openslide.OpenSlide(str(out))
    assert mask.dimensions == src.dimensions
    assert mask.level_count >= 3
    assert float(mask.properties["openslide.mpp-x"]) == pytest.approx(float(src.properties["openslide.mpp-x"]))
    # palette: every colour OpenSlide renders is a class colour or white (255 = not tissue)
    summary = json.loads((tmp_path / "cmu.summary.json").read_text())
    colours = {(31, 119, 180), (255, 127, 14), (44, 160, 44), (255, 255, 255)}
    thumb = np.asarray(mask.read_region((0, 0), mask.level_count - 1, mask.level_dimensions[-1]).convert("RGB"))
    assert {tuple(c) for c in thumb.reshape(-1, 3)} <= colours
    assert summary["level"] == 0 and summary["mpp"] == pytest.approx(4.0, rel=1e-3)
    assert summary["tiles"]["run"] >= 1 and summary["slide_class"]["class"] in summary["area_mm2"]
    probs = np.load(tmp_path / "cmu.probs.npy", mmap_mode="r")
    assert probs.dtype == np.float16 and probs.shape[0] == 3
    assert json.loads((tmp_path / "cmu.geojson").read_text())["type"] == "FeatureCollection"


def test_several_slides_go_to_a_folder_and_are_skipped_when_done(tmp_path, model, png_slide):
    second = tmp_path / "second.png"
    shutil.copy(png_slide, second)
    out = tmp_path / "out"
    args = [png_slide, second, "-o", out, "--model", model, "--slide-mpp", 2.0, *FAST, "--summary"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [
        "cohort.csv", "second.mask.tif", "second.summary.json", "small.mask.tif", "small.summary.json",
    ]  # fmt: skip
    r = invoke(*args)
    assert r.exit_code == 0 and r.output.count("done already") == 2
    r = invoke(*args, "--overwrite")
    assert r.exit_code == 0 and r.output.count("tiles in") == 2


def test_a_failing_slide_does_not_stop_the_others(tmp_path, model, png_slide):
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    out = tmp_path / "out"
    r = invoke(bad, png_slide, "-o", out, "--model", model, "--slide-mpp", 2.0, *FAST)
    assert r.exit_code == 1
    assert f"Error: {bad}" in r.output and "1 of 2 slides failed" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["cohort.csv", "small.mask.tif"]


def test_folder_argument(tmp_path, model, png_slide):
    out = tmp_path / "out"
    r = invoke(tmp_path, "-o", out, "--model", model, "--slide-mpp", 2.0, *FAST, "--overlay")
    assert r.exit_code == 0, r.output
    assert (out / "small.mask.tif").is_file() and (out / "small.overlay.png").is_file()


def truncated(tmp_path: Path) -> Path:
    path = tmp_path / "truncated.svs"
    path.write_bytes(CMU.read_bytes()[: CMU.stat().st_size // 2])
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "slide not found"),
        ("not_a_slide", "cannot open"),
        ("truncated", "truncated.svs"),
        ("no_mpp", "--slide-mpp"),
        ("model_without_description", "no segcls metadata"),
        ("output_folder_missing", "output folder does not exist"),
        ("bad_overlap", "--overlap must be a multiple of 16"),
        ("bad_sessions", "--sessions must be 'auto' or a number >= 1"),
    ],
)
def test_bad_input_gives_error_and_no_mask(tmp_path, model, png_slide, case, message):
    slide, model_path, out = png_slide, model, tmp_path / "out.tif"
    extra = ["--slide-mpp", 2.0]
    if case == "missing":
        slide = tmp_path / "missing.svs"
    elif case == "not_a_slide":
        slide = tmp_path / "notes.svs"
        slide.write_text("hello")
    elif case == "truncated":
        slide, extra = truncated(tmp_path), []
    elif case == "no_mpp":
        extra = []
    elif case == "model_without_description":
        model_path = without_metadata(model, tmp_path / "bare.onnx")
    elif case == "output_folder_missing":
        out = tmp_path / "nowhere" / "out.tif"
    elif case == "bad_overlap":
        extra += ["--overlap", "24"]
    elif case == "bad_sessions":
        extra += ["--sessions", "many"]
    args = [slide, "-o", out, "--model", model_path, *FAST, *extra]
    if case == "bad_overlap":
        args.remove("32")
        args.remove("--overlap")
    r = invoke(*args)
    assert r.exit_code != 0
    assert "Error:" in r.output and message in r.output, r.output
    assert "Traceback" not in r.output
    assert not out.exists()


def test_unwritable_output(tmp_path, model, png_slide):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    r = invoke(png_slide, "-o", blocker / "out.tif", "--model", model, "--slide-mpp", 2.0, *FAST)
    assert r.exit_code == 2 and "Error:" in r.output


def test_ctrl_c_leaves_no_mask(tmp_path, model, png_slide, monkeypatch):
    import segcls.runtime.feed as feed

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(feed, "read_tile", interrupt)
    out = tmp_path / "out.tif"
    r = invoke(png_slide, "-o", out, "--model", model, "--slide-mpp", 2.0, *FAST, "--summary", "--probs")
    assert r.exit_code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.png"]


def test_level_reads_a_slide_without_mpp(tmp_path, model, png_slide):
    out = tmp_path / "out.tif"
    r = invoke(png_slide, "-o", out, "--model", model, "--level", 0, *FAST, "--tissue", "none")
    assert r.exit_code == 0, r.output
    mask = openslide.OpenSlide(str(out))
    assert mask.dimensions == (384, 256)
