import os

import numpy as np
import PIL.Image
import pytest
from _data_helpers import block_mask, random_image, write_dataset

from segcls.core.errors import DatasetError
from segcls.data import cache as cache_module
from segcls.data.cache import build_tileset
from segcls.data.folder import open_dataset
from segcls.data.tiles import CLS, SEG, grid_kinds, tile_kind


def _tile(counts: dict[int, int], shape=(10, 10)) -> np.ndarray:
    values = np.concatenate([np.full(n, v, np.uint8) for v, n in counts.items()])
    assert values.size == shape[0] * shape[1]
    return np.random.default_rng(0).permutation(values).reshape(shape)


@pytest.mark.parametrize(
    "counts, expected",
    [
        ({0: 100}, (CLS, 0)),
        ({2: 90, 1: 10}, (CLS, 2)),  # exactly 90%
        ({1: 95, 0: 5}, (CLS, 1)),  # two classes, but dominant: CLS wins
        ({0: 899, 1: 101}, (SEG, -1)),  # 89.9%, two classes
        ({0: 899, 1: 100, 2: 1}, (None, -1)),  # 89.9%, three classes
        ({0: 50, 1: 50}, (SEG, -1)),
        ({0: 40, 1: 30, 2: 30}, (None, -1)),
        ({0: 900, 1: 50, 2: 50}, (CLS, 0)),  # three classes, but dominant
        ({255: 40, 2: 54, 1: 6}, (CLS, 2)),  # 90% of the labelled pixels (54% of the tile)
        ({255: 40, 2: 50, 1: 10}, (SEG, -1)),
        ({255: 50, 0: 50}, (CLS, 0)),  # exactly half labelled: kept
        ({255: 51, 0: 49}, (None, -1)),  # less than half labelled: ignored
        ({255: 51, 0: 25, 1: 24}, (None, -1)),
        ({255: 100}, (None, -1)),
    ],
)
def test_tile_kind_rules(counts, expected):
    shape = (40, 25) if sum(counts.values()) == 1000 else (10, 10)
    assert tile_kind(_tile(counts, shape), num_classes=3) == expected


def test_tile_kind_options_and_bad_values():
    tile = _tile({0: 80, 1: 20})
    assert tile_kind(tile, 3) == (SEG, -1)
    assert tile_kind(tile, 3, dominant=0.8) == (CLS, 0)
    assert tile_kind(_tile({255: 60, 0: 40}), 3, min_labelled=0.4) == (CLS, 0)
    with pytest.raises(ValueError, match="mask values must be < 3"):
        tile_kind(_tile({0: 99, 3: 1}), 3)


def test_grid_kinds_matches_tile_kind():
    rng = np.random.default_rng(1)
    # 3 x 4 full tiles of 8 px plus partial edges that must be dropped
    mask = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(29, 37), p=[0.7, 0.15, 0.05, 0.1])
    mask[:8, :8] = 1
    mask[8:16, :8] = np.where(np.arange(8) < 3, 0, 2)
    kinds, labels, positions = grid_kinds(mask, 8, num_classes=3)
    assert positions.tolist() == [[y, x] for y in (0, 8, 16) for x in (0, 8, 16, 24)]
    for kind, label, (y, x) in zip(kinds, labels, positions, strict=True):
        expected = tile_kind(mask[y : y + 8, x : x + 8], 3)
        assert (None if kind == -1 else kind, label) == expected
    assert (kinds[0], labels[0]) == (CLS, 1)
    assert kinds[4] == SEG
    assert len(set(kinds.tolist())) == 3  # the random part exercises all outcomes


# --- tile cache -------------------------------------------------------------------------------------

T = 16


def _dataset(tmp_path):
    # grid of 2 x 3 tiles: CLS a, SEG, ignored (unlabelled) / CLS c, CLS b, ignored (three classes)
    three = np.zeros((T, T), np.uint8)
    three[:, 5:10], three[:, 10:] = 1, 2
    mask = block_mask(2 * T + 5, 3 * T + 3, T, [[0, -2, 255], [2, 1, 0]])
    mask[T : 2 * T, 2 * T : 3 * T] = three
    pairs = {
        "one": (random_image(2 * T + 5, 3 * T + 3, 1), mask),
        "two": (random_image(T, T, 2), np.full((T, T), 1, np.uint8)),
        "tiny": (random_image(T - 1, 40, 3), np.zeros((T - 1, 40), np.uint8)),
    }
    labeled = {"c": [random_image(2 * T, T, 4)], "a": [random_image(T, 3 * T, 5)]}
    split = {"train": ["one", "two"], "val": ["tiny"], "test": []}
    return open_dataset(write_dataset(tmp_path / "ds", pairs, labeled=labeled, split=split))


