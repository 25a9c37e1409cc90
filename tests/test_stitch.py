"""Stitchers: right pixels from the right tiles, a rolling band for blend, skipped tiles stay 255."""

from __future__ import annotations

import numpy as np
import pytest

from segcls.runtime.stitch import BlendStitcher, blend_window, make_stitcher
from segcls.runtime.tiling import TileGrid

C = 3
P = 64  # map px of field beyond the map on each side, more than any tile reaches


def field(grid: TileGrid) -> np.ndarray:
    """A smooth (C, H/8, W/8) probability field over the whole map (what a perfect network would say)."""
    h, w = grid.map_shape
    yy, xx = np.mgrid[-P : h + P, -P : w + P].astype(np.float32)
    logits = np.stack([np.sin(xx / 9), np.cos(yy / 7), np.sin((xx + yy) / 11)])
    e = np.exp(logits)
    return e / e.sum(0)


def tile_output(probs: np.ndarray, grid: TileGrid, t) -> np.ndarray:
    """The field as a tile at `t` sees it (padded by P map px on each side above)."""
    ox, oy = grid.origin(t)
    n = grid.tile // 8
    return probs[:, oy + P : oy + P + n, ox + P : ox + P + n]


@pytest.mark.parametrize("mode", ["crop", "blend"])
@pytest.mark.parametrize(
    ("size", "tile", "overlap"),
    [((500, 300), 128, 32), ((333, 777), 256, 64), ((64, 64), 64, 0), ((300, 200), 128, 48)],
)
def test_consistent_tiles_reconstruct_the_field(mode, size, tile, overlap):
    grid = TileGrid(size, tile, overlap)
    truth = field(grid)
    labels = np.full(grid.map_shape, 255, np.uint8)
    probs = np.zeros((C, *grid.map_shape), np.float32)
    stitcher = make_stitcher(mode, grid, labels, probs, num_classes=C)
    for t in grid:
        p = tile_output(truth, grid, t)
        stitcher.add(t, p.argmax(0).astype(np.uint8), p)
    stitcher.finish()
    stitcher.finish()  # safe twice
    h, w = grid.map_shape
    np.testing.assert_allclose(probs, truth[:, P : P + h, P : P + w], atol=1e-5)
    np.testing.assert_array_equal(labels, truth[:, P : P + h, P : P + w].argmax(0))


def test_crop_takes_each_pixel_from_the_tile_whose_core_holds_it():
    grid = TileGrid((400, 272), 128, 32)
    labels = np.full(grid.map_shape, 255, np.uint8)
    stitcher = make_stitcher("crop", grid, labels)
    n = grid.tile // 8
    for i, t in enumerate(grid):
        stitcher.add(t, np.full((n, n), i, np.uint8), np.zeros((C, n, n), np.float32))
    for i, t in enumerate(grid):
        x0, y0, x1, y1 = grid.core(t)
        assert (labels[y0:y1, x0:x1] == i).all()


@pytest.mark.parametrize("mode", ["crop", "blend"])
def test_skipped_tiles_and_non_tissue_stay_255(mode):
    grid = TileGrid((512, 512), 128, 32)  # 8 x 8 tiles of 64 px cores
    truth = field(grid)
    labels = np.full(grid.map_shape, 255, np.uint8)

    def keep(box):  # tissue = the left half of the map, except rows 16..32 (tile rows 2 and 3)
        x0, y0, x1, y1 = box
        ys = np.arange(y0, y1)[:, None]
        return (np.arange(x0, x1)[None] < 32) & ((ys < 16) | (ys >= 32))

    stitcher = make_stitcher(mode, grid, labels, keep=keep, num_classes=C)
    run = [t for t in grid if t.col < 4 and t.row not in (2, 3)]  # tiles whose core has tissue
    for t in run:
        p = tile_output(truth, grid, t)
        stitcher.add(t, p.argmax(0).astype(np.uint8), p)
    stitcher.finish()
    assert (labels[:, 32:] == 255).all()
    assert (labels[16:32] == 255).all()  # rows 2 and 3 were not run
    expected = truth[:, P : P + 64, P : P + 32].argmax(0)
    done = np.r_[0:16, 32:64]
    np.testing.assert_array_equal(labels[done, :32], expected[done])


