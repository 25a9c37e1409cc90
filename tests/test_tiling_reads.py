"""Resampled tile reads at any origin: both axes, fractional level coordinates (runtime/tiling.py)."""

import numpy as np
import pytest

from segcls.errors import SlideError
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
