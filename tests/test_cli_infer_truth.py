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


def _f1_by_hand(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[float, float, int]:
    """Macro F1 (over classes in either), micro F1 and pixel count, 255 in either ignored: plain counting."""
    keep = (truth != 255) & (pred != 255)
    t, p = truth[keep].astype(int), pred[keep].astype(int)
    f1s = []
    for c in range(num_classes):
        tp, fp, fn = np.sum((t == c) & (p == c)), np.sum((t != c) & (p == c)), np.sum((t == c) & (p != c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)), float(np.mean(t == p)), int(keep.sum())


def test_truth_scores_the_mask_against_a_finer_hand_made_truth(tmp_path, model):
    """A truth at twice the mask's resolution: the left half agrees with the mask, the right half is another
    class, the top rows are unannotated. The score is the one counted by hand on the truth's grid."""
    first = tmp_path / "first.mask.tif"
    assert invoke(CMU, "-o", first, "--model", model, *FAST).exit_code == 0
    with tifffile.TiffFile(first) as tif:
        labels = tif.pages[0].asarray()
    fine = labels.repeat(2, 0).repeat(2, 1)  # the mask as the truth's finer grid sees it
    truth = fine.copy()
    h, w = truth.shape
    right = truth[:, w // 2 :]
    right[right != 255] = (right[right != 255] + 1) % 3
    truth[: h // 8] = 255
    assert (truth[:, : w // 2] != 255).any() and (truth[:, w // 2 :] != 255).any()
    from segcls.core.tiff import palette_colormap, write_pyramid

    write_pyramid(
        tmp_path / "truth.tif",
        (w, h),
        lambda lv, x, y, tw, th: truth[:: 2**lv, :: 2**lv][y : y + th, x : x + tw],
        colormap=palette_colormap([(0, 0, 0)] * 3),
    )
    macro, micro, pixels = _f1_by_hand(truth, fine, 3)
    assert 0.05 < micro < 0.95  # a partial score, neither perfect nor zero
    out = tmp_path / "again.mask.tif"
    r = invoke(
        CMU, "-o", out, "--model", model, *FAST, "--truth", tmp_path / "truth.tif", "--summary", tmp_path / "s.json"
    )
    assert r.exit_code == 0, r.output
    assert f"macro F1 {macro:.4f} vs truth" in r.output
    scored = json.loads((tmp_path / "s.json").read_text())["truth"]
    assert scored["pixels"] == pixels
    assert scored["macro_f1"] == pytest.approx(macro) and scored["micro_f1"] == pytest.approx(micro)


def test_missing_truth_fails_before_work(tmp_path, model):
    out = tmp_path / "m.tif"
    r = invoke(CMU, "-o", out, "--model", model, *FAST, "--truth", tmp_path / "nope.tif")
    assert r.exit_code == 2 and r.output.startswith("Error: --truth:") and "does not exist" in r.output
    assert not out.exists()


def test_truth_takes_one_slide(tmp_path, model):
    shutil.copy(CMU, tmp_path / "a.svs")
    shutil.copy(CMU, tmp_path / "b.svs")
    r = invoke(tmp_path / "a.svs", tmp_path / "b.svs", "-o", tmp_path / "out", "--model", model, "--truth", CMU)
    assert r.exit_code == 2 and "single SLIDE" in r.output
