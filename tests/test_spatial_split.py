"""Small projects train: the spatial split of segcls.data.blocks, written by segcls-prepare qupath for one or
two slides and derived by segcls-train for a dataset without validation images; and the whole QuPath loop
with ONE annotated slide: prepare -> train -> export -> infer."""

import json

import numpy as np
import pytest
import tifffile
from _data_helpers import random_image, write_dataset
from _prepare_fixtures import SLIDE_MPP, write_slide
from click.testing import CliRunner

from segcls.cli.evaluate import main as eval_main
from segcls.cli.prepare import main as prepare_main
from segcls.cli.train import main as train_main
from segcls.core.errors import DatasetError
from segcls.data.blocks import block_counts, coarsen, cut, plan_blocks, spatial_dataset, split_images
from segcls.data.folder import UNLABELLED, load_pair, open_dataset
from segcls.data.tiles import IGNORED, grid_kinds


def striped_mask(h: int, w: int, seed: int = 0) -> np.ndarray:
    """3 classes in vertical bands with a little unlabelled border, class 2 rare (one band)."""
    mask = np.zeros((h, w), np.uint8)
    mask[:, w // 3 :] = 1
    mask[: h // 4, w - w // 6 :] = 2
    mask[:4] = UNLABELLED
    return np.roll(mask, seed, axis=1)


def test_block_counts_and_coarsen():
    mask = np.array([[0, 1, 255], [1, 1, 2]], np.uint8)
    counts = block_counts(mask, 2, 3)
    assert counts.shape == (1, 2, 3)
    assert counts[0, 0].tolist() == [1, 3, 0] and counts[0, 1].tolist() == [0, 0, 1]
    assert coarsen(counts, 2).shape == (1, 1, 3) and coarsen(counts, 2)[0, 0].tolist() == [1, 3, 1]


def test_plan_is_seeded_covers_classes_and_takes_a_quarter():
    masks = {f"m{i}": striped_mask(256, 384, seed=i * 7) for i in range(2)}
    counts = {n: block_counts(m, 64, 3) for n, m in masks.items()}
    plans = [plan_blocks(counts, block=64, margin=16, seed=s) for s in (0, 0, 1)]
    assert all(np.array_equal(plans[0].grids[n], plans[1].grids[n]) for n in masks)
    assert any(not np.array_equal(plans[0].grids[n], plans[2].grids[n]) for n in masks)
    plan = plans[0]
    total = sum(c.sum() for c in counts.values())
    val = sum(counts[n][plan.grids[n] == 1].sum() for n in masks)
    assert 0.25 <= val / total < 0.4
    for cls in range(3):  # val shows every class, and training keeps every class
        assert any(counts[n][plan.grids[n] == 1][:, cls].sum() for n in masks)
        assert any(counts[n][plan.grids[n] == 0][:, cls].sum() for n in masks)


def test_cut_keeps_held_out_pixels_out_of_every_training_tile():
    tile = 32
    image, mask = random_image(256, 320, seed=1), striped_mask(256, 320)
    counts = {"a": block_counts(mask, 4 * tile, 3)}
    plan = plan_blocks(counts, block=4 * tile, margin=tile, val=0.3, test=0.2, seed=2)
    pieces = cut("a", image, mask, plan)
    train = [p for p in pieces if p[0] == "train"]
    held = [p for p in pieces if p[0] != "train"]
    assert len(train) == 1 and {p[0] for p in held} == {"val", "test"}
    _, _, train_image, train_mask = train[0]
    held_out = np.zeros(mask.shape, bool)
    for split, name, piece_image, piece_mask in held:
        y0, x0 = (int(v) for v in name.split("_y")[1].split("_x"))
        h, w = piece_mask.shape
        assert name.startswith(f"a_{split}_") and np.array_equal(piece_mask, mask[y0 : y0 + h, x0 : x0 + w])
        assert np.array_equal(piece_image, image[y0 : y0 + h, x0 : x0 + w])
        held_out[y0 : y0 + h, x0 : x0 + w] = True
        assert (train_image[y0 : y0 + h, x0 : x0 + w] == 255).all()  # painted white in the training image
        ring = train_mask[max(0, y0 - tile) : y0 + h + tile, max(0, x0 - tile) : x0 + w + tile]
        assert (ring == UNLABELLED).all()  # block + margin unlabelled
    # the training tiles that the tile rules keep, at this tile size and at any offset, avoid held-out pixels
    for dy in (0, 8, 16, 24):
        for dx in (0, 12, 20):
            kinds, _, positions = grid_kinds(train_mask[dy:, dx:], tile, 3)
            for y, x in positions[kinds != IGNORED]:
                assert not held_out[dy + y : dy + y + tile, dx + x : dx + x + tile].any()


def test_too_few_blocks_is_one_clear_error():
    counts = {"a": block_counts(striped_mask(60, 60), 64, 3)}
    with pytest.raises(DatasetError, match="needs 2 blocks with labelled pixels; the images have 1 of 64 px"):
        plan_blocks(counts, block=64, margin=16)


def test_split_images_picks_smaller_blocks_for_small_annotations():
    written = {}
    result = split_images(
        ["a"],
        lambda name: (random_image(200, 260, seed=3), striped_mask(200, 260)),
        lambda name, image, mask: written.__setitem__(name, mask),
        3,
        tile=32,
        seed=0,
    )
    assert result.block == 64 and result.margin == 32  # 4-tile blocks would give fewer than 8
    assert result.split["train"] == ["a"] and result.split["val"] and not result.split["test"]
    assert sum(result.pixels["val"]) > 0 and set(written) == {"a", *result.split["val"]}
    text = result.describe(("x", "y", "z"))
    assert text.startswith("spatial split (blocks of 64 px, margin 32 px, seed 0): train 1 pieces (x ")


def one_image_dataset(root):
    mask = striped_mask(256, 256)
    image = np.zeros((256, 256, 3), np.uint8)
    image[...] = np.array([[200, 80, 80], [80, 200, 80], [80, 80, 200]], np.uint8)[np.minimum(mask, 2)]
    return write_dataset(root, {"only": (image, mask)}, classes=("red", "green", "blue"), mpp=2.0)


def test_train_on_one_image_validates_on_blocks_with_one_warning(tmp_path):
    dataset = one_image_dataset(tmp_path / "ds")
    assert open_dataset(dataset).split["val"] == []
    args = [str(dataset), "-o", str(tmp_path / "run"), "--tile", "32", "--batch-size", "4", "--epochs", "1"]
    r = CliRunner().invoke(train_main, [*args, "--steps-per-epoch", "2", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "has no validation images: validating on a spatial split (blocks of" in warnings[0]
    assert "val " in warnings[0] and "red " in warnings[0]
    derived, note = spatial_dataset(open_dataset(dataset), tile=32)
    assert derived.split["val"] and note == warnings[0].removeprefix("Warning: ")
    # segcls-eval scores the same validation blocks
    r = CliRunner().invoke(eval_main, [str(tmp_path / "run" / "best.pt"), str(dataset), "--split", "val"])
    assert r.exit_code == 0, r.output
    assert f"({len(derived.split['val'])} val images)" in r.output


def test_derived_split_keeps_labels_and_test_images(tmp_path):
    image, mask = random_image(256, 256, seed=4), striped_mask(256, 256)
    root = write_dataset(
        tmp_path / "ds", {"a": (image, mask), "b": (image, mask)}, split={"train": ["a"], "test": ["b"]}
    )
    ds, note = spatial_dataset(open_dataset(root), tile=32, progress=False)
    assert note and ds.split["test"] == ["b"] and "a" in ds.split["train"]
    assert np.array_equal(load_pair(ds, "b")[1], mask)
    again, _ = spatial_dataset(open_dataset(root), tile=32, progress=False)
    assert again.root == ds.root  # built once, then found by its fingerprint


# -- the QuPath loop with one annotated slide -----------------------------------------------------------
SCALE = 4  # level-0 px per dataset px


def square(x0, y0, x1, y1, cls):
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": cls, "color": [200, 0, 0]}},
    }


def test_one_annotated_slide_prepare_train_export_infer(tmp_path):
    slide = tmp_path / "S1.tif"
    write_slide(slide)  # 2048 x 1536 px, tissue in (256, 256) - (1792, 1280)
    features = [square(300, 300, 1700, 1200, "Stroma"), square(500, 400, 1000, 800, "Tumor")]
    features += [square(1200, 700, 1600, 1100, "Tumor")]
    (tmp_path / "S1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    ds = tmp_path / "ds"
    mpp = SLIDE_MPP * SCALE
    r = CliRunner().invoke(
        prepare_main,
        [
            "qupath",
            str(slide),
            "-o",
            str(ds),
            "-a",
            str(tmp_path / "S1.geojson"),
            "--mpp",
            str(mpp),
            "--tile",
            "32",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "1 slide, too few to split by slide: spatial split (blocks of" in r.output and "Tumor " in r.output
    split = json.loads((ds / "split.json").read_text())
    assert split["train"] and split["val"] and not split["test"]

    run = tmp_path / "run"
    args = [str(ds), "-o", str(run), "--tile", "32", "--batch-size", "4", "--epochs", "1", "--steps-per-epoch", "2"]
    r = CliRunner().invoke(train_main, [*args, "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    assert "Warning" not in r.stderr  # the dataset has its val split
    assert (run / "best.pt").is_file() and (run / "curves.png").is_file()

    from segcls.export.cli import main as export_main
    from segcls.runtime.cli import main as infer_main

    model = tmp_path / "model.onnx"
    r = CliRunner().invoke(export_main, [str(run / "best.pt"), "-o", str(model), "--verify-size", "64"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "S1.mask.tif"
    r = CliRunner().invoke(
        infer_main, [str(slide), "-o", str(out), "--model", str(model), "--tile", "128", "--overlap", "16", "-q"]
    )
    assert r.exit_code == 0, r.output
    labels = tifffile.imread(out)
    assert labels.shape[:2] == (1536, 2048) and set(np.unique(labels)) <= {0, 1, 255}


def test_label_regions_never_touch_held_out_blocks(tmp_path):
    """Image-level training data (labeled/) must not show a held-out block: label regions within the margin
    of one are left out, the others kept."""
    import re

    from PIL import Image

    slide = tmp_path / "S1.tif"
    write_slide(slide)
    features = [square(300, 300, 1700, 1200, "Stroma"), square(500, 400, 1000, 800, "Tumor")]
    for x in range(320, 1600, 160):  # a row of small label regions across the annotated area
        label = square(x, 1000, x + 120, 1160, "Tumor")
        label["properties"]["name"] = "label"
        features.append(label)
    (tmp_path / "S1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    ds = tmp_path / "ds"
    args = ["qupath", str(slide), "-o", str(ds), "-a", str(tmp_path / "S1.geojson"), "--mpp", str(SLIDE_MPP * SCALE)]
    r = CliRunner().invoke(prepare_main, [*args, "--tile", "32", "--quiet"])
    assert r.exit_code == 0, r.output
    split = json.loads((ds / "split.json").read_text())
    held = []
    for name in split["val"]:
        px, py, y0, x0 = (int(v) for v in re.fullmatch(r"S1_x(\d+)_y(\d+)_val_y(\d+)_x(\d+)", name).groups())
        h, w = np.asarray(Image.open(ds / "masks" / f"{name}.png")).shape
        held.append((px + x0, py + y0, px + x0 + w, py + y0 + h))
    labels = sorted((ds / "labeled" / "Tumor").glob("*.png"))
    assert labels and len(labels) < 8  # some kept, some left out
    assert "label regions next to held-out blocks" in r.output
    margin = 32
    for path in labels:
        x, y = (int(v) for v in re.search(r"_x(\d+)_y(\d+)$", path.stem).groups())
        h, w = np.asarray(Image.open(path)).shape[:2]
        for bx0, by0, bx1, by1 in held:
            assert x + w <= bx0 - margin or bx1 + margin <= x or y + h <= by0 - margin or by1 + margin <= y
