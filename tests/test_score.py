import numpy as np
import pytest
import tifffile

from segcls.errors import SlideError
from segcls.runtime.score import read_mask_level, score_masks
from segcls.tiff import palette_colormap, write_pyramid


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


def test_prediction_on_a_coarser_grid_is_resampled_onto_the_truth(tmp_path):
    """A prediction kept at half the truth's resolution is compared pixel for pixel on the truth's grid."""
    truth = np.zeros((128, 192), np.uint8)
    truth[:, 96:] = 1
    pred = np.zeros((64, 96), np.uint8)
    pred[:, 48:] = 1
    pred[:32, 24:48] = 1  # a quarter of the truth's class-0 half, 64 x 48 truth pixels, is wrong
    _write(tmp_path / "t.tif", truth)
    _write(tmp_path / "p.tif", pred)
    s = score_masks(tmp_path / "p.tif", tmp_path / "t.tif", 2, max_pixels=128 * 192)
    assert s.pixels == 128 * 192
    assert s.micro_f1 == pytest.approx(1 - 64 * 48 / (128 * 192))
    # class 0: tp = 128*96 - 64*48, fn = 64*48, fp = 0; class 1: tp = 128*96, fn = 0, fp = 64*48
    tp0, wrong = 128 * 96 - 64 * 48, 64 * 48
    f1_0 = 2 * tp0 / (2 * tp0 + wrong)
    f1_1 = 2 * (128 * 96) / (2 * (128 * 96) + wrong)
    assert s.macro_f1 == pytest.approx((f1_0 + f1_1) / 2)
