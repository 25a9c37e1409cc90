import json

import numpy as np
import pytest
import tifffile
from _data_helpers import random_image, write_dataset
from PIL import Image

from segcls.core.description import default_colors
from segcls.core.errors import DatasetError
from segcls.data.folder import default_split, image_size, load_pair, open_dataset, read_image, read_mask


def _pairs(n: int, size: int = 32) -> dict:
    return {f"img{i}": (random_image(size, size, i), np.full((size, size), i % 3, np.uint8)) for i in range(n)}


def test_open_dataset_reads_layout(tmp_path):
    root = write_dataset(tmp_path / "ds", _pairs(4), labeled={"b": [random_image(32, 32)]}, mpp=0.5)
    ds = open_dataset(root)
    assert ds.classes == ("a", "b", "c")
    assert ds.colors == default_colors(3)
    assert ds.mpp == 0.5
    assert ds.num_classes == 3
    assert sorted(ds.images) == ["img0", "img1", "img2", "img3"]
    assert ds.images["img2"] == (root / "images" / "img2.png", root / "masks" / "img2.png")
    assert ds.labeled == {"b": [root / "labeled" / "b" / "b0.png"]}
    assert sorted(n for names in ds.split.values() for n in names) == sorted(ds.images)
    image, mask = load_pair(ds, "img2")
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert np.array_equal(image, random_image(32, 32, 2))
    assert mask.shape == (32, 32) and (mask == 2).all()


