"""segcls-view's tiles: the Deep Zoom grid and slide pixels against openslide's DeepZoomGenerator, mask tiles
aligned with the slide at every level (a mask coarser than the slide, slide levels 1/3 and 1/9), labels read as
indices, the PNG toggles, the tile cache."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from _view_fixtures import CLASSES, COLORS, REGIONS, SIZE, label_at, mask_size, write_slide, write_test_mask
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from segcls.core.errors import SlideError
from segcls.runtime.slide import TiffSlide, open_slide
from segcls.runtime.view.cache import TileCache
from segcls.runtime.view.masks import LabelMask, centres
from segcls.runtime.view.tiles import (
    DeepZoomGrid,
    MaskTiles,
    SlideTiles,
    TileNotFound,
    encode_labels,
    parse_hidden,
)

CMU = Path(__file__).parent / "data" / "cmu-1-small-region.svs"


@pytest.fixture(scope="module")
def known(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("known")
    return write_slide(folder / "known.tif"), write_test_mask(folder / "known.mask.tif")


def _some_tiles(level_tiles: tuple[int, int]) -> set[tuple[int, int]]:
    cols, rows = level_tiles
    return {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2), (cols - 1, 0)}


@pytest.mark.parametrize("which", ["cmu", "known"])
def test_grid_and_pixels_are_deepzoomgenerators(which, known):
    """The Aperio slide (one level) and a slide with levels 1, 1/3, 1/9: same grid, same pixels, every level."""
    path = CMU if which == "cmu" else known[0]
    reference = DeepZoomGenerator(openslide.OpenSlide(str(path)), tile_size=254, overlap=1)
    with open_slide(path) as slide:
        tiles = SlideTiles(slide)
        assert tiles.grid.level_count == reference.level_count
        assert tiles.grid.level_tiles == reference.level_tiles
        assert tiles.grid.dzi("jpeg") == reference.get_dzi("jpeg")
        for level in range(reference.level_count):
            for col, row in _some_tiles(reference.level_tiles[level]):
                ours = np.asarray(tiles.tile(level, col, row))
                theirs = np.asarray(reference.get_tile(level, (col, row)))
                assert ours.shape == theirs.shape, (level, col, row)
                assert np.array_equal(ours, theirs), (level, col, row)


def test_levels_that_are_not_powers_of_two_are_read_from_the_best_level(known):
    with open_slide(known[0]) as slide:
        assert [round(d) for d in slide.level_downsamples] == [1, 3, 9]
        grid = DeepZoomGrid(slide)
        top = grid.level_count - 1
        # Deep Zoom downsample 1, 2 -> level 0; 4 -> level 1 (x3); 16 -> level 2 (x9)
        assert [grid.read_args(top - k, 0, 0)[1] for k in (0, 1, 2, 4)] == [0, 0, 1, 2]


def test_tile_addresses_outside_the_pyramid_are_refused(known):
    with open_slide(known[0]) as slide:
        grid = DeepZoomGrid(slide)
        cols, _ = grid.level_tiles[-1]
        for level, col, row in [(grid.level_count, 0, 0), (-1, 0, 0), (grid.level_count - 1, cols, 0), (3, 0, 1)]:
            with pytest.raises(TileNotFound):
                grid.tile_box(level, col, row)


def test_mask_tiles_line_up_with_the_slide_at_every_level(known):
    """A 882 x 588 mask of a 3000 x 2000 slide (3.4 slide px a mask px): each display pixel holds the true class
    of its centre, except within one mask pixel (at the level read) of a region's edge."""
    slide_path, mask_path = known
    with open_slide(slide_path) as slide, LabelMask(mask_path) as mask:
        assert mask.dimensions == mask_size()
        tiles = MaskTiles(mask, DeepZoomGrid(slide), slide.mpp, slide_path.name)
        grid = tiles.grid
        checked = 0
        for level in range(grid.level_count):
            ds = grid.downsample(level)
            band = max(ds, SIZE[0] / mask.dimensions[0]) + 1  # one mask pixel at the level read, in slide px
            for col, row in _some_tiles(grid.level_tiles[level]):
                x, y, w, h = grid.tile_box(level, col, row)
                xs, ys = centres(x, w, ds), centres(y, h, ds)
                got = tiles.labels(level, col, row)
                assert got.shape == (h, w)
                expected = label_at(xs, ys)
                edges = np.zeros((h, w), bool)
                for x0, y0, x1, y1 in REGIONS.values():
                    near_x = np.minimum(abs(xs - x0), abs(xs - x1)) < band
                    near_y = np.minimum(abs(ys - y0), abs(ys - y1)) < band
                    edges |= near_x[None, :] | near_y[:, None]
                assert np.array_equal(got[~edges], expected[~edges]), (level, col, row)
                checked += int((~edges).sum())
        assert checked > 500_000


def test_class_under_a_point(known):
    slide_path, mask_path = known
    with open_slide(slide_path) as slide, LabelMask(mask_path) as mask:
        tiles = MaskTiles(mask, DeepZoomGrid(slide), slide.mpp, slide_path.name)
        for k, (x0, y0, x1, y1) in REGIONS.items():
            assert tiles.class_at((x0 + x1) / 2, (y0 + y1) / 2) == k
        assert tiles.class_at(100, 100) is None  # unlabelled
        assert tiles.class_at(-1, 5) is None
        assert tiles.class_at(SIZE[0], 5) is None


