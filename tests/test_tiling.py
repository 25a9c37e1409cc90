"""Tile geometry (every map pixel owned by exactly one tile) and reading at the right resolution."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segcls.core.errors import SegclsError, SlideError
from segcls.runtime.tiling import ReadPlan, TileGrid, plan_read, read_tile, tissue_in_box


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 3000),
    height=st.integers(1, 3000),
    tile16=st.integers(2, 64),
    overlap16=st.integers(0, 31),
)
def test_crop_cores_cover_every_map_pixel_exactly_once(width, height, tile16, overlap16):
    tile, overlap = 16 * tile16, 16 * overlap16
    if tile - 2 * overlap < 16:
        with pytest.raises(SegclsError, match="--overlap"):
            TileGrid((width, height), tile, overlap)
        return
    grid = TileGrid((width, height), tile, overlap)
    count = np.zeros(grid.map_shape, dtype=np.int32)
    out = tile // 8
    for t in grid:
        x0, y0, x1, y1 = grid.core(t)
        assert x1 > x0 and y1 > y0  # no tile is run for nothing
        ox, oy = grid.origin(t)
        # the core lies inside the tile's output, with `overlap` px of context on each side
        assert ox + overlap // 8 == x0 and oy + overlap // 8 == y0
        assert x1 <= ox + out - overlap // 8 and y1 <= oy + out - overlap // 8
        assert t.x % 16 == 0 and t.y % 16 == 0  # same convolution grid as whole-image inference
        count[y0:y1, x0:x1] += 1
    assert (count == 1).all()
    assert len(grid) == sum(1 for _ in grid)


def test_grid_validation_messages():
    with pytest.raises(SegclsError, match="--tile must be a positive multiple of 16, got 100"):
        TileGrid((100, 100), 100, 0)
    with pytest.raises(SegclsError, match="--overlap must be a multiple of 16 >= 0, got 20"):
        TileGrid((100, 100), 256, 20)


class PyramidSlide:
    """Levels 0, 1, 2 at downsamples 1, 2, 4 of a horizontal ramp (pixel value = level-0 x // 4 % 256)."""

    def __init__(self, mpp: float | None = 0.25) -> None:
        self.mpp = mpp
        self.dimensions = (1024, 512)
        self.level_dimensions = ((1024, 512), (512, 256), (256, 128))
        self.level_downsamples = (1.0, 2.0, 4.0)
        self.level_count = 3
        self.calls = []

    def read_region(self, location, level, size):
        self.calls.append((location, level, size))
        ds = self.level_downsamples[level]
        lx = location[0] // ds
        xs = (np.arange(size[0]) + lx) * ds  # level-0 x of each pixel
        row = np.where((xs >= 0) & (xs < 1024), (xs // 4) % 256, 255).astype(np.uint8)
        return np.repeat(np.repeat(row[None, :, None], size[1], 0), 3, 2)


@pytest.mark.parametrize(
    ("target", "level", "scale", "size"),
    [
        (0.25, 0, 1.0, (1024, 512)),  # level 0 as is
        (0.5, 1, 2.0, (512, 256)),  # exactly level 1
        (0.505, 1, 2.0, (512, 256)),  # within 2 %: level 1 as is, no resampling
        (0.75, 1, 3.0, (342, 171)),  # between levels: read the finer one and resample
        (2.0, 2, 8.0, (128, 64)),  # coarser than the pyramid: resample the coarsest level
    ],
)
def test_plan_read_picks_the_coarsest_level_at_least_as_fine(target, level, scale, size):
    plan = plan_read(PyramidSlide(), target)
    assert (plan.level, plan.size) == (level, size)
    assert plan.scale == pytest.approx(scale)
    assert plan.mpp == pytest.approx(0.25 * scale)
    assert plan.resample == (scale not in (1.0, 2.0, 4.0))


def test_plan_read_without_slide_mpp():
    with pytest.raises(SlideError, match=r"--slide-mpp.*--level"):
        plan_read(PyramidSlide(mpp=None), 0.5)
    plan = plan_read(PyramidSlide(mpp=None), None, level=2)
    assert (plan.level, plan.scale, plan.size, plan.mpp, plan.resample) == (2, 4.0, (256, 128), None, False)
    with pytest.raises(SlideError, match="--level 3 is out of range"):
        plan_read(PyramidSlide(), None, level=3)


def test_read_tile_at_a_level_and_resampled():
    slide = PyramidSlide()
    exact = read_tile(slide, plan_read(slide, 0.5), 32, 0, 64)  # level 1, read frame = level 1
    assert exact.shape == (64, 64, 3)
    # read-frame x = 32 -> level-0 x = 64 -> value 16, +2 level-0 px per read px
    assert exact[0, 0, 0] == 16 and exact[0, 2, 0] == 17
    resampled = read_tile(slide, plan_read(slide, 1.0), 16, 0, 32)  # scale 4 from level 2: same as level 2
    assert resampled[0, :8, 0].tolist() == pytest.approx([16, 17, 18, 19, 20, 21, 22, 23], abs=1)
    between = read_tile(slide, plan_read(slide, 0.75), 0, 0, 64)  # scale 3: value 3x/4
    x = np.arange(8, 56)
    assert np.abs(between[0, 8:56, 0].astype(float) - 3 * (x + 0.5) / 4).max() <= 1.0
    edge = read_tile(slide, plan_read(slide, 0.5), 500, 0, 64)  # beyond the slide's right edge: white
    assert (edge[:, 12:] == 255).all()


def test_tissue_in_box_samples_pixel_centres():
    grid = TileGrid((800, 800), 256, 64)
    plan = ReadPlan(level=0, scale=2.0, level_downsample=1.0, size=(800, 800), mpp=0.5)
    mask = np.zeros((100, 100), bool)  # 32 level-0 px per mask px; a label px is 16 level-0 px
    mask[10, 20] = True  # level-0 x 640..672, y 320..352 -> map x 40..41, y 20..21
    got = tissue_in_box((30, 15, 50, 25), grid, plan, mask, 32.0)
    expected = np.zeros((10, 20), bool)
    expected[20 - 15 : 22 - 15, 40 - 30 : 42 - 30] = True
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 2000),
    height=st.integers(1, 2000),
    tile16=st.integers(2, 40),
    overlap16=st.integers(0, 19),
    data=st.data(),
)
def test_a_trimmed_tile_keeps_overlap_context_for_its_box_and_no_more(width, height, tile16, overlap16, data):
    tile, overlap = 16 * tile16, 16 * overlap16
    if tile - 2 * overlap < 16:
        return
    grid = TileGrid((width, height), tile, overlap)
    t = data.draw(st.sampled_from(list(grid)))
    x0, y0, x1, y1 = grid.core(t)
    bx0 = data.draw(st.integers(x0, x1 - 1))
    bx1 = data.draw(st.integers(bx0 + 1, x1))
    by0 = data.draw(st.integers(y0, y1 - 1))
    by1 = data.draw(st.integers(by0 + 1, y1))
    w = grid.trim(t, (bx0, by0, bx1, by1))
    assert (w.row, w.col) == (t.row, t.col)
    assert w.x % 16 == w.y % 16 == w.width % 16 == w.height % 16 == 0  # whole-image convolution grid
    assert t.x <= w.x and w.x + w.width <= t.x + tile and t.y <= w.y and w.y + w.height <= t.y + tile
    # every box pixel has `overlap` px of context on each side, and at most one 16 px step more
    assert w.x <= 8 * bx0 - overlap and w.x + w.width >= 8 * bx1 + overlap
    assert w.y <= 8 * by0 - overlap and w.y + w.height >= 8 * by1 + overlap
    assert w.width < 8 * (bx1 - bx0) + 2 * overlap + 32 and w.height < 8 * (by1 - by0) + 2 * overlap + 32
    assert grid.origin(w) == (w.x // 8, w.y // 8)


def test_trimming_a_whole_core_keeps_interior_tiles_and_cuts_the_far_edge():
    grid = TileGrid((2000, 1000), 256, 32)  # step 192: the last column's core is 80 px, the last row's 40
    tiles = list(grid)
    assert all((t.width, t.height) == (256, 256) for t in tiles)
    trimmed = {(t.row, t.col): grid.trim(t) for t in tiles}
    assert trimmed[(0, 0)] == tiles[0]  # a whole core needs the whole tile
    rows, cols = grid.shape
    last = trimmed[(rows - 1, cols - 1)]
    assert (last.x, last.y) == (tiles[-1].x, tiles[-1].y)
    assert (last.width, last.height) == (80 + 64, 48 + 64)  # core + context, rounded up to 16