@pytest.mark.parametrize("mode", ["crop", "blend"])
def test_pixels_no_tile_reached_stay_255_without_a_tissue_mask(mode):
    """A tile that was never run leaves its core unlabelled (blend: the part no neighbour's margin reaches)."""
    grid = TileGrid((512, 512), 128, 16)  # cores of 96 px = 12 map px
    truth = field(grid)
    labels = np.full(grid.map_shape, 255, np.uint8)
    probs = np.zeros((C, *grid.map_shape), np.float32)
    stitcher = make_stitcher(mode, grid, labels, probs, num_classes=C)
    skipped = next(t for t in grid if (t.row, t.col) == (3, 3))
    for t in grid:
        if t != skipped:
            p = tile_output(truth, grid, t)
            stitcher.add(t, p.argmax(0).astype(np.uint8), p)
    stitcher.finish()
    x0, y0, x1, y1 = grid.core(skipped)
    margin = grid.overlap // 8 if mode == "blend" else 0  # neighbours' tiles reach 16 px = 2 map px into it
    hole = (slice(y0 + margin, y1 - margin), slice(x0 + margin, x1 - margin))
    assert labels[hole].size == (12 - 2 * margin) ** 2
    assert (labels[hole] == 255).all() and (probs[(slice(None), *hole)] == 0).all()
    outside = labels != 255
    assert outside.sum() == labels.size - (y1 - y0 - 2 * margin) * (x1 - x0 - 2 * margin)


def test_blend_with_no_tile_at_all_leaves_the_map_unlabelled():
    """A slide without tissue: finish() with nothing added (and the class count not known yet)."""
    grid = TileGrid((256, 256), 128, 32)
    labels = np.full(grid.map_shape, 255, np.uint8)
    stitcher = BlendStitcher(grid, labels)
    stitcher.finish()
    assert (labels == 255).all()


def test_blend_window_is_smooth_positive_and_a_partition_of_unity():
    w = blend_window(32, 8)
    assert (w > 0).all() and w.max() == 1
    assert np.abs(np.diff(w)).max() < 0.2
    np.testing.assert_allclose(w[-8:] + w[:8], 1.0)  # two tiles overlapping by 8 px sum to 1
    np.testing.assert_array_equal(blend_window(16, 0), 1.0)


