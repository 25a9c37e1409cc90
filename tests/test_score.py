import numpy as np
import pytest
import tifffile

from segcls.core.errors import SlideError
from segcls.core.tiff import palette_colormap, write_pyramid
from segcls.runtime.score import read_mask_level, score_masks


def _write(path, labels):
    h, w = labels.shape
    write_pyramid(
        path,
        (w, h),
        lambda level, x, y, tw, th: labels[:: 2**level, :: 2**level][y : y + th, x : x + tw],
        tile=64,
        colormap=palette_colormap([(255, 0, 0), (0, 255, 0)]),
    )


def test_score_masks_counts_pixels_and_ignores_255(tmp_path):
    truth = np.zeros((200, 300), np.uint8)
    truth[:, 150:] = 1
    truth[:20] = 255
    pred = truth.copy()
    pred[100:, 100:150] = 1  # 100 x 50 wrong pixels of class 0
    _write(tmp_path / "t.tif", truth)
    _write(tmp_path / "p.tif", pred)
    s = score_masks(tmp_path / "p.tif", tmp_path / "t.tif", 2)
    assert s.pixels == 180 * 300
    assert s.micro_f1 == pytest.approx(1 - 5000 / (180 * 300))


def test_coarser_level_when_level0_is_too_big(tmp_path):
    labels = np.zeros((256, 256), np.uint8)
    _write(tmp_path / "m.tif", labels)
    assert read_mask_level(tmp_path / "m.tif", max_pixels=256 * 256).shape == (256, 256)
    assert read_mask_level(tmp_path / "m.tif", max_pixels=128 * 128).shape == (128, 128)


def test_missing_or_bad_mask(tmp_path):
    with pytest.raises(SlideError, match="not found"):
        read_mask_level(tmp_path / "nope.tif")
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    with pytest.raises(SlideError, match="holds no single-channel label image"):
        read_mask_level(rgb)


def _scores_by_hand(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[float, float]:
    """Macro F1 (classes in either) and micro F1 of two equal-size label maps, by plain counting."""
    f1s = []
    for c in range(num_classes):
        tp, fp, fn = (
            np.sum((truth == c) & (pred == c)),
            np.sum((truth != c) & (pred == c)),
            np.sum((truth == c) & (pred != c)),
        )
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)), float(np.mean(truth == pred))


@pytest.mark.parametrize("factor", [2, 0.5])
def test_prediction_on_another_grid_is_resampled_onto_the_truth(tmp_path, factor):
    """A prediction kept at half (or twice) the truth's resolution is compared on the truth's grid, each truth
    pixel with the prediction pixel that covers it (nearest, top-left aligned)."""
    truth = np.zeros((128, 192) if factor == 2 else (192, 128), np.uint8)  # one wide, one tall
    truth[:, truth.shape[1] // 2 :] = 1
    if factor == 2:  # prediction pixel (i, j) covers truth pixels (2i..2i+1, 2j..2j+1)
        pred = np.zeros((64, 96), np.uint8)
        pred[:, 48:] = 1
        pred[:16, 20:48] = 1  # wrong, in the top quarter only
        pred[-1, :30] = 2  # the last row and column differ from their neighbours
        pred[:, -1] = 0
        on_truth_grid = pred.repeat(2, 0).repeat(2, 1)
    else:  # prediction pixel (2i, 2j) is the one at truth pixel (i, j)
        pred = truth.repeat(2, 0).repeat(2, 1)
        pred[0::2, 0:50:2] = 2  # wrong on the sampled pixels of the left part
        pred[1::2, 70:] = 2  # wrong only on pixels that are not sampled: no effect
        pred[-2:, :] = 2  # the last two rows: sampled (row -2) and not (row -1)
        on_truth_grid = pred[::2, ::2]
    _write(tmp_path / "t.tif", truth)
    _write(tmp_path / "p.tif", pred)
    s = score_masks(tmp_path / "p.tif", tmp_path / "t.tif", 3, max_pixels=pred.size + truth.size)
    macro, micro = _scores_by_hand(truth, on_truth_grid, 3)
    assert 0.5 < micro < 0.99
    assert s.pixels == truth.size
    assert s.micro_f1 == pytest.approx(micro) and s.macro_f1 == pytest.approx(macro)


def test_coarsest_level_when_no_level_is_small_enough(tmp_path):
    labels = np.zeros((256, 512), np.uint8)
    _write(tmp_path / "m.tif", labels)
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        smallest = tif.series[0].levels[-1].shape
    assert smallest[0] * smallest[1] > 10 and smallest != labels.shape
    assert read_mask_level(tmp_path / "m.tif", max_pixels=10).shape == smallest
    assert read_mask_level(tmp_path / "m.tif", max_pixels=256 * 256).shape == (128, 256)  # h * w counts, not h * h
