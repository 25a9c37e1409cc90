"""A damaged stored tile is an error with its position, in every reader, never silently wrong pixels.

Fixtures are copies of the Aperio test slide and of a synthetic JPEG pyramid with one tile's bytes zeroed,
its byte count cut, or its data running past the end of the file (tests/_damaged.py); each is checked to be
what OpenSlide itself refuses.
"""

import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from _damaged import HOWS, damage_tile

from segcls.core.errors import DamagedTileError, SlideError
from segcls.runtime.slide import OpenSlideSlide, TiffSlide, open_slide
from segcls.runtime.slide.damage import read_around_damage
from segcls.synth.slide import make_slide

CMU = Path(__file__).parent / "data" / "cmu-1-small-region.svs"
READERS = {
    "tifffile": OpenSlideSlide,  # OpenSlide's metadata, tiles decoded directly (tifffile + strict libjpeg)
    "openslide": lambda path: OpenSlideSlide(path, direct=False),
    "tiffslide": TiffSlide,
}
# What libjpeg says, through OpenSlide and through segcls's strict decoder alike.
LIBJPEG = {"zeroed": "Corrupt JPEG data: premature end of data segment", "truncated": "Premature end of JPEG file"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A 1024 x 768 JPEG pyramid of 256 px tiles (levels 1024 x 768, 512 x 384, 256 x 192)."""
    path = tmp_path_factory.mktemp("synth") / "synth.tif"
    make_slide(path, 1024, 768, mpp=0.5, seed=4, tile=256, workers=1, progress=False)
    return path


def _open(reader: str, path: Path):
    slide = READERS[reader](path)
    if reader != "tiffslide":
        assert slide.decoder == reader, "the fixture must exercise the reader it names"
    return slide


def _openslide_refuses(path: Path, box: tuple[int, int, int, int], level: int) -> str:
    """OpenSlide's own error for the damaged tile (at open, where it hashes the tile, or at read)."""
    with pytest.raises(openslide.OpenSlideError) as e, openslide.OpenSlide(str(path)) as osr:
        ds = osr.level_downsamples[level]
        osr.read_region(box[:2], level, (max(1, int(box[2] / ds)), max(1, int(box[3] / ds))))
    return str(e.value)


def _assert_damaged(slide, box, level, how, said: str) -> None:
    x, y, w, h = box
    ds = slide.level_downsamples[level]
    inside = ((x + w // 2, y + h // 2), (16, 16))  # a small region in the tile
    across = ((max(0, x - 50), max(0, y - 50)), (int(w / ds) + 100, int(h / ds) + 100))  # the tile and around it
    for location, size in (inside, across):
        with pytest.raises(DamagedTileError) as e:
            slide.read_region(location, level, size)
        error = e.value
        assert (error.level, error.box, error.path) == (level, box, str(slide.path))
        assert isinstance(error, SlideError) and "\n" not in str(error)
        assert str(slide.path) in str(error) and f"x={x}, y={y}" in str(error)
        if how in LIBJPEG:
            assert error.reason == LIBJPEG[how] == said
        else:
            assert "past the end of the file" in error.reason or error.reason == said


def _elsewhere(box, dims, level_ds) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Regions (level-0 location, level size) that stay clear of `box`."""
    x, y, w, h = box
    w0 = dims[0]
    regions = []
    if x >= 200:
        regions.append(((0, y), (int((x - 1) / level_ds), int(h / level_ds))))
    if x + w + 200 <= w0:
        regions.append(((x + w + 1, y), (int(150 / level_ds) + 1, int(h / level_ds))))
    if y >= 200:
        regions.append(((x, 0), (int(w / level_ds), int((y - 1) / level_ds))))
    return regions


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("reader", READERS)
def test_aperio_slide_with_a_damaged_tile(tmp_path, reader, how):
    path = tmp_path / f"cmu_{how}.svs"
    box = damage_tile(CMU, path, tile=(4, 6), how=how)
    said = _openslide_refuses(path, box, 0)
    if how == "past-eof" and reader != "tiffslide":
        # OpenSlide hashes the tiles of the smallest level when it opens a slide: here level 0, so it
        # refuses the file whole ("Short read"), and so does the reader built on it.
        assert "Short read" in said
        with pytest.raises(SlideError, match="Short read") as e:
            READERS[reader](path)
        assert str(path) in str(e.value)
        return
    with _open(reader, path) as slide, _open(reader, CMU) as clean:
        _assert_damaged(slide, box, 0, how, said)
        regions = _elsewhere(box, slide.dimensions, 1.0)
        assert len(regions) == 3
        for location, size in regions:
            assert np.array_equal(slide.read_region(location, 0, size), clean.read_region(location, 0, size))


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("reader", READERS)
def test_synthetic_pyramid_with_a_damaged_tile_at_a_reduced_level(tmp_path, synth, reader, how):
    path = tmp_path / f"synth_{how}.tif"
    # level 1 is 512 x 384, tiles of 256 in 2 x 2: (1, 0) is under the centre, where the direct decoder probes
    box = damage_tile(synth, path, level=1, tile=(1, 0), how=how)
    assert box == (512, 0, 512, 512)
    said = _openslide_refuses(path, box, 1)
    with _open(reader, path) as slide, _open(reader, synth) as clean:
        _assert_damaged(slide, box, 1, how, said)
        # level 0 keeps its own tiles: the same area reads there, and so does the rest of level 1
        assert np.array_equal(slide.read_region(box[:2], 0, (300, 300)), clean.read_region(box[:2], 0, (300, 300)))
        for location, size in _elsewhere(box, slide.dimensions, 2.0):
            assert np.array_equal(slide.read_region(location, 1, size), clean.read_region(location, 1, size))


@pytest.mark.parametrize("path_of", ["cmu", "synth"])
def test_undamaged_slides_decode_exactly_as_tifffile_does(synth, path_of):
    """The strict decoder's pixels are tifffile + imagecodecs' own, byte for byte, on every level."""
    path = CMU if path_of == "cmu" else synth
    with TiffSlide(path) as slide, tifffile.TiffFile(path) as tif:
        assert set(slide.jpeg_checks) == {"decode"}  # checked at no extra cost
        for level, (w, h) in enumerate(slide.level_dimensions):
            expected = tif.series[0].levels[level].asarray()
            assert np.array_equal(slide.read_region((0, 0), level, (w, h)), expected)
    with OpenSlideSlide(path) as slide:
        assert slide.decoder == "tifffile"


@pytest.mark.parametrize("how", ["zeroed", "truncated"])
def test_jpeg_kinds_the_strict_decoder_does_not_decode_are_still_checked(tmp_path, how):
    """Separate colour planes (planar configuration 2): tifffile decodes, libjpeg checks the tile again.
    OpenSlide reads such a file through libtiff, whose JPEG codec only warns: here segcls is the stricter."""
    rgb = np.random.default_rng(0).integers(0, 256, (3, 512, 512), dtype=np.uint8)
    clean = tmp_path / "planar.tif"
    tifffile.imwrite(clean, rgb, photometric="rgb", planarconfig="separate", compression="jpeg", tile=(256, 256))
    path = tmp_path / f"planar_{how}.tif"
    box = damage_tile(clean, path, tile=(1, 1), how=how)
    assert box == (256, 256, 256, 256)
    with TiffSlide(path) as slide, TiffSlide(clean) as reference:
        assert slide.jpeg_checks == ("check",)
        assert np.array_equal(reference.read_region((0, 0), 0, (512, 512)), np.moveaxis(tifffile.imread(clean), 0, -1))
        with pytest.raises(DamagedTileError) as e:
            slide.read_region((300, 300), 0, (10, 10))
        assert e.value.box == box and ("extraneous bytes" in e.value.reason or "Premature end" in e.value.reason)
        assert np.array_equal(slide.read_region((0, 0), 0, (256, 512)), reference.read_region((0, 0), 0, (256, 512)))


@pytest.mark.parametrize("compression", ["zlib", "lzw", None])
@pytest.mark.parametrize("reader", READERS)
def test_other_codecs_name_a_cut_short_tile_too(tmp_path, compression, reader):
    """Deflate, LZW and uncompressed tiles whose byte count was cut: OpenSlide (libtiff) refuses them, and
    each reader names the tile."""
    ramp = (np.add.outer(np.arange(512), np.arange(512)) // 4 % 256).astype(np.uint8)
    clean = tmp_path / "clean.tif"
    tifffile.imwrite(clean, np.stack([ramp] * 3, -1), photometric="rgb", tile=(256, 256), compression=compression)
    path = tmp_path / "cut.tif"
    # the last tile in the file: libtiff reads an uncompressed tile's full size where the file has it
    box = damage_tile(clean, path, tile=(1, 1), how="truncated")
    _openslide_refuses(path, box, 0)
    with _open(reader, path) as slide, _open(reader, clean) as reference:
        with pytest.raises(DamagedTileError) as e:
            slide.read_region((300, 300), 0, (20, 20))
        assert (e.value.box, e.value.level) == ((256, 256, 256, 256), 0)
        assert np.array_equal(slide.read_region((0, 0), 0, (256, 512)), reference.read_region((0, 0), 0, (256, 512)))


def test_openslide_reads_on_after_a_damaged_tile_even_in_parallel(tmp_path):
    """OpenSlide's errors are sticky (a failed handle fails every later read): reads of sound regions that
    share the handle with a damaged read, before or at the same time, still get their pixels."""
    path = tmp_path / "bad.svs"
    box = damage_tile(CMU, path, tile=(4, 6))
    regions = [((x, y), 0, (200, 200)) for y in range(0, 2000, 500) for x in range(0, 2000, 500)]
    regions = [
        r for r in regions if not (box[0] - 200 < r[0][0] < box[0] + 240 and box[1] - 200 < r[0][1] < box[1] + 240)
    ]
    assert len(regions) == 15
    with OpenSlideSlide(path, direct=False) as slide, OpenSlideSlide(CMU, direct=False) as clean:
        expected = [clean.read_region(*r) for r in regions]

        def read(i: int):
            if i % 3 == 0:
                with pytest.raises(DamagedTileError) as e:
                    slide.read_region((box[0] + 10, box[1] + 10), 0, (50, 50))
                return e.value.box
            return slide.read_region(*regions[i % len(regions)])

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(read, range(48)))
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert result == box
        else:
            assert np.array_equal(result, expected[i % len(regions)])


def test_open_slide_names_a_damaged_corner_tile(tmp_path):
    """open_slide reads the first and last pixel: a damaged tile there stops it with the tile's position."""
    path = tmp_path / "corner.svs"
    box = damage_tile(CMU, path, tile=(0, 0))
    with pytest.raises(DamagedTileError) as e:
        open_slide(path)
    assert e.value.box == box == (0, 0, 240, 240) and e.value.level == 0


@pytest.mark.parametrize("reader", READERS)
def test_read_around_damage_gives_white_for_each_damaged_tile_and_the_pixels_elsewhere(tmp_path, reader):
    """For --skip-damaged: two damaged tiles in one region read white, everything else as read_region gives."""
    once = tmp_path / "once.svs"
    path = tmp_path / "twice.svs"
    first = damage_tile(CMU, once, tile=(4, 6), how="zeroed")
    second = damage_tile(once, path, tile=(5, 7), how="truncated")
    location, size = (900, 1400), (500, 600)
    with _open(reader, path) as slide, _open(reader, CMU) as clean:
        pixels, errors = read_around_damage(slide, location, 0, size)
        expected = clean.read_region(location, 0, size).copy()
        for x, y, w, h in (first, second):
            expected[y - location[1] : y - location[1] + h, x - location[0] : x - location[0] + w] = 255
        assert np.array_equal(pixels, expected)
        assert sorted(e.box for e in errors) == [first, second]
        assert {e.reason for e in errors} == set(LIBJPEG.values())
        sound = ((0, 0), 0, (300, 200))
        assert np.array_equal(read_around_damage(slide, *sound)[0], clean.read_region(*sound))
        assert read_around_damage(slide, *sound)[1] == []


def test_read_around_damage_at_a_reduced_level_and_in_thumbnails(tmp_path, synth):
    path = tmp_path / "bad.tif"
    box = damage_tile(synth, path, level=2, tile=(0, 0), how="zeroed")  # level 2: 256 x 192, one tile
    assert box == (0, 0, 1024, 768)
    with OpenSlideSlide(path) as slide, OpenSlideSlide(synth) as clean:
        assert slide.decoder == "openslide"  # level 2's only tile is damaged: nothing left to probe it with
        damaged = damage_tile(synth, tmp_path / "bad1.tif", level=1, tile=(1, 1), how="zeroed")
        with OpenSlideSlide(tmp_path / "bad1.tif") as one:
            pixels, errors = read_around_damage(one, (400, 400), 1, (200, 150))
            assert [(e.level, e.box, e.level_box) for e in errors] == [(1, damaged, (256, 256, 256, 128))]
            expected = clean.read_region((400, 400), 1, (200, 150)).copy()
            expected[256 - 200 :, 256 - 200 :] = 255  # level-1 pixels from (256, 256) on
            assert np.array_equal(pixels, expected)
        with pytest.raises(DamagedTileError):
            slide.get_thumbnail((100, 100))
        met: list = []
        thumb = slide.get_thumbnail((100, 100), on_damaged=met.append)
        assert [e.box for e in met] == [box] and thumb.shape == clean.get_thumbnail((100, 100)).shape
        assert (thumb == 255).all()


def test_damaged_tile_error_survives_pickling():
    """Ray and process pools carry the exception across processes: it keeps its fields and message."""
    error = DamagedTileError("/data/s.svs", 1, (512, 0, 512, 512), "Premature end of JPEG file", (256, 0, 256, 256))
    back = pickle.loads(pickle.dumps(error))
    fields = ("path", "level", "box", "reason", "level_box")
    assert [getattr(back, f) for f in fields] + [str(back)] == [getattr(error, f) for f in fields] + [str(error)]
    assert str(error) == (
        "damaged tile in /data/s.svs: level 1 tile at x=512, y=0 (512 x 512 px, level-0 pixels): "
        "Premature end of JPEG file"
    )
