"""Which tiles of an annotated image teach segmentation and which teach classification (PAPER.md).

An image is cut into a non-overlapping grid of `tile` x `tile` tiles, starting at its top-left corner;
the partial tiles at the right and bottom edges are dropped. Counting only labelled pixels (mask != 255),
the rules are applied in this order:

1. fewer than `min_labelled` (50%) of the tile's pixels labelled -> ignored (mostly background or
   unannotated: neither its mask nor a label for it can be trusted);
2. the dominant class covers >= `dominant` (90%) of the labelled pixels -> a CLS tile with that label
   (so a tile of 95% A + 5% B is CLS, not SEG);
3. exactly two classes present -> a SEG tile;
4. otherwise (three or more classes and none dominant) -> ignored.
"""

from __future__ import annotations

import numpy as np

from segcls.core.constants import UNLABELLED

SEG = 0
CLS = 1
IGNORED = -1
# Bump when the rules above change: it invalidates every tile cache.
RULES_VERSION = 1


def tile_kind(
    mask_tile: np.ndarray, num_classes: int, dominant: float = 0.9, min_labelled: float = 0.5
) -> tuple[int | None, int]:
    """(SEG, -1), (CLS, label) or (None, -1) for one tile of class indices (255 = unlabelled)."""
    mask_tile = np.asarray(mask_tile)
    counts = np.bincount(mask_tile.ravel(), minlength=256)
    if counts[num_classes:UNLABELLED].any() or counts.size > 256:
        raise ValueError(f"mask values must be < {num_classes} or {UNLABELLED}, got {mask_tile.max()}")
    kinds, labels = kinds_from_counts(counts[None, :num_classes], mask_tile.size, dominant, min_labelled)
    kind = int(kinds[0])
    return (None if kind == IGNORED else kind), int(labels[0])


def kinds_from_counts(
    counts: np.ndarray, tile_pixels: int, dominant: float = 0.9, min_labelled: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the rules to (N, C) per-class pixel counts: kinds (N,) int8 (IGNORED = -1), labels (N,) int16."""
    if not 0 < dominant <= 1 or not 0 <= min_labelled <= 1:
        raise ValueError(f"dominant must be in (0, 1] and min_labelled in [0, 1], got {dominant}, {min_labelled}")
    counts = np.asarray(counts, dtype=np.int64)
    labelled = counts.sum(axis=1)
    top = counts.max(axis=1)
    # Integer ratios: a / b rounds to the same double as the literal, so exactly 90% counts as >= 0.9.
    enough = (labelled > 0) & (labelled / tile_pixels >= min_labelled)
    is_cls = enough & (top / np.maximum(labelled, 1) >= dominant)
    is_seg = enough & ~is_cls & ((counts > 0).sum(axis=1) == 2)
    kinds = np.full(len(counts), IGNORED, dtype=np.int8)
    kinds[is_seg] = SEG
    kinds[is_cls] = CLS
    labels = np.where(is_cls, counts.argmax(axis=1), -1).astype(np.int16)
    return kinds, labels


def tile_grid(height: int, width: int, tile: int) -> np.ndarray:
    """(N, 2) int32 (y, x) top-left corners of the full tiles of an image, row by row."""
    ys, xs = np.meshgrid(np.arange(height // tile) * tile, np.arange(width // tile) * tile, indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], axis=1).astype(np.int32)


def grid_kinds(
    mask: np.ndarray, tile: int, num_classes: int, dominant: float = 0.9, min_labelled: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kinds, labels and (y, x) positions of every grid tile of a validated mask (see `tile_grid`)."""
    rows, cols = mask.shape[0] // tile, mask.shape[1] // tile
    counts = np.empty((rows, cols, 256), dtype=np.int64)
    column = np.repeat(np.arange(cols) * 256, tile)  # tile column of each pixel, scaled for bincount
    for r in range(rows):  # one band of tiles at a time keeps the index arrays small
        band = mask[r * tile : (r + 1) * tile, : cols * tile]
        counts[r] = np.bincount((column + band).ravel(), minlength=cols * 256).reshape(cols, 256)
    kinds, labels = kinds_from_counts(counts.reshape(-1, 256)[:, :num_classes], tile * tile, dominant, min_labelled)
    return kinds, labels, tile_grid(mask.shape[0], mask.shape[1], tile)
