import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from segcls.data.cache import TileSet
from segcls.data.settings import SETTINGS, select_tiles
from segcls.data.tiles import CLS, SEG

T = 4


def _tileset(n_seg=200, n_cls=300, n_labeled=50, rare_class_tiles=3) -> TileSet:
    """SEG tiles hold classes 0 and 1, except `rare_class_tiles` that hold 0 and 3; class 2 is in no SEG tile."""
    n = n_seg + n_cls + n_labeled
    kinds = np.array([SEG] * n_seg + [CLS] * (n_cls + n_labeled), np.uint8)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)  # interleave kinds so indices are not trivially grouped
    kinds = kinds[order]
    masks = np.full((n, T, T), 255, np.uint8)
    seg = np.flatnonzero(kinds == SEG)
    masks[seg, :, :2], masks[seg, :, 2:] = 0, 1
    masks[seg[:rare_class_tiles], :, 2:] = 3
    cls = np.flatnonzero(kinds == CLS)
    labels = np.full(n, -1, np.int16)
    labels[cls] = rng.integers(0, 4, len(cls))
    sources = np.zeros(n, np.int32)
    sources[cls[n_cls:]] = 1  # the last n_labeled CLS tiles come from a labeled/ image
    return TileSet(
        images=np.zeros((n, T, T, 3), np.uint8),
        masks=masks,
        kinds=kinds,
        labels=labels,
        sources=sources,
        positions=np.zeros((n, 2), np.int32),
        source_names=("img", "labeled/b/x.png"),
        source_labeled=np.array([False, True]),
        too_small=(),
        classes=("a", "b", "c", "d"),
        tile=T,
        split="train",
        path=Path("."),
    )


TS = _tileset()
SEG_IDX = set(np.flatnonzero(TS.kinds == SEG).tolist())
ANNOTATED_CLS = set(np.flatnonzero((TS.kinds == CLS) & ~TS.from_labeled).tolist())
LABELED = set(np.flatnonzero(TS.from_labeled).tolist())


@pytest.mark.parametrize("s", [0, 0.01, 0.05, 0.1, 0.5, 1])
def test_counts(s):
    sel = {setting: select_tiles(TS, setting, s, seed=1) for setting in SETTINGS}
    for x in sel.values():
        assert x.seg.dtype == np.int64 and x.cls.dtype == np.int64
        assert set(x.seg.tolist()) <= SEG_IDX
        assert np.all(np.diff(x.seg) > 0) and np.all(np.diff(x.cls) > 0)
        assert np.array_equal(x.seg, sel["S"].seg)  # same SEG tiles in every setting
    n_seg = math.ceil(s * 200)
    assert n_seg <= len(sel["S"].seg) <= n_seg + 3  # + at most one per class present (0, 1, 3)
    assert len(sel["S"].cls) == 0
    sc = set(sel["S+C"].cls.tolist())
    assert len(sc & ANNOTATED_CLS) == math.floor((1 - s) * 300) and sc >= LABELED
    assert set(sel["S+C*"].cls.tolist()) == ANNOTATED_CLS | LABELED


def test_no_float_noise_in_counts():
    # 0.1 * 30 = 3.0000000000000004 must not round up to 4
    ts = _tileset(n_seg=30, n_cls=30, n_labeled=0, rare_class_tiles=0)
    sel = select_tiles(ts, "S+C", 0.1, seed=0)
    assert len(sel.seg) == 3
    assert len(sel.cls) == 27


def test_one_seg_tile_per_class_at_zero():
    sel = select_tiles(TS, "S", 0, seed=5)
    present = [set(np.unique(TS.masks[i]).tolist()) - {255} for i in sel.seg]
    assert set().union(*present) == {0, 1, 3}  # class 2 is in no SEG tile
    assert 1 <= len(sel.seg) <= 3
    assert any(3 in p for p in present)  # the rare class is found even though it is in 3 of 200 tiles


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nested_and_deterministic(seed):
    fractions = [0, 0.025, 0.05, 0.1, 0.5, 1]
    sels = [select_tiles(TS, "S+C", s, seed=seed) for s in fractions]
    for small, large in itertools.pairwise(sels):
        assert set(small.seg.tolist()) <= set(large.seg.tolist())
        assert set(large.cls.tolist()) <= set(small.cls.tolist())  # the complement shrinks
    assert set(sels[-1].seg.tolist()) == SEG_IDX
    again = select_tiles(TS, "S+C", 0.05, seed=seed)
    assert np.array_equal(again.seg, sels[2].seg) and np.array_equal(again.cls, sels[2].cls)


def test_seed_changes_selection():
    a, b = (select_tiles(TS, "S+C", 0.1, seed=s) for s in (0, 1))
    assert not np.array_equal(a.seg, b.seg)
    assert not np.array_equal(a.cls, b.cls)


@pytest.mark.parametrize(
    "setting, fraction, message",
    [
        ("S+D", 0.1, r"setting must be one of S, S\+C, S\+C\*, got 'S\+D'"),
        ("S", 5, r"seg_fraction must be a fraction in \[0, 1\] \(0\.05 for 5%\), got 5"),
        ("S", -0.1, r"got -0\.1"),
    ],
)
def test_bad_arguments(setting, fraction, message):
    with pytest.raises(ValueError, match=message):
        select_tiles(TS, setting, fraction, seed=0)
