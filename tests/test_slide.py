import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from segcls.core.errors import SlideError
from segcls.runtime.slide import ImageSlide, OpenSlideSlide, TiffSlide, open_slide

CMU = Path(__file__).parent / "data" / "cmu-1-small-region.svs"


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)


def test_cmu_slide_opens_with_openslide():
    with open_slide(CMU) as slide:
        assert isinstance(slide, OpenSlideSlide)
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1 and slide.level_downsamples == (1.0,)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.properties["openslide.vendor"] == "aperio"
        region = slide.read_region((1000, 1500), 0, (300, 150))
        assert region.shape == (150, 300, 3) and region.dtype == np.uint8
        assert region.std() > 20  # stained tissue there, not a constant fill
        thumb = slide.get_thumbnail((256, 256))
        assert thumb.shape == (256, round(256 * 2220 / 2967), 3)


def test_cmu_out_of_bounds_is_white_and_mpp_override():
    with open_slide(CMU, mpp=0.25) as slide:
        assert slide.mpp == 0.25
        region = slide.read_region((2200, 2950), 0, (40, 30))
        assert region.shape == (30, 40, 3)
        assert (region[20:, :] == 255).all() and (region[:, 20:] == 255).all()
        assert (region[:17, :20] != 255).any()


def test_strip_tiff_without_pyramid_opens_with_tifffile(tmp_path, rgb):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", rowsperstrip=64, resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")  # fmt: skip
    with open_slide(path) as slide:
        assert isinstance(slide, TiffSlide)
        assert slide.dimensions == (500, 300) and slide.level_count == 1
        assert slide.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(slide.read_region((37, 70), 0, (200, 100)), rgb[70:170, 37:237])
        edge = slide.read_region((-5, 250), 0, (100, 80))
        assert (edge[:, :5] == 255).all() and (edge[50:] == 255).all()
        np.testing.assert_array_equal(edge[:50, 5:], rgb[250:300, :95])


def test_ome_tiff_pyramid_in_subifds_opens_with_tifffile(tmp_path, rgb):
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(rgb, photometric="rgb", tile=(128, 128), subifds=1, metadata={"PhysicalSizeX": 0.25})
        tif.write(rgb[::2, ::2], photometric="rgb", tile=(128, 128), subfiletype=1)
    with open_slide(path) as slide:
        assert isinstance(slide, TiffSlide)
        assert slide.level_dimensions == ((500, 300), (250, 150))
        assert slide.level_downsamples == (1.0, 2.0)
        assert slide.mpp == pytest.approx(0.25)
        assert slide.best_level_for_downsample(3.0) == 1 and slide.best_level_for_downsample(1.5) == 0
        np.testing.assert_array_equal(slide.read_region((100, 60), 1, (100, 80)), rgb[::2, ::2][30:110, 50:150])
        np.testing.assert_array_equal(slide.read_region((130, 10), 0, (250, 200)), rgb[10:210, 130:380])


def test_jpeg_ycbcr_tiles_and_16_bit_gray_decode_to_rgb(tmp_path):
    yy, xx = np.mgrid[0:300, 0:500]
    smooth = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    path = tmp_path / "jpeg.tif"
    with tifffile.TiffWriter(path) as tif:  # SubIFD pyramid: OpenSlide would see one level
        tif.write(smooth, photometric="rgb", tile=(128, 128), compression="jpeg", subifds=1)
        tif.write(smooth[::2, ::2], photometric="rgb", tile=(128, 128), compression="jpeg", subfiletype=1)
    with open_slide(path) as slide:
        assert isinstance(slide, TiffSlide) and slide.level_count == 2
        region = slide.read_region((50, 50), 0, (200, 100)).astype(int)
        assert np.abs(region - smooth[50:150, 50:250]).mean() < 3  # lossy, but the right pixels
    gray = (np.arange(300 * 500).reshape(300, 500) * 97 % 65536).astype(np.uint16)
    path = tmp_path / "gray16.ome.tif"
    tifffile.imwrite(path, gray, ome=True, metadata={"PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm"})
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.5)
        region = slide.read_region((7, 9), 0, (30, 20))
        np.testing.assert_array_equal(region, np.repeat((gray[9:29, 7:37] >> 8)[..., None], 3, -1))