def test_colors_and_split_file(tmp_path):
    split = {"train": ["img0", "img1"], "val": ["img2"]}
    root = write_dataset(tmp_path / "ds", _pairs(3), split=split, colors=[[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    ds = open_dataset(root)
    assert ds.colors == ((1, 2, 3), (4, 5, 6), (7, 8, 9))
    assert ds.split == {"train": ["img0", "img1"], "val": ["img2"], "test": []}


@pytest.mark.parametrize("n", range(1, 14))
def test_default_split_rule(n):
    names = [f"n{i}" for i in range(n)]
    split = default_split(names, seed=3)
    sizes = [len(split[k]) for k in ("train", "val", "test")]
    assert sorted(n for names in split.values() for n in names) == sorted(names)
    assert sizes[1] == sizes[2] or n == 2
    assert sizes[0] >= n / 2 or n == 3  # 1/1/1
    # every split that can be non-empty is
    assert [s > 0 for s in sizes] == [True, n >= 2, n >= 3]
    assert sizes[1] == (max(1, n // 4) if n >= 2 else 0)
    assert split == default_split(list(reversed(names)), seed=3)  # depends on names and seed only


def test_default_split_depends_on_seed():
    names = [f"n{i}" for i in range(40)]
    assert default_split(names, 0) != default_split(names, 1)
    assert len(default_split(names, 0)["train"]) == 20


def _ds(tmp_path, **kwargs):
    return write_dataset(tmp_path / "ds", _pairs(3), **kwargs)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda r: (r / "dataset.json").unlink(), r"dataset\.json not found"),
        (lambda r: (r / "dataset.json").write_text("{classes: ["), r"dataset\.json is not valid JSON"),
        (lambda r: (r / "dataset.json").write_text('{"classes": []}'), r"dataset\.json has no classes"),
        (lambda r: (r / "dataset.json").write_text('{"colors": []}'), r"dataset\.json has no classes"),
        (lambda r: (r / "dataset.json").write_text('{"classes": ["a", "a"]}'), r"dataset\.json: classes must"),
        (lambda r: (r / "dataset.json").write_text('{"classes": ["a"], "mpp": -1}'), r"dataset\.json: mpp"),
        (lambda r: (r / "dataset.json").write_text('{"classes": ["a"], "colors": [[1, 2]]}'), r"colors must"),
        (lambda r: (r / "masks" / "img1.png").unlink(), r"images/img1\.png has no mask"),
        (lambda r: (r / "images" / "img1.png").unlink(), r"masks/img1\.png has no image"),
        (lambda r: (r / "images" / "notes.txt").write_text("x"), r"images/notes\.txt: expected an image file"),
        (lambda r: (r / "masks" / "img1.jpg").write_text("x"), r"masks/img1\.jpg: expected a \.png mask"),
        (lambda r: (r / "labeled" / "d").mkdir(parents=True), r"labeled/d: 'd' is not a class"),
        (lambda r: (r / "split.json").write_text('{"train": ["img9"]}'), r"split\.json: 'train' names 'img9'"),
        (lambda r: (r / "split.json").write_text('{"training": []}'), r"split\.json: unknown split 'training'"),
        (lambda r: (r / "split.json").write_text('{"train": ["img0"], "val": ["img0"]}'), r"in both"),
        (lambda r: (r / "split.json").write_text("[}"), r"split\.json is not valid JSON"),
    ],
)
def test_open_dataset_errors(tmp_path, damage, expected):
    root = _ds(tmp_path)
    damage(root)
    with pytest.raises(DatasetError, match=expected):
        open_dataset(root)


def test_empty_images_folder(tmp_path):
    root = write_dataset(tmp_path / "ds", {})
    with pytest.raises(DatasetError, match=r"images holds no images"):
        open_dataset(root)
    with pytest.raises(DatasetError, match=r"dataset folder not found"):
        open_dataset(tmp_path / "missing")


def test_load_pair_checks_mask_values(tmp_path):
    root = _ds(tmp_path)
    bad = np.zeros((32, 32), np.uint8)
    bad[3, 4] = 3  # 3 classes: 0..2 valid, 255 valid
    bad[0, 0] = 255
    Image.fromarray(bad).save(root / "masks" / "img1.png")
    ds = open_dataset(root)  # cheap checks pass
    load_pair(ds, "img0")
    with pytest.raises(DatasetError, match=r"masks/img1\.png: mask value 3 in 1 pixels is not a class index"):
        load_pair(ds, "img1")


def test_load_pair_checks_size(tmp_path):
    root = _ds(tmp_path)
    Image.fromarray(np.zeros((32, 30), np.uint8)).save(root / "masks" / "img1.png")
    with pytest.raises(DatasetError, match=r"img1\.png is 30x32 pixels but its image .*img1\.png is 32x32"):
        load_pair(open_dataset(root), "img1")


def test_unreadable_image(tmp_path):
    root = _ds(tmp_path)
    (root / "images" / "img1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*img1\.png"):
        load_pair(open_dataset(root), "img1")
    with pytest.raises(DatasetError, match=r"no image named 'nope'"):
        load_pair(open_dataset(root), "nope")


def test_rgb_mask_is_rejected(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(DatasetError, match=r"m\.png: a mask must be an 8-bit single-channel PNG"):
        read_mask(path)


def test_palette_mask_gives_indices(tmp_path):
    path = tmp_path / "m.png"
    im = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), mode="L").convert("P")
    im.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    im.save(path)
    assert Image.open(path).mode == "P"
    assert read_mask(path, 3).tolist() == [[0, 1], [2, 255]]


def test_read_image_modes(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[1, :, 3] = 0, 255, 128
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert out[0, 1].tolist() == [200, 0, 0]
    assert out[1, 0].tolist() == [227, 127, 127]  # half alpha over white: 200 * 128 / 255 + 127

    grey = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    Image.fromarray(grey).save(tmp_path / "grey.jpg", quality=100)
    out = read_image(tmp_path / "grey.jpg")
    assert out.shape == (2, 3, 3) and np.abs(out.astype(int) - grey[..., None]).max() <= 2

    deep = (np.arange(4, dtype=np.uint16).reshape(2, 2) * 20000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert read_image(tmp_path / "deep.png")[..., 1].tolist() == [[0, 78], [156, 233]]


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_read_tiff_that_pil_cannot_decode(tmp_path, planar):
    image = random_image(20, 24)
    data = image if planar == "contig" else np.moveaxis(image, -1, 0)
    tifffile.imwrite(tmp_path / "x.tif", data, photometric="rgb", planarconfig=planar, compression="png")
    with pytest.raises(OSError):
        Image.open(tmp_path / "x.tif").load()
    assert np.array_equal(read_image(tmp_path / "x.tif"), image)
    assert image_size(tmp_path / "x.tif") == (24, 20)


def test_description_is_json_object(tmp_path):
    root = _ds(tmp_path)
    (root / "dataset.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(DatasetError, match=r"dataset\.json must hold a JSON object"):
        open_dataset(root)
