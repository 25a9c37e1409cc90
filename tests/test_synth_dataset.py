import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from segcls.core.errors import SegclsError
from segcls.synth import dataset as synth_dataset
from segcls.synth.appearance import CLASSES, COLORS, STAINS, label_region, render_region
from segcls.synth.dataset import dataset_tile_kinds, make_dataset


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    return make_dataset(out, images=6, size=512, seed=3, labeled=2, labeled_size=128, progress=False)


def test_folder_layout(small):
    meta = json.loads((small / "dataset.json").read_text())
    assert meta["classes"] == list(CLASSES)
    assert meta["colors"] == [list(c) for c in COLORS]
    assert meta["mpp"] == 2.0
    images = sorted(p.name for p in (small / "images").iterdir())
    assert images == sorted(p.name for p in (small / "masks").iterdir())
    assert len(images) == 6
    for name in images:
        image = np.asarray(Image.open(small / "images" / name))
        mask = np.asarray(Image.open(small / "masks" / name))
        assert image.shape == (512, 512, 3) and image.dtype == np.uint8
        assert mask.shape == (512, 512) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {*range(len(CLASSES)), 255}
        assert np.mean(mask != 255) >= synth_dataset.MIN_TISSUE
    for cls in CLASSES:
        files = sorted((small / "labeled" / cls).iterdir())
        assert len(files) == 2
        assert all(np.asarray(Image.open(f)).shape == (128, 128, 3) for f in files)
    assert not [p for p in small.parent.iterdir() if p.name.endswith(".partial")]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(small.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's private 0700


def test_has_seg_and_cls_tiles(small):
    seg, cls = dataset_tile_kinds(small, 128)
    total = 6 * 16
    # Region size relative to the tile gives both kinds in useful numbers.
    assert seg >= 0.1 * total, (seg, cls)
    assert cls >= 0.15 * total, (seg, cls)
    masks = np.stack([np.asarray(Image.open(p)) for p in sorted((small / "masks").iterdir())])
    assert all(np.any(masks == k) for k in range(len(CLASSES)))


def test_deterministic_per_seed(tmp_path):
    kwargs = dict(images=2, size=128, labeled=1, labeled_size=64, progress=False)
    a = make_dataset(tmp_path / "a", seed=7, **kwargs)
    b = make_dataset(tmp_path / "b", seed=7, **kwargs)
    c = make_dataset(tmp_path / "c", seed=8, **kwargs)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 2 * 2 + len(CLASSES)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    for f in files:
        assert np.array_equal(np.asarray(Image.open(a / f)), np.asarray(Image.open(b / f)))
    image = "images/img_000.png"
    assert not np.array_equal(np.asarray(Image.open(a / image)), np.asarray(Image.open(c / image)))


def test_refuses_non_empty_output(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(SegclsError, match="exists: --overwrite replaces it"):
        make_dataset(tmp_path / "x", images=1, size=64, labeled=0, progress=False)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    make_dataset(tmp_path / "x", images=1, size=64, labeled=0, progress=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["dataset.json", "images", "labeled", "masks"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    # An empty folder is fine.
    (tmp_path / "y").mkdir()
    make_dataset(tmp_path / "y", images=1, size=64, labeled=0, progress=False)
    assert (tmp_path / "y" / "dataset.json").is_file()


@pytest.mark.parametrize(
    "kwargs",
    [
        *({"size": 100}, {"size": 0}, {"images": 0}, {"labeled": -1}, {"mpp": 0.0}, {"labeled_size": 8}),
        *({"images": 4, "holdout": 2}, {"holdout": 0}),
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(SegclsError):
        make_dataset(tmp_path / "ds", progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken(path, array):
        raise OSError("disk full")

    monkeypatch.setattr(synth_dataset, "_save", broken)  # workers are forked: they see the patch
    with pytest.raises(OSError):
        make_dataset(tmp_path / "ds", images=2, size=64, labeled=1, labeled_size=64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_labels_match_between_resolutions():
    """The class map lives in microns: the same area at 1 and 2 um/px gives the same regions."""
    fine = label_region(100, 100, 512, 512, 1.0, seed=5)
    coarse = label_region(50, 50, 256, 256, 2.0, seed=5)
    assert np.mean(fine[::2, ::2] == coarse) > 0.97
    assert len(np.unique(coarse)) >= 2


def test_single_class_images():
    for k in range(len(CLASSES)):
        rgb, labels = render_region(0, 0, 64, 64, 2.0, seed=1, tissue_class=k, background=False)
        assert (labels == k).all()
        assert rgb.shape == (64, 64, 3)
        assert rgb.mean() < 235  # stained tissue, not glass


def test_holdout_writes_a_split_the_folder_reader_uses(tmp_path):
    from segcls.data.folder import open_dataset

    out = make_dataset(tmp_path / "ds", images=5, size=64, labeled=0, holdout=1, seed=2, progress=False)
    split = open_dataset(out).split
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (3, 1, 1)
    assert sorted(split["train"] + split["val"] + split["test"]) == [f"img_{i:03d}" for i in range(5)]
    again = make_dataset(tmp_path / "again", images=5, size=64, labeled=0, holdout=1, seed=2, progress=False)
    assert (again / "split.json").read_text() == (out / "split.json").read_text()


def test_another_stain_gives_the_same_images_in_other_colours(tmp_path):
    kw = dict(images=2, size=64, labeled=1, labeled_size=32, seed=3, workers=1, progress=False)
    a = make_dataset(tmp_path / "a", **kw)
    b = make_dataset(tmp_path / "b", stain="macenko", **kw)
    for name in ("img_000", "img_001"):
        assert np.array_equal(
            np.asarray(Image.open(a / "masks" / f"{name}.png")), np.asarray(Image.open(b / "masks" / f"{name}.png"))
        )
        rgb_a = np.asarray(Image.open(a / "images" / f"{name}.png"), dtype=np.int16)
        rgb_b = np.asarray(Image.open(b / "images" / f"{name}.png"), dtype=np.int16)
        assert np.abs(rgb_a - rgb_b).mean() > 10
    default, _ = render_region(0, 0, 32, 32, 2.0, seed=1)
    assert np.array_equal(default, render_region(0, 0, 32, 32, 2.0, seed=1, stain="standard")[0])
    strong = render_region(0, 0, 32, 32, 2.0, seed=1, stain="strong-h")[0]
    assert not np.array_equal(default, strong) and set(STAINS) == {"standard", "macenko", "strong-h"}
    with pytest.raises(SegclsError, match="--stain must be one of"):
        make_dataset(tmp_path / "c", stain="purple", **kw)