def test_rgba_png_opens_with_pillow_composited_on_white(tmp_path):
    rgba = np.zeros((40, 60, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:20, :, 3] = 255  # top half opaque red, bottom transparent
    path = tmp_path / "image.png"
    Image.fromarray(rgba).save(path)
    with open_slide(path) as slide:
        assert isinstance(slide, ImageSlide)
        assert slide.dimensions == (60, 40) and slide.mpp is None
        region = slide.read_region((0, 0), 0, (60, 40))
        assert (region[:20] == (200, 0, 0)).all() and (region[20:] == 255).all()


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "random", "truncated", "truncated_tiff", "png"])
def test_bad_inputs_raise_slide_error_naming_the_file(tmp_path, kind, rgb):
    path = tmp_path / f"bad_{kind}.svs"
    if kind == "directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("not a slide\n")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(200_000))
    elif kind == "truncated":
        path.write_bytes(CMU.read_bytes()[:1_000_000])
    elif kind == "truncated_tiff":
        # IFDs first, tile data after: the header survives and only reading pixels can notice.
        full = tmp_path / "full.tif"
        with tifffile.TiffWriter(full) as tif:
            tif.write(rgb, photometric="rgb", tile=(128, 128), compression="zlib")
        path = tmp_path / "bad_truncated.tif"
        path.write_bytes(full.read_bytes()[: os.path.getsize(full) * 2 // 3])
    elif kind == "png":
        full = tmp_path / "full.png"
        Image.fromarray(rgb).save(full)
        path = tmp_path / "bad.png"
        path.write_bytes(full.read_bytes()[:5000])
    with pytest.raises(SlideError) as e:
        open_slide(path)
    assert path.name in str(e.value) and "\n" not in str(e.value)


def test_corrupt_tiles_fail_at_read_time_as_slide_error(tmp_path):
    data = bytearray(CMU.read_bytes())
    data[600_000:700_000] = np.random.default_rng(2).bytes(100_000)  # inside level 0's JPEG tiles
    path = tmp_path / "corrupt.svs"
    path.write_bytes(bytes(data))
    with pytest.raises(SlideError, match=r"corrupt\.svs"), open_slide(path) as slide:
        for y in range(0, slide.dimensions[1], 1024):
            slide.read_region((0, y), 0, (slide.dimensions[0], 1024))


def test_read_region_rejects_bad_level_and_size():
    with open_slide(CMU) as slide:
        with pytest.raises(SlideError, match="level"):
            slide.read_region((0, 0), 1, (10, 10))
        with pytest.raises(SlideError):
            slide.read_region((0, 0), 0, (0, 10))


def test_direct_decode_gives_openslides_pixels():
    """Tiled TIFF slides are decoded by tifffile (faster) only where the pixels are OpenSlide's own."""
    with open_slide(CMU) as fast, OpenSlideSlide(CMU, direct=False) as reference:
        assert fast.decoder == "tifffile" and reference.decoder == "openslide"
        for location, size in (((0, 0), (512, 512)), ((1001, 1499), (333, 257)), ((2000, 2800), (400, 300))):
            assert np.array_equal(fast.read_region(location, 0, size), reference.read_region(location, 0, size))
        assert fast.properties == reference.properties and fast.mpp == reference.mpp


def test_direct_decode_falls_back_to_openslide_when_pixels_differ(monkeypatch):
    import segcls.runtime.slide as slide_module

    real = slide_module.TiffSlide.read_region
    monkeypatch.setattr(slide_module.TiffSlide, "read_region", lambda self, *a: real(self, *a) // 2)
    with open_slide(CMU) as slide:
        assert slide.decoder == "openslide"
        assert slide.read_region((1000, 1500), 0, (64, 64)).max() > 128


def test_overlapping_reads_decode_each_stored_tile_once(tmp_path, rgb, monkeypatch):
    """Tiles with context overlap: a stored tile is decoded once and reused, with the same pixels."""
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(64, 64), compression="zlib")
    from segcls.runtime.slide import tiff_reader

    decoded = []  # every decode ends in a put: (page, segment index)
    real = tiff_reader._DecodedTiles.put

    def counting(self, key, value, nbytes):
        decoded.append(key)
        return real(self, key, value, nbytes)

    monkeypatch.setattr(tiff_reader._DecodedTiles, "put", counting)
    with TiffSlide(path) as slide:
        regions = [((x, y), (160, 128)) for y in (0, 96, 192) for x in (0, 112, 224, 336)]  # 48 px of overlap
        for location, size in regions:
            (x, y), (w, h) = location, size
            expected = np.full((h, w, 3), 255, dtype=np.uint8)
            part = rgb[y : y + h, x : x + w]
            expected[: part.shape[0], : part.shape[1]] = part
            np.testing.assert_array_equal(slide.read_region(location, 0, size), expected)
    assert sorted(decoded) == sorted(set(decoded))  # no stored tile decoded twice
    assert len(decoded) == 5 * 8  # every tile of the 300 x 500 image, once


def test_decoded_tiles_stay_within_their_bytes():
    from segcls.runtime.slide.tiff_reader import _DecodedTiles

    cache = _DecodedTiles(max_bytes=100)
    for key in range(10):
        cache.put(key, f"tile {key}", 30)
        assert cache.bytes <= 100
    assert cache.get(0) is None and cache.get(9) == "tile 9"  # the oldest went first
    cache.get(7)  # used again: kept over 8
    cache.put(10, "tile 10", 30)
    assert cache.get(7) == "tile 7" and cache.get(8) is None
    cache.put(11, "too big", 101)
    assert cache.get(11) is None and cache.bytes <= 100