def test_mask_classes_and_areas_come_from_the_mask(known):
    with LabelMask(known[1]) as mask:
        assert mask.classes.names == CLASSES
        assert mask.classes.colors == COLORS
        areas = mask.areas_mm2()
    for k, (x0, y0, x1, y1) in REGIONS.items():
        true = (x1 - x0) * (y1 - y0) * (0.5 / 1000) ** 2
        assert areas[CLASSES[k]] == pytest.approx(true, rel=0.02)


def test_a_mask_that_does_not_cover_the_slide_is_refused(known, tmp_path):
    wide = write_test_mask(tmp_path / "wide.mask.tif", size=(3000, 1000))
    small = write_test_mask(tmp_path / "small.mask.tif", size=(1500, 1000))  # same shape, half the µm
    with open_slide(known[0]) as slide, LabelMask(wide) as mask, pytest.raises(SlideError, match=r"does not cover"):
        MaskTiles(mask, DeepZoomGrid(slide), slide.mpp, "known.tif")
    with open_slide(known[0]) as slide, LabelMask(small) as mask:
        with pytest.raises(SlideError, match=r"is 750 um wide \(441 px at 1.7 um/px\) but slide known.tif is 1500 um"):
            MaskTiles(mask, DeepZoomGrid(slide), slide.mpp, "known.tif")
        MaskTiles(mask, DeepZoomGrid(slide), None, "known.tif")  # without the slide's µm/px: only the shape


def test_an_rgb_image_is_not_a_mask(known):
    with pytest.raises(SlideError, match="expected a segcls label mask"):
        LabelMask(known[0])
    with pytest.raises(SlideError, match="mask not found"):
        LabelMask(known[0].with_name("nope.tif"))


def test_read_samples_gives_indices_not_colours(known):
    with TiffSlide(known[1]) as tiff:
        mw, mh = tiff.dimensions
        samples = tiff.read_samples(0, 0, 0, mw, mh)[..., 0]
        assert set(np.unique(samples)) == {0, 1, 2, 255}
        assert np.array_equal(tiff.read_region((0, 0), 0, (mw, mh)), _palette_rgb(samples))
        with pytest.raises(SlideError, match="outside level 0"):
            tiff.read_samples(0, mw - 5, 0, 10, 10)


def _palette_rgb(labels: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    lut[255] = 255
    lut[: len(COLORS)] = COLORS
    return lut[labels]


def test_label_png_draws_class_colours_and_hides_classes(known):
    with LabelMask(known[1]) as mask:
        labels = np.array([[0, 1, 2, 255]], np.uint8)
        shown = np.asarray(Image.open(io.BytesIO(encode_labels(labels, mask.classes))).convert("RGBA"))
        assert [tuple(p) for p in shown[0]] == [(*COLORS[0], 255), (*COLORS[1], 255), (*COLORS[2], 255), (0, 0, 0, 0)]
        hidden = encode_labels(labels, mask.classes, frozenset({1}))
        alpha = np.asarray(Image.open(io.BytesIO(hidden)).convert("RGBA"))[0, :, 3]
        assert alpha.tolist() == [255, 0, 255, 0]


@pytest.mark.parametrize("text", ["a", "1;2", "1,,2", "-1", "1,2,", "1 2", "9999"])
def test_malformed_hide_parameters_are_refused(text):
    with pytest.raises(ValueError):
        parse_hidden(text, 3)


def test_hide_parameter():
    assert parse_hidden("", 3) == frozenset()
    assert parse_hidden("0,2", 3) == {0, 2}
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        parse_hidden("3", 3)


def test_cache_stays_under_its_byte_bound_and_drops_the_least_recently_used():
    cache = TileCache(250)
    for key in "abc":
        cache.get_or_make(key, lambda: b"x" * 100)
    assert cache.bytes <= 250 and len(cache) == 2
    made = []
    cache.get_or_make("b", lambda: made.append("b") or b"y" * 100)
    cache.get_or_make("a", lambda: made.append("a") or b"z" * 100)
    assert made == ["a"]  # b was kept, a had been dropped
    cache.get_or_make("big", lambda: b"x" * 1000)  # larger than the whole cache: returned, not kept
    assert cache.bytes <= 250


def test_cache_renders_a_tile_once_for_concurrent_requests():
    cache = TileCache(1 << 20)
    calls = []

    def slow() -> bytes:
        calls.append(1)
        time.sleep(0.2)
        return b"tile"

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_make("k", slow))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [b"tile"] * 6 and len(calls) == 1


def test_cache_passes_a_render_error_to_every_waiter_and_keeps_nothing():
    cache = TileCache(1 << 20)
    started = threading.Event()

    def failing() -> bytes:
        started.set()
        time.sleep(0.1)
        raise TileNotFound("no such tile")

    errors = []

    def ask() -> None:
        try:
            cache.get_or_make("k", failing)
        except TileNotFound as e:
            errors.append(str(e))

    first = threading.Thread(target=ask)
    first.start()
    started.wait()
    ask()
    first.join()
    assert errors == ["no such tile"] * 2 and len(cache) == 0


def test_mask_written_without_a_description_gets_colormap_colours(tmp_path):
    """A palette TIFF from elsewhere (no segcls JSON): classes named by index, coloured by its colormap."""
    labels = np.full((64, 64), 255, np.uint8)
    labels[:32] = 0
    labels[32:, :16] = 1
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 0] = (65535, 0, 0)
    cmap[:, 1] = (0, 65535, 0)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, labels, photometric="palette", colormap=cmap, tile=(16, 16), metadata=None)
    with LabelMask(path) as mask:
        assert mask.classes.names == ("class 0", "class 1")
        assert mask.classes.colors == ((255, 0, 0), (0, 255, 0))
