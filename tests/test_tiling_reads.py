"""Resampled tile reads at any origin: both axes, fractional level coordinates (runtime/tiling.py)."""

import numpy as np
import pytest

from segcls.core.errors import SlideError
from segcls.runtime.tiling import plan_read, read_tile


class RampSlide:
    """Levels 0, 1, 2 at downsamples 1, 2, 4; red = level-0 x // 4, green = level-0 y // 4 (both % 256)."""

    mpp = 0.25
    dimensions = (1024, 1024)
    level_dimensions = ((1024, 1024), (512, 512), (256, 256))
    level_downsamples = (1.0, 2.0, 4.0)
    level_count = 3

    def read_region(self, location, level, size):
        ds = self.level_downsamples[level]
        xs = location[0] + np.arange(size[0]) * ds  # level-0 coordinates of each pixel
        ys = location[1] + np.arange(size[1]) * ds
        out = np.full((size[1], size[0], 3), 255, np.uint8)
        inside = (ys[:, None] < 1024) & (xs[None, :] < 1024)
        out[..., 0] = np.where(inside, (xs[None, :] // 4) % 256, 255)
        out[..., 1] = np.where(inside, (ys[:, None] // 4) % 256, 255)
        return out


@pytest.mark.parametrize(("x", "y"), [(16, 0), (0, 16), (40, 72)])
def test_resampled_read_follows_the_slide_in_both_axes(x, y):
    """Scale 3 (between levels 1 and 2): read-frame pixel (i, j) of a tile at (x, y) shows level-0
    ((x + j + 0.5) * 3, (y + i + 0.5) * 3), so red = 3 (x + j + 0.5) / 4 and green = 3 (y + i + 0.5) / 4."""
    slide = RampSlide()
    plan = plan_read(slide, 0.75)
    assert plan.resample and plan.level == 1
    tile = read_tile(slide, plan, x, y, 64)
    j = np.arange(8, 56)  # away from the tile's edges, where the bilinear filter reaches past the region
    red = 3 * (x + j + 0.5) / 4
    green = 3 * (y + j + 0.5) / 4
    assert np.abs(tile[32, 8:56, 0].astype(float) - red).max() <= 1.0
    assert np.abs(tile[8:56, 32, 1].astype(float) - green).max() <= 1.0


@pytest.mark.parametrize("mpp", [0, -0.5, None])
def test_no_valid_target_resolution_is_an_error(mpp):
    with pytest.raises(SlideError, match="no valid target resolution"):
        plan_read(RampSlide(), mpp)


def test_read_a_level_as_is():
    slide = RampSlide()
    plan = plan_read(slide, None, level=0)
    assert (plan.level, plan.scale, plan.mpp, plan.resample) == (0, 1.0, 0.25, False)
    plan = plan_read(slide, None, level=2)
    assert (plan.scale, plan.size, plan.resample) == (4.0, (256, 256), False)
    assert plan.mpp == pytest.approx(1.0)  # 0.25 um per level-0 px x 4
    tile = read_tile(slide, plan, 8, 16, 32)  # level-2 px (8, 16) = level-0 (32, 64)
    assert (tile[0, 0, 0], tile[0, 0, 1]) == (8, 16) and (tile[1, 1, 0], tile[1, 1, 1]) == (9, 17)
    for level in (3, -1):
        with pytest.raises(SlideError, match=f"--level {level} is out of range: the slide has levels 0..2$"):
            plan_read(slide, None, level=level)


def test_a_resolution_within_2_percent_of_a_level_reads_it_as_is():
    plan = plan_read(RampSlide(), 0.25 * 1.015)
    assert (plan.level, plan.scale, plan.resample) == (0, 1.0, False)
    plan = plan_read(RampSlide(), 0.25 * 1.03)
    assert plan.level == 0 and plan.scale == pytest.approx(1.03) and plan.resample


@pytest.mark.parametrize(
    ("tile", "overlap", "message"),
    [(-16, 0, "--tile must be a positive multiple of 16"), (128, 64, "= 56 for --tile 128")],
)
def test_grid_refuses_negative_tiles_and_overlaps_that_leave_no_core(tile, overlap, message):
    from segcls.core.errors import SegclsError
    from segcls.runtime.tiling import TileGrid

    with pytest.raises(SegclsError, match=message):
        TileGrid((256, 256), tile, overlap)


def test_tissue_in_box_past_the_mask_edge_repeats_the_edge():
    from segcls.runtime.tiling import ReadPlan, TileGrid, tissue_in_box

    grid = TileGrid((800, 800), 256, 64)
    plan = ReadPlan(level=0, scale=2.0, level_downsample=1.0, size=(800, 800), mpp=0.5)
    mask = np.zeros((100, 100), bool)
    mask[:, -1] = mask[-1, :] = True  # the last mask column and row
    got = tissue_in_box((195, 195, 205, 205), grid, plan, mask, 32.0)  # 0.5 mask px per map px: 200+ lie past it
    assert got.shape == (10, 10) and got[3:].all() and got[:, 3:].all() and not got[:3, :3].any()
