from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from segcls.core.errors import SlideError
from segcls.runtime.slide import open_slide
from segcls.runtime.tissue import TissueMask, detect_tissue, tissue_mask

CMU = Path(__file__).parent / "data" / "cmu-1-small-region.svs"


@pytest.fixture(scope="module")
def cmu_thumbnail():
    with open_slide(CMU) as slide:
        return slide.get_thumbnail((512, 512))


def test_cmu_tissue_found_and_glass_left_out(cmu_thumbnail):
    mask = detect_tissue(cmu_thumbnail)
    assert mask.shape == cmu_thumbnail.shape[:2]
    assert 0.2 < mask.mean() < 0.6  # the section covers roughly a third of this region
    # The top-left and right-hand strips of this slide are glass; the lower middle is tissue.
    h, w = mask.shape
    assert mask[: h // 10, : w // 10].mean() < 0.02
    assert mask[:, int(w * 0.92) :].mean() < 0.05
    assert mask[int(h * 0.8) :, int(w * 0.3) : int(w * 0.6)].mean() > 0.9
    # What it calls tissue is coloured, what it calls glass is bright.
    assert cmu_thumbnail[mask].min(axis=1).mean() < 200
    assert cmu_thumbnail[~mask].min(axis=1).mean() > 225


def test_all_background_gives_an_empty_mask():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(240, 4, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not detect_tissue(glass).any()
    assert not detect_tissue(np.full((50, 50, 3), 255, np.uint8)).any()
    assert not detect_tissue(np.zeros((50, 50, 3), np.uint8)).any()


def test_black_padding_is_not_tissue(cmu_thumbnail):
    padded = cmu_thumbnail.copy()
    h, w = padded.shape[:2]
    padded[:, : w // 4] = np.random.default_rng(0).integers(0, 12, (h, w // 4, 3))
    plain = detect_tissue(cmu_thumbnail)
    mask = detect_tissue(padded)
    assert not mask[:, : w // 4].any()
    # Padding does not shift the threshold for the rest of the slide.
    assert (mask[:, w // 4 + 3 :] == plain[:, w // 4 + 3 :]).mean() > 0.99


def test_specks_removed_and_small_holes_filled():
    image = np.full((1000, 1000, 3), 240, np.uint8)
    image[200:600, 200:600] = (200, 80, 160)  # a tissue square
    image[395:400, 395:400] = 240  # a small hole in it
    image[10:13, 10:13] = (200, 80, 160)  # a speck under min_region (2e-5 of the image = 20 px)
    image[700:720, 700:720] = (200, 80, 160)  # a small fragment above it
    mask = detect_tissue(image)
    assert mask[395:400, 395:400].all()
    assert not mask[5:20, 5:20].any()
    assert mask[700:720, 700:720].all()
    assert mask[200:600, 200:600].all() and mask.sum() == 400 * 400 + 20 * 20


def test_covers_maps_level0_boxes_to_mask_pixels():
    mask = np.zeros((10, 20), bool)
    mask[3, 5] = True
    tm = TissueMask(mask, downsample=16.0)
    assert tm.covers(5 * 16, 3 * 16, 16, 16)
    assert tm.covers(5 * 16 - 8, 3 * 16 - 8, 9, 9)  # touches the tissue pixel's corner
    assert not tm.covers(5 * 16 - 8, 3 * 16 - 8, 8, 8)  # ends exactly at its edge
    assert not tm.covers(0, 0, 64, 64)
    assert not tm.covers(10_000, 10_000, 64, 64)  # outside the slide


def test_tissue_mask_sources(tmp_path):
    with open_slide(CMU) as slide:
        auto = tissue_mask(slide, "auto", thumbnail_size=256)
        assert auto.mask.shape == (256, round(256 * 2220 / 2967))
        assert auto.downsample == pytest.approx(max(2220 / auto.mask.shape[1], 2967 / auto.mask.shape[0]))
        assert 0.2 < auto.mask.mean() < 0.6

        reused = tissue_mask(slide, "auto", thumbnail=slide.get_thumbnail((256, 256)))
        np.testing.assert_array_equal(reused.mask, auto.mask)
        assert reused.downsample == auto.downsample

        none = tissue_mask(slide, "none", thumbnail_size=256)
        assert none.mask.all() and none.mask.shape == auto.mask.shape
        assert none.covers(2219, 2966, 1, 1)  # the last row too, though 2967 / 256 > 2220 / 192

        # A user mask of another size: the left half is tissue.
        user = np.zeros((100, 75), np.uint8)
        user[:, :37] = 1
        Image.fromarray(user).save(tmp_path / "mask.png")
        from_png = tissue_mask(slide, tmp_path / "mask.png")
        assert from_png.mask.shape == (100, 75)
        assert from_png.covers(0, 0, 100, 100) and not from_png.covers(1200, 0, 1000, 2967)
        tifffile.imwrite(tmp_path / "mask.tif", user * 255)
        from_tif = tissue_mask(slide, str(tmp_path / "mask.tif"))
        np.testing.assert_array_equal(from_tif.mask, from_png.mask)

        with pytest.raises(SlideError, match="nothere"):
            tissue_mask(slide, tmp_path / "nothere.png")
        (tmp_path / "junk.png").write_bytes(b"junk")
        with pytest.raises(SlideError, match="junk"):
            tissue_mask(slide, tmp_path / "junk.png")
