import json

import numpy as np
import openslide
import pytest
import tifffile

from segcls.runtime.mask_writer import upsample_window, write_mask

COLORS = [(255, 0, 0), (0, 128, 255), (10, 200, 30)]


def nearest(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """The reference: out[Y, X] = labels[floor(Y * h / H), floor(X * w / W)], written the slow way."""
    h, w = labels.shape
    rows = np.floor(np.arange(height) * h / height).astype(int)
    cols = np.floor(np.arange(width) * w / width).astype(int)
    return labels[np.ix_(rows, cols)]


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 3, (37, 53)).astype(np.uint8)
    lab[rng.random(lab.shape) < 0.2] = 255
    return lab


def test_openslide_reads_size_levels_mpp_and_palette_colours(tmp_path, labels):
    path = tmp_path / "mask.tiff"
    sizes = write_mask(path, labels, (1000, 700), COLORS, mpp=0.5, tile=256, classes=["a", "b", "c"])
    assert sizes == [(1000, 700), (500, 350), (250, 175)]
    slide = openslide.OpenSlide(path)
    assert slide.dimensions == (1000, 700)
    assert slide.level_count == 3
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    meta = json.loads(slide.properties["tiff.ImageDescription"])
    assert meta["classes"] == ["a", "b", "c"] and meta["colors"] == [list(c) for c in COLORS]
    expected = nearest(labels, 1000, 700)
    palette = np.full((256, 3), 0, np.uint8)
    palette[:3] = COLORS
    palette[255] = 255
    region = np.asarray(slide.read_region((300, 200), 0, (400, 300)))
    np.testing.assert_array_equal(region[..., :3], palette[expected[200:500, 300:700]])
    slide.close()


def test_pixels_of_every_level_are_nearest_upsampling_of_the_labels(tmp_path, labels):
    path = tmp_path / "mask.tif"
    write_mask(path, labels, (777, 555), COLORS, mpp=None, tile=128)
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        assert pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE and tif.is_bigtiff
        assert pages[0].is_tiled and pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        for page in pages:
            height, width = page.shape
            np.testing.assert_array_equal(page.asarray(), nearest(labels, width, height))
    # The gather shortcut matches the reference on windows that straddle label-pixel edges too.
    np.testing.assert_array_equal(
        upsample_window(labels, (777, 555), 13, 101, 50, 70), nearest(labels, 777, 555)[101:171, 13:63]
    )


def test_downsample_places_a_padded_label_map_without_stretching(tmp_path):
    lab = np.arange(100, dtype=np.uint8).reshape(10, 10) % 3
    path = tmp_path / "padded.tif"
    # The map's 10 x 8 px cover 80 px; the output is 75 x 61 (a grid padded to whole label pixels).
    write_mask(path, lab, (75, 61), COLORS, mpp=None, tile=16, downsample=8)
    with tifffile.TiffFile(path) as tif:
        level0 = tif.pages[0].asarray()
        np.testing.assert_array_equal(level0, np.repeat(np.repeat(lab, 8, 0), 8, 1)[:61, :75])
        level1 = tif.pages[1].asarray()  # 38 x 31: each label pixel is 8 * 38 / 75 px wide there
        cols = np.floor(np.arange(38) / (8 * 38 / 75)).astype(int)
        rows = np.floor(np.arange(31) / (8 * 31 / 61)).astype(int)
        np.testing.assert_array_equal(level1, lab[np.ix_(rows, cols)])


def test_zstd_option_and_larger_label_map_than_output(tmp_path):
    lab = (np.arange(400 * 300).reshape(300, 400) % 3).astype(np.uint8)
    path = tmp_path / "small.tif"
    write_mask(path, lab, (200, 150), COLORS, mpp=1.0, tile=64, compression="zstd", compression_level=None)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ZSTD
        np.testing.assert_array_equal(tif.pages[0].asarray(), lab[::2, ::2])


def test_rejects_bad_input_and_leaves_no_file(tmp_path, labels):
    path = tmp_path / "mask.tif"
    with pytest.raises(ValueError, match="uint8"):
        write_mask(path, labels.astype(np.int32), (100, 100), COLORS, mpp=0.5)
    with pytest.raises(ValueError, match="class names"):
        write_mask(path, labels, (100, 100), COLORS, mpp=0.5, classes=["a"])

    def boom(n):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_mask(path, labels, (600, 600), COLORS, mpp=0.5, tile=128, progress=boom)
    assert list(tmp_path.iterdir()) == []
