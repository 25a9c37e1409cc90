"""The paper's training settings: which SEG and CLS tiles a run sees for a fraction s of the SEG tiles.

- S:    s of the SEG tiles only.
- S+C:  s of the SEG tiles + the (1 - s) complement of the CLS tiles of annotated images.
- S+C*: s of the SEG tiles + all CLS tiles of annotated images.
Tiles from labeled/ images (image-level labels only) join the CLS set of S+C and S+C* in full.

SEG tiles: the first ceil(s * N_seg) of a seeded permutation, plus, for every class, the first tile in
that permutation containing it (so s = 0 still defines S, as in the paper). The permutation depends
on the seed only, so for one seed the SEG selection at 5% is a subset of the one at 10%.
CLS tiles for S+C: the last floor((1 - s) * N_cls) of another seeded permutation (so they shrink
nested as s grows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from segcls.data.cache import TileSet
from segcls.data.tiles import CLS, SEG

SETTINGS = ("S", "S+C", "S+C*")
# The reverse question (does segmentation help classification?): a fraction c of the CLS tiles, with
# no SEG tiles (C), the (1 - c) complement of the SEG tiles (S+C), or all of them (S*+C).
CLS_TASK_SETTINGS = ("C", "S+C", "S*+C")
_CHUNK = 512  # SEG tiles read at a time while looking for one tile per class


@dataclass(frozen=True)
class Selection:
    seg: np.ndarray  # int64 sorted indices into the tile set: trained with the pixel loss
    cls: np.ndarray  # int64 sorted indices: trained with the image-level loss


def select_tiles(tileset: TileSet, setting: str, seg_fraction: float, seed: int = 0) -> Selection:
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if not 0 <= seg_fraction <= 1:
        raise ValueError(f"seg_fraction must be a fraction in [0, 1] (0.05 for 5%), got {seg_fraction}")
    seq = np.random.SeedSequence(seed)
    seg_rng, cls_rng = (np.random.default_rng(s) for s in seq.spawn(2))
    labeled = tileset.from_labeled
    seg_pool = np.flatnonzero(tileset.kinds == SEG)
    order = seg_pool[seg_rng.permutation(len(seg_pool))]
    seg = np.union1d(order[: _count(seg_fraction, len(order), math.ceil)], _one_per_class(tileset, order))
    if setting == "S":
        return Selection(seg.astype(np.int64), np.empty(0, np.int64))
    is_cls = tileset.kinds == CLS
    annotated = np.flatnonzero(is_cls & ~labeled)
    if setting == "S+C":
        keep = _count(1 - seg_fraction, len(annotated), math.floor)
        annotated = annotated[cls_rng.permutation(len(annotated))][len(annotated) - keep :]
    cls = np.union1d(annotated, np.flatnonzero(is_cls & labeled))
    return Selection(seg.astype(np.int64), cls.astype(np.int64))


def select_tiles_cls_task(tileset: TileSet, setting: str, cls_fraction: float, seed: int = 0) -> Selection:
    """Selection for the reverse experiment: CLS tiles are the first ceil(c * N_cls) of a seeded
    permutation of all CLS tiles (labeled/ included) plus one per class, so c = 0 is defined."""
    if setting not in CLS_TASK_SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(CLS_TASK_SETTINGS)}, got {setting!r}")
    if not 0 <= cls_fraction <= 1:
        raise ValueError(f"cls_fraction must be a fraction in [0, 1] (0.05 for 5%), got {cls_fraction}")
    seg_rng, cls_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    cls_pool = np.flatnonzero(tileset.kinds == CLS)
    order = cls_pool[cls_rng.permutation(len(cls_pool))]
    labels = np.asarray(tileset.labels)[order]
    _, first = np.unique(labels, return_index=True)  # the first tile of each class in permutation order
    cls = np.union1d(order[: _count(cls_fraction, len(order), math.ceil)], order[first])
    seg_pool = np.flatnonzero(tileset.kinds == SEG)
    if setting == "C":
        seg = np.empty(0, np.int64)
    elif setting == "S+C":
        keep = _count(1 - cls_fraction, len(seg_pool), math.floor)
        seg = np.sort(seg_pool[seg_rng.permutation(len(seg_pool))][len(seg_pool) - keep :])
    else:
        seg = seg_pool
    return Selection(seg.astype(np.int64), cls.astype(np.int64))


def _count(fraction: float, n: int, rounding) -> int:
    """`rounding(fraction * n)` without float noise turning 0.1 * 30 into 4 tiles."""
    return int(rounding(round(fraction * n, 9)))


def _one_per_class(tileset: TileSet, order: np.ndarray) -> np.ndarray:
    """For each class, the first SEG tile in `order` whose mask contains it (classes in no SEG tile: none)."""
    num_classes = len(tileset.classes)
    first = np.full(num_classes, -1, dtype=np.int64)
    for start in range(0, len(order), _CHUNK):
        chunk = order[start : start + _CHUNK]
        masks = np.asarray(tileset.masks[chunk]).reshape(len(chunk), -1)
        for c in np.flatnonzero(first < 0):
            hits = np.flatnonzero((masks == c).any(axis=1))
            if hits.size:
                first[c] = chunk[hits[0]]
        if (first >= 0).all():
            break
    return first[first >= 0]
