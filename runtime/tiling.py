"""Where tiles go and how their pixels are read.

Two frames: the slide's level-0 frame, and the *read frame*, the slide resampled to the resolution the
network runs at (level-0 px per read px = `ReadPlan.scale`). Tiles, overlaps and the stride-8 label map all
live in the read frame. Tile origins are multiples of 16 there, so tiled inference sees the same
convolution grid as whole-image inference would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from segcls.core.constants import INPUT_MULTIPLE, NETWORK_STRIDE
from segcls.core.errors import SegclsError, SlideError

# The default context on each side of a tile: the least that keeps tiled labels >= 99.5 % equal to
# whole-image labels at tile 1024 on a trained model (docs/overlap.md).
DEFAULT_OVERLAP = 48

# Two resolutions closer than this (relative) are the same: no resampling.
_MPP_TOLERANCE = 0.02


@dataclass(frozen=True)
class ReadPlan:
    """How a slide is read: at pyramid `level`, resampled by `level_downsample / scale`."""

    level: int
    scale: float  # level-0 px per read-frame px
    level_downsample: float
    size: tuple[int, int]  # read frame (width, height)
    mpp: float | None  # microns per read-frame px; None when the slide's mpp is unknown

    @property
    def resample(self) -> bool:
        return abs(self.scale / self.level_downsample - 1.0) > 1e-6


def plan_read(slide, target_mpp: float | None, level: int | None = None) -> ReadPlan:
    """Pick the coarsest pyramid level at least as fine as `target_mpp` (resampling from it), or read
    `level` as is. A slide without mpp can only be read by level."""
    w0, h0 = slide.dimensions
    if level is not None:
        if not 0 <= level < slide.level_count:
            raise SlideError(f"--level {level} is out of range: the slide has levels 0..{slide.level_count - 1}")
        ds = float(slide.level_downsamples[level])
        w, h = slide.level_dimensions[level]
        return ReadPlan(level, ds, ds, (int(w), int(h)), slide.mpp * ds if slide.mpp else None)
    if target_mpp is None or target_mpp <= 0:
        raise SlideError(f"no valid target resolution (got mpp={target_mpp}): pass --mpp X or --level L")
    if not slide.mpp:
        raise SlideError(
            "the slide has no resolution (mpp) metadata: pass --slide-mpp X (microns per level-0 pixel) "
            "or read a pyramid level as is with --level L"
        )
    scale = target_mpp / slide.mpp
    if abs(scale - 1.0) < _MPP_TOLERANCE:
        scale = 1.0
    level = 0
    for i, ds in enumerate(slide.level_downsamples):
        if ds <= scale * (1 + _MPP_TOLERANCE):
            level = i
    ds = float(slide.level_downsamples[level])
    if abs(scale / ds - 1.0) < _MPP_TOLERANCE:  # a level is close enough: read it as is
        scale = ds
        w, h = slide.level_dimensions[level]
        return ReadPlan(level, scale, ds, (int(w), int(h)), slide.mpp * scale)
    size = (max(1, math.ceil(w0 / scale)), max(1, math.ceil(h0 / scale)))
    return ReadPlan(level, scale, ds, size, slide.mpp * scale)


class Tile(NamedTuple):
    """One network input: grid cell (row, col) and the read-frame box it runs on."""

    row: int
    col: int
    x: int  # read-frame top-left of the input (context included); may be negative
    y: int
    width: int  # input size, read-frame px: the grid's tile, or less once trimmed (`TileGrid.trim`)
    height: int


@dataclass(frozen=True)
class TileGrid:
    """Tiles of `tile` px whose centres (cores) of `tile - 2 * overlap` px tile the read frame exactly.

    Crop stitching keeps each tile's core, so every label-map pixel comes from exactly one tile; the
    `overlap` px around the core are context only. Outside the slide the tile is padded white.
    """

    size: tuple[int, int]  # read frame (width, height)
    tile: int
    overlap: int
    stride: int = NETWORK_STRIDE

    def __post_init__(self) -> None:
        if self.tile <= 0 or self.tile % INPUT_MULTIPLE:
            raise SegclsError(f"--tile must be a positive multiple of {INPUT_MULTIPLE}, got {self.tile}")
        if self.overlap < 0 or self.overlap % INPUT_MULTIPLE:
            raise SegclsError(f"--overlap must be a multiple of {INPUT_MULTIPLE} >= 0, got {self.overlap}")
        if self.step < INPUT_MULTIPLE:
            raise SegclsError(
                f"--overlap {self.overlap} leaves no tile centre: it must be < (tile - 16) / 2 "
                f"= {(self.tile - INPUT_MULTIPLE) // 2} for --tile {self.tile}"
            )

    @property
    def step(self) -> int:
        """Distance between tile origins = core size, read-frame px."""
        return self.tile - 2 * self.overlap

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of tiles."""
        return math.ceil(self.size[1] / self.step), math.ceil(self.size[0] / self.step)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    @property
    def map_shape(self) -> tuple[int, int]:
        """(height, width) of the label map at the network's stride."""
        return math.ceil(self.size[1] / self.stride), math.ceil(self.size[0] / self.stride)

    def __iter__(self) -> Iterator[Tile]:
        rows, cols = self.shape
        for r in range(rows):
            for c in range(cols):
                x, y = c * self.step - self.overlap, r * self.step - self.overlap
                yield Tile(r, c, x, y, self.tile, self.tile)

    def core(self, t: Tile) -> tuple[int, int, int, int]:
        """The label-map box (x0, y0, x1, y1) this tile owns in crop stitching (clipped to the map)."""
        s, h, w = self.step // self.stride, *self.map_shape
        return t.col * s, t.row * s, min((t.col + 1) * s, w), min((t.row + 1) * s, h)

    def trim(self, t: Tile, box: tuple[int, int, int, int] | None = None) -> Tile:
        """The smallest input that still gives every label-map pixel of `box` (default: the tile's core)
        `overlap` px of context: `box` grown by `overlap`, on the 16 px grid, inside the whole tile.

        Network work is proportional to input area, so this is what a tile whose core is mostly glass, or
        is cut short by the frame's far edge, should cost. Beyond the frame the context stays white glass,
        as for a whole tile. The crop stitcher leaves map pixels of the core outside `box` (grown by up to
        one grid step) unlabelled, 255, so `box` must hold all of the core's tissue.
        """
        cx0, cy0, cx1, cy1 = box or self.core(t)
        s, o = self.stride, self.overlap
        x0 = (cx0 * s - o) // INPUT_MULTIPLE * INPUT_MULTIPLE
        y0 = (cy0 * s - o) // INPUT_MULTIPLE * INPUT_MULTIPLE
        x1 = min(t.x + self.tile, x0 + _round_up(cx1 * s + o - x0))
        y1 = min(t.y + self.tile, y0 + _round_up(cy1 * s + o - y0))
        return t._replace(x=x0, y=y0, width=x1 - x0, height=y1 - y0)

    def origin(self, t: Tile) -> tuple[int, int]:
        """Label-map (x, y) of the tile's output pixel (0, 0)."""
        return t.x // self.stride, t.y // self.stride