def test_blend_keeps_only_a_band_of_rows():
    grid = TileGrid((8000, 8000), 256, 32)
    labels = np.full(grid.map_shape, 255, np.uint8)
    stitcher = BlendStitcher(grid, labels, num_classes=C)
    assert stitcher.acc.shape == (C, 256 // 8, 1000)  # one tile high, not the map's 1000 rows
    assert stitcher.weight.shape == (256 // 8, 1000)


def test_blend_differs_from_crop_where_tiles_disagree():
    """Tiles that disagree (each says its own constant): crop switches at the core boundaries, blend ramps
    across the overlaps; both pick the same labels."""
    grid = TileGrid((256, 64), 128, 32)  # 4 tiles in a row, cores of 64 px = 8 map px, overlaps of 8 map px
    rows = {}
    for mode in ("crop", "blend"):
        labels = np.full(grid.map_shape, 255, np.uint8)
        probs = np.zeros((2, *grid.map_shape), np.float32)
        stitcher = make_stitcher(mode, grid, labels, probs, num_classes=2)
        for i, t in enumerate(grid):
            p = np.zeros((2, 16, 16), np.float32)
            p[i % 2] = 1.0  # tiles 0 and 2 say class 0, tiles 1 and 3 class 1
            stitcher.add(t, p.argmax(0).astype(np.uint8), p)
        stitcher.finish()
        rows[mode] = probs[0, 2], labels[2]
        np.testing.assert_array_equal(labels, labels[:1].repeat(len(labels), 0))  # the same in every map row
    cores = np.repeat([1.0, 0.0, 1.0, 0.0], 8)  # P(class 0) of the tile whose core holds each map pixel
    crop, crop_labels = rows["crop"]
    np.testing.assert_array_equal(crop, cores)
    np.testing.assert_array_equal(crop_labels, 1 - cores)
    blend, blend_labels = rows["blend"]
    np.testing.assert_array_equal(blend_labels, crop_labels)
    np.testing.assert_array_equal(blend[:4], 1.0)  # tile 0 alone at the slide's edge
    for boundary in (8, 16, 24):  # a mix across each overlap, the two ramps summing to 1
        left, right = blend[boundary - 4 : boundary], blend[boundary : boundary + 4][::-1]
        assert ((left > 0) & (left < 1)).all()
        np.testing.assert_allclose(left + right, 1.0, atol=1e-6)
    assert np.abs(np.diff(blend)).max() < 0.3  # no jump, where crop jumps by 1
    assert np.abs(blend - crop).max() > 0.3


def test_blend_learns_the_class_count_from_the_first_tile():
    """Without num_classes the band is sized from the first tile's probs: the same map as with it."""
    grid = TileGrid((300, 200), 128, 16)
    truth = field(grid)
    maps = []
    for kw in ({}, {"num_classes": C}):
        labels = np.full(grid.map_shape, 255, np.uint8)
        probs = np.zeros((C, *grid.map_shape), np.float32)
        stitcher = make_stitcher("blend", grid, labels, probs, **kw)
        for t in grid:
            p = tile_output(truth, grid, t)
            stitcher.add(t, p.argmax(0).astype(np.uint8), p)
        stitcher.finish()
        maps.append((labels, probs))
    np.testing.assert_array_equal(maps[0][0], maps[1][0])
    np.testing.assert_array_equal(maps[0][1], maps[1][1])
    assert (maps[0][0] != 255).all()


@pytest.mark.parametrize("mode", ["average", "max", "Blend", ""])
def test_unknown_stitch_mode_is_an_error(mode):
    grid = TileGrid((256, 256), 128, 32)
    with pytest.raises(ValueError, match="stitch mode must be one of"):
        make_stitcher(mode, grid, np.full(grid.map_shape, 255, np.uint8))


@pytest.mark.parametrize("overlap", [16, 32])
def test_blend_ramps_along_a_raised_cosine_over_exactly_the_overlap(overlap):
    """Neighbours that disagree: across the 2 x overlap px both tiles cover, P(left tile's class) falls along a
    raised cosine from 1 to 0; everywhere else one tile decides alone."""
    grid = TileGrid((512, 128), 128, overlap)
    labels = np.full(grid.map_shape, 255, np.uint8)
    probs = np.zeros((2, *grid.map_shape), np.float32)
    stitcher = make_stitcher("blend", grid, labels, probs, num_classes=2)
    for t in grid:
        p = np.zeros((2, 16, 16), np.float32)
        p[t.col % 2] = 1.0  # even tile columns say class 0, odd ones class 1
        stitcher.add(t, p.argmax(0).astype(np.uint8), p)
    stitcher.finish()
    core, ramp = (128 - 2 * overlap) // 8, 2 * overlap // 8  # map px
    width = grid.map_shape[1]
    expected = np.array([1.0 - (x // core) % 2 for x in range(width)])  # the tile whose core holds x decides
    falling = 0.5 + 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)  # 1 -> 0 over `ramp` px
    for b in range(core, width, core):  # each boundary between two cores
        span = slice(b - ramp // 2, b + ramp // 2)
        expected[span] = falling if expected[b - 1] == 1 else falling[::-1]
    np.testing.assert_allclose(probs[0, 5], expected, atol=1e-6)


def test_crop_takes_from_a_trimmed_tile_only_pixels_with_overlap_context_and_leaves_the_rest():
    grid = TileGrid((512, 512), 256, 32)  # cores of 192 px = 24 map px
    truth = field(grid)
    labels = np.full(grid.map_shape, 255, np.uint8)
    probs = np.full((C, *grid.map_shape), -1, np.float32)
    stitcher = make_stitcher("crop", grid, labels, probs)
    t = next(iter(grid))
    box = (4, 6, 10, 9)  # map px inside the first core
    w = grid.trim(t, box)
    assert w.width < grid.tile and w.height < grid.tile
    ox, oy = grid.origin(w)
    p = truth[:, oy + P : oy + P + w.height // 8, ox + P : ox + P + w.width // 8]
    stitcher.add(w, p.argmax(0).astype(np.uint8), p)
    m = grid.overlap // 8  # map px of context a pixel must have inside the input
    owned = np.zeros(grid.map_shape, dtype=bool)
    owned[oy + m : oy + w.height // 8 - m, ox + m : ox + w.width // 8 - m] = True
    *_, x1, y1 = grid.core(t)
    owned[:, x1:] = owned[y1:, :] = False  # and inside the tile's core
    assert owned[box[1] : box[3], box[0] : box[2]].all() and 0 < owned.mean() < 0.2
    expected = truth[:, P : P + grid.map_shape[0], P : P + grid.map_shape[1]]
    np.testing.assert_array_equal(labels[owned], expected.argmax(0)[owned])
    np.testing.assert_allclose(probs[:, owned], expected[:, owned], atol=1e-6)
    assert (labels[~owned] == 255).all() and (probs[:, ~owned] == -1).all()  # left as they were
