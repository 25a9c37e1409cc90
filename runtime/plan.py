"""Every choice a run makes before it reads a pixel: the read resolution, the tile grid, the tiles with tissue
and, on a backend without a fixed tile, those tiles trimmed to their tissue (`plan_tiles` -> `TilePlan`).

The benchmarks call `plan_tiles` too, so that they run exactly the pipeline's tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from segcls.core.description import ModelDescription
from segcls.core.errors import ModelError
from segcls.runtime.backends import Backend
from segcls.runtime.options import InferOptions
from segcls.runtime.stitch import KeepFn
from segcls.runtime.tiling import ReadPlan, Tile, TileGrid, plan_read, tissue_in_box

THUMBNAIL_SIZE = 2048
MIN_DETECTION_SIDE = 1024  # below this a thumbnail loses faint tissue at the edges; ~0.08 s to detect on


@dataclass
class TilePlan:
    """The tiles of one slide and how to read them."""

    read: ReadPlan  # the level to read and the resampling to the read frame
    grid: TileGrid  # tiles over the read frame and the label map at the network's stride
    tiles: list[Tile]  # network inputs, row-major: whole tiles with tissue, or their trimmed parts
    keep: KeepFn | None  # keep(label-map box) -> tissue pixels of the box; None without a tissue mask
    thumbnail: np.ndarray | None  # the thumbnail tissue was detected on, if any (the overlay reuses it)

    @property
    def label_px(self) -> float:
        """Level-0 px per label-map px."""
        return self.grid.stride * self.read.scale

    @property
    def input_mpx(self) -> float:
        """The network's work: megapixels of input over all tiles."""
        return sum(t.width * t.height for t in self.tiles) / 1e6


def plan_tiles(slide, backend: Backend, opts: InferOptions) -> TilePlan:
    """The plan for `slide` on `backend` with `opts`: tiles with tissue, trimmed to it when the backend runs
    any input size (`Backend.fixed_tile` false) and tiles are cropped, not blended."""
    read = plan_read(slide, target_mpp(backend.description, opts), opts.level)
    grid = TileGrid(read.size, opts.tile, opts.overlap, backend.description.stride)
    keep, tiles, thumbnail = select_tiles(slide, grid, read, opts.tissue)
    if opts.trim and opts.stitch == "crop" and not backend.fixed_tile:
        tiles = trim_tiles(grid, tiles, keep)
    return TilePlan(read, grid, tiles, keep, thumbnail)


def target_mpp(description: ModelDescription, opts: InferOptions) -> float | None:
    """The resolution to read at: `--mpp`, else the model's training mpp (None with `--level`)."""
    if opts.level is not None or opts.mpp is not None:
        return opts.mpp
    if description.mpp is None:
        raise ModelError("the model does not record the mpp it was trained at: pass --mpp X or --level L")
    return description.mpp


def select_tiles(slide, grid: TileGrid, plan: ReadPlan, source) -> tuple[KeepFn | None, list[Tile], np.ndarray | None]:
    """(keep(box) or None, tiles whose core holds tissue, the thumbnail the tissue was found on or None)."""
    if str(source) == "none":
        return None, list(grid), None
    from segcls.runtime.tissue import tissue_mask

    core = grid.step * plan.scale  # level-0 px of a tile's core
    side = detection_side(slide.dimensions, grid.stride * plan.scale)
    thumb = None
    if str(source) == "auto":  # detect on a thumbnail that the overlay reuses when it is full size
        thumb = slide.get_thumbnail((side, side))
    tissue = tissue_mask(slide, source, side, thumbnail=thumb)
    tiles = [t for t in grid if tissue.covers(t.col * core, t.row * core, core, core)]

    def keep(box: tuple[int, int, int, int]) -> np.ndarray:
        return tissue_in_box(box, grid, plan, tissue.mask, tissue.downsample)

    return keep, tiles, thumb


def detection_side(dimensions: tuple[int, int], label_px: float) -> int:
    """Thumbnail side to detect tissue on: the label map's (`label_px` level-0 px a pixel), within
    [MIN_DETECTION_SIDE, THUMBNAIL_SIZE]. Tiles and trims are placed in label-map pixels, so a finer mask
    decides nothing more, and each halving of its side costs 4x (a 16k px slide read at 1 um/px was
    detected on 2048 px, twice its label map's side: 0.5 s instead of 0.08 s)."""
    return min(THUMBNAIL_SIZE, max(MIN_DETECTION_SIDE, math.ceil(max(dimensions) / label_px)))


def trim_tiles(grid: TileGrid, tiles: list[Tile], keep: KeepFn | None, splits: int = 2) -> list[Tile]:
    """Each tile trimmed (`TileGrid.trim`) to the box around its core's tissue (the whole core without a
    tissue mask); a tile whose core holds no tissue at the label map's resolution is dropped.

    Where the tissue is scattered, the box is split in four, up to `splits` times, whenever the trimmed
    inputs of the parts are smaller in all than the one of the whole (each part carries its own
    `overlap` of context). For a backend that runs a smaller input proportionally faster, in crop mode
    (bench/results/cpu-2core-trim-shapes.md); a GPU wants one input shape (engine profiles, cuDNN
    autotuning, full batches), and blending needs whole tiles.
    """
    trimmed = []
    for t in tiles:
        core = grid.core(t)
        if keep is None:
            trimmed.append(grid.trim(t))
            continue
        trimmed += [grid.trim(t, box) for box in _tissue_boxes(grid, t, keep(core), core[:2], splits)]
    return trimmed


def _tissue_boxes(grid: TileGrid, t: Tile, tissue: np.ndarray, at: tuple[int, int], splits: int) -> list[tuple]:
    """Label-map boxes covering the True pixels of `tissue` (whose top left is map pixel `at`) that make
    the least network input: the bounding box, or its four quarters' boxes if they cost less."""
    rows, cols = np.flatnonzero(tissue.any(axis=1)), np.flatnonzero(tissue.any(axis=0))
    if not rows.size:
        return []
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    box = (at[0] + c0, at[1] + r0, at[0] + c1, at[1] + r1)
    if splits == 0 or (r1 - r0 < 2 and c1 - c0 < 2):
        return [box]
    hr, hc = (r1 - r0) // 2, (c1 - c0) // 2
    parts = []
    for a, b in ((r0, r0 + hr), (r0 + hr, r1)):
        for c, d in ((c0, c0 + hc), (c0 + hc, c1)):
            if b > a and d > c:
                parts += _tissue_boxes(grid, t, tissue[a:b, c:d], (at[0] + c, at[1] + a), splits - 1)

    def cost(boxes: list[tuple]) -> int:
        return sum(w.width * w.height for w in (grid.trim(t, b) for b in boxes))

    return parts if cost(parts) < cost([box]) else [box]
