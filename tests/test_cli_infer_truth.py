"""segcls-infer --truth: the mask scored against a ground-truth label mask."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _runtime_models import exported_onnx
from click.testing import CliRunner

from segcls.runtime.cli import main

CMU = Path(__file__).parent / "data" / "cmu-1-small-region.svs"
FAST = ["--mpp", "4.0", "--tile", "256", "--overlap", "32", "-q"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return exported_onnx(tmp_path_factory)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_truth_scores_the_mask(tmp_path, model):
    first = tmp_path / "first.mask.tif"
    assert invoke(CMU, "-o", first, "--model", model, *FAST).exit_code == 0
    # the same run scored against its own mask is perfect; against a corrupted copy it is not
    out = tmp_path / "again.mask.tif"
    r = invoke(CMU, "-o", out, "--model", model, *FAST, "--truth", first, "--summary", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    assert "macro F1 1.0000 vs truth" in r.output
    truth = json.loads((tmp_path / "s.json").read_text())["truth"]
    assert truth["macro_f1"] == 1.0 and truth["pixels"] > 0

    with tifffile.TiffFile(first) as tif:
        labels = tif.pages[0].asarray()
    wrong = np.where(labels == 255, 255, (labels + 1) % 3).astype(np.uint8)
    from segcls.tiff import palette_colormap, write_pyramid

    h, w = wrong.shape
    write_pyramid(
        tmp_path / "wrong.tif",
        (w, h),
        lambda lv, x, y, tw, th: wrong[:: 2**lv, :: 2**lv][y : y + th, x : x + tw],
        colormap=palette_colormap([(0, 0, 0)] * 3),
    )
    r = invoke(CMU, "-o", out, "--model", model, *FAST, "--truth", tmp_path / "wrong.tif", "--overwrite")
    assert r.exit_code == 0, r.output
    assert "macro F1 0.0000 vs truth" in r.output


def test_missing_truth_fails_before_work(tmp_path, model):
    out = tmp_path / "m.tif"
    r = invoke(CMU, "-o", out, "--model", model, *FAST, "--truth", tmp_path / "nope.tif")
    assert r.exit_code == 2 and "ground-truth mask not found" in r.output
    assert not out.exists()


def test_truth_takes_one_slide(tmp_path, model):
    shutil.copy(CMU, tmp_path / "a.svs")
    shutil.copy(CMU, tmp_path / "b.svs")
    r = invoke(tmp_path / "a.svs", tmp_path / "b.svs", "-o", tmp_path / "out", "--model", model, "--truth", CMU)
    assert r.exit_code == 2 and "single SLIDE" in r.output