def _round_up(n: int) -> int:
    return -(-n // INPUT_MULTIPLE) * INPUT_MULTIPLE


def tissue_in_box(
    box: tuple[int, int, int, int], grid: TileGrid, plan: ReadPlan, mask: np.ndarray, downsample: float
) -> np.ndarray:
    """Nearest sample of the tissue mask at the centres of the label-map pixels in `box`."""
    x0, y0, x1, y1 = box
    f = grid.stride * plan.scale / downsample  # mask px per label-map px
    mh, mw = mask.shape
    ix = np.clip(((np.arange(x0, x1) + 0.5) * f).astype(np.int64), 0, mw - 1)
    iy = np.clip(((np.arange(y0, y1) + 0.5) * f).astype(np.int64), 0, mh - 1)
    return mask[np.ix_(iy, ix)]


def read_tile(slide, plan: ReadPlan, x: int, y: int, size: int, height: int | None = None) -> np.ndarray:
    """(height, size, 3) uint8 RGB of the read frame at (x, y), square by default; outside the slide
    is white."""
    height = height or size
    if not plan.resample:
        loc = (math.ceil(x * plan.scale), math.ceil(y * plan.scale))  # floor(loc / ds) == x
        return np.asarray(slide.read_region(loc, plan.level, (size, height)))
    # Read the covering region at the level, then resample it to the read frame (PIL's bilinear
    # filter widens its support when reducing, so it antialiases).
    ds = plan.level_downsample
    lx, ly = x * plan.scale / ds, y * plan.scale / ds  # tile origin in level px (fractional)
    nx, ny = size * plan.scale / ds, height * plan.scale / ds
    ix, iy = math.floor(lx), math.floor(ly)
    rw, rh = math.ceil(lx + nx) - ix + 1, math.ceil(ly + ny) - iy + 1
    region = np.asarray(slide.read_region((math.ceil(ix * ds), math.ceil(iy * ds)), plan.level, (rw, rh)))
    box = (lx - ix, ly - iy, lx - ix + nx, ly - iy + ny)
    out = Image.fromarray(region).resize((size, height), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out)