def test_build_tileset_extracts_kept_tiles(tmp_path):
    ds = _dataset(tmp_path)
    ts = build_tileset(ds, "train", tile=T, progress=False)
    assert isinstance(ts.images, np.memmap) and isinstance(ts.masks, np.memmap)
    assert ts.path.parent == ds.root / ".segcls_cache"
    assert ts.images.shape == (len(ts), T, T, 3) and ts.masks.shape == (len(ts), T, T)
    assert ts.source_names == ("one", "two", "labeled/a/a0.png", "labeled/c/c0.png")
    assert ts.source_labeled.tolist() == [False, False, True, True]
    rows = list(zip(ts.sources.tolist(), ts.positions.tolist(), ts.kinds.tolist(), ts.labels.tolist(), strict=True))
    assert rows == [
        (0, [0, 0], CLS, 0),
        (0, [0, T], SEG, -1),
        (0, [T, 0], CLS, 2),
        (0, [T, T], CLS, 1),
        (1, [0, 0], CLS, 1),
        (2, [0, 0], CLS, 0),
        (2, [0, T], CLS, 0),
        (2, [0, 2 * T], CLS, 0),
        (3, [0, 0], CLS, 2),
        (3, [T, 0], CLS, 2),
    ]
    assert ts.from_labeled.tolist() == [False] * 5 + [True] * 5
    assert ts.kinds.dtype == np.uint8 and ts.labels.dtype == np.int16 and ts.sources.dtype == np.int32
    image = np.asarray(PIL.Image.open(ds.images["one"][0]))
    assert np.array_equal(ts.images[3], image[T : 2 * T, T : 2 * T])
    assert np.array_equal(ts.masks[1][:, : T // 2], np.zeros((T, T // 2)))
    assert np.array_equal(ts.images[9], np.asarray(PIL.Image.open(ds.labeled["c"][0]))[T:])
    assert (np.asarray(ts.masks[5:]) == 255).all()
    assert "10 tiles" in ts.summary() and "1 seg" in ts.summary() and "5 cls from labeled/" in ts.summary()

    val = build_tileset(ds, "val", tile=T, progress=False)  # labeled/ joins train only
    assert len(val) == 0 and val.too_small == ("tiny",)
    assert "smaller than one tile" in val.summary()
    assert val.path != ts.path


def test_cache_is_reused_without_decoding(tmp_path, monkeypatch):
    ds = _dataset(tmp_path)
    first = build_tileset(ds, "train", tile=T, progress=False)
    images = np.array(first.images)

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    again = build_tileset(open_dataset(ds.root), "train", tile=T, progress=False)
    assert again.path == first.path
    assert np.array_equal(again.images, images)
    monkeypatch.undo()

    # another tile size, or a changed file, gives another cache folder
    assert build_tileset(ds, "train", tile=8, progress=False).path != first.path
    mask_path = ds.images["two"][1]
    st = mask_path.stat()
    os.utime(mask_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = build_tileset(ds, "train", tile=T, progress=False)
    assert changed.path != first.path
    assert first.path.is_dir()  # the old cache is left alone


def test_cache_dir_and_atomic_build(tmp_path, monkeypatch):
    ds = _dataset(tmp_path)
    cache_dir = tmp_path / "cache"

    def fail(path):
        raise DatasetError(f"cannot read image {path}")

    monkeypatch.setattr(cache_module, "read_image", fail)
    with pytest.raises(DatasetError, match="cannot read image"):
        build_tileset(ds, "train", tile=T, cache_dir=cache_dir, progress=False)
    assert list(cache_dir.iterdir()) == []  # no half-written cache left behind
    monkeypatch.undo()
    ts = build_tileset(ds, "train", tile=T, cache_dir=cache_dir, progress=False)
    assert ts.path.parent == cache_dir and len(ts) == 10
    assert [p.name for p in cache_dir.iterdir()] == [ts.path.name]


def test_build_validates_masks(tmp_path):
    ds = _dataset(tmp_path)
    PIL.Image.fromarray(np.full((T, T), 7, np.uint8)).save(ds.images["two"][1])
    with pytest.raises(DatasetError, match=r"two\.png: mask value 7"):
        build_tileset(ds, "train", tile=T, progress=False)
    with pytest.raises(ValueError, match="split must be one of"):
        build_tileset(ds, "training", tile=T, progress=False)
