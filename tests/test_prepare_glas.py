"""segcls-prepare glas on small downloads in the challenge's layout (BMP with instance masks, Grade.csv with
the release's leading spaces) and in the PNG copy's (0/255 masks)."""

import json

import numpy as np
import pytest
from _prepare_fixtures import noisy
from click.testing import CliRunner
from PIL import Image

from segcls.cli.prepare import main
from segcls.core.errors import DatasetError
from segcls.data.folder import load_pair, open_dataset
from segcls.prepare.glas import CLASSES, class_mask, prepare_glas

W, H = 96, 64
# name, patient, grade: 8 patients, both grades; patient 3 has both grades
ROWS = [
    ("train_1", 1, "benign"), ("train_2", 1, "benign"), ("train_3", 2, "malignant"), ("train_4", 2, "malignant"),
    ("train_5", 3, "benign"), ("train_6", 3, "malignant"), ("train_7", 4, "malignant"), ("train_8", 5, "benign"),
    ("train_9", 6, "malignant"), ("train_10", 7, "benign"), ("train_11", 8, "malignant"), ("train_12", 8, "malignant"),
]  # fmt: skip
TEST_ROWS = [("testA_1", 9, "benign"), ("testA_2", 10, "malignant"), ("testB_1", 11, "malignant")]
HEADER = "name, patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)\n"


def instances(seed: int) -> np.ndarray:
    """Two gland instances (labels 1 and 2) on background 0."""
    mask = np.zeros((H, W), np.uint8)
    mask[8:30, 10 + seed % 5 : 40] = 1
    mask[36:60, 50:90] = 2
    return mask


def write_glas(root, rows, suffix=".bmp", binary=False, grade_file=True):
    root.mkdir(parents=True)
    for i, (name, _, _) in enumerate(rows):
        Image.fromarray(noisy((H, W), (200, 110, 170), seed=i)).save(root / f"{name}{suffix}")
        mask = instances(i)
        Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8) if binary else mask, mode="L").save(
            root / f"{name}_anno{suffix}"
        )
    if grade_file:
        lines = [f"{name},{patient}, {grade}, some finer grade\n" for name, patient, grade in rows]
        (root / "Grade.csv").write_text(HEADER + "".join(lines))
    return root


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    top = tmp_path_factory.mktemp("glas") / "download"
    write_glas(top / "Warwick QU Dataset (Released 2016_07_08)", ROWS + TEST_ROWS)
    return top


def patients_of(names, rows=ROWS + TEST_ROWS):
    by_name = {n: p for n, p, _ in rows}
    return {by_name[n] for n in names}


def test_import_official_layout(raw, tmp_path):
    out = tmp_path / "ds"
    summary = prepare_glas(raw, out, progress=False)
    ds = open_dataset(out)
    assert ds.classes == CLASSES == ("stroma", "benign gland", "malignant gland") and ds.mpp == 0.62
    assert sorted(ds.images) == sorted(n for n, _, _ in ROWS + TEST_ROWS)
    # by patient: no patient in two splits; val and test hold both grades; about 25 % each
    parts = {k: patients_of(v) for k, v in ds.split.items()}
    assert (
        not (parts["train"] & parts["val"])
        and not (parts["train"] & parts["test"])
        and not (parts["val"] & parts["test"])
    )
    grade = {n: g for n, _, g in ROWS + TEST_ROWS}
    for key in ("val", "test"):
        assert {grade[n] for n in ds.split[key]} == {"benign", "malignant"}
        assert 3 <= len(ds.split[key]) <= 5
    # gland pixels take the image's grade; the rest is stroma
    for name, _, g in ROWS[:6]:
        image, mask = load_pair(ds, name)
        assert image.shape == (H, W, 3)
        expected = np.where(instances(ROWS.index((name, _, g))) > 0, 1 if g == "benign" else 2, 0)
        assert np.array_equal(mask, expected)
    assert str(summary).startswith("glas: 15 images with masks") and "patients train" in str(summary)


def test_same_seed_same_split_other_seed_other_split(raw, tmp_path):
    a = prepare_glas(raw, tmp_path / "a", seed=1, progress=False).split
    b = prepare_glas(raw, tmp_path / "b", seed=1, progress=False).split
    c = [prepare_glas(raw, tmp_path / f"c{s}", seed=s, progress=False).split for s in (2, 3, 4)]
    assert a == b and any(x != a for x in c)


def test_official_split_keeps_the_test_parts(raw, tmp_path):
    ds = open_dataset(prepare_glas(raw, tmp_path / "ds", split="official", progress=False).out)
    assert ds.split["test"] == ["testA_1", "testA_2", "testB_1"]
    assert not patients_of(ds.split["train"]) & patients_of(ds.split["val"])
    assert all(n.startswith("train_") for n in ds.split["train"] + ds.split["val"])


def test_png_copy_and_downscaling(tmp_path):
    raw = write_glas(tmp_path / "png", ROWS, suffix=".png", binary=True)
    ds = open_dataset(prepare_glas(raw, tmp_path / "ds", mpp=1.24, progress=False).out)
    image, mask = load_pair(ds, "train_3")
    assert image.shape == (H // 2, W // 2, 3) and ds.mpp == 1.24
    assert set(np.unique(mask)) == {0, 2}  # malignant glands, nearest-sampled


def test_class_mask():
    assert class_mask(np.array([[0, 1, 7]]), "benign").tolist() == [[0, 1, 1]]
    assert class_mask(np.array([[0, 255]]), "malignant").tolist() == [[0, 2]]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_grades", "not a raw GlaS download: no Grade.csv"),
        ("missing_row", "is not in"),
        ("bad_grade", "grade must be benign or malignant"),
        ("no_anno", "has no annotation"),
        ("orphan_anno", "has no image"),
    ],
)
def test_broken_downloads_are_one_line_errors(tmp_path, breakage, message):
    raw = write_glas(tmp_path / "raw", ROWS, grade_file=breakage != "no_grades")
    if breakage == "missing_row":
        text = (raw / "Grade.csv").read_text().splitlines()
        (raw / "Grade.csv").write_text("\n".join(t for t in text if not t.startswith("train_5,")))
    elif breakage == "bad_grade":
        (raw / "Grade.csv").write_text(HEADER + "train_1,1, adenoma\n")
    elif breakage == "no_anno":
        (raw / "train_2_anno.bmp").unlink()
    elif breakage == "orphan_anno":
        (raw / "train_2.bmp").unlink()
    with pytest.raises(DatasetError, match=message):
        prepare_glas(raw, tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()
    r = CliRunner().invoke(main, ["glas", str(raw), "-o", str(tmp_path / "ds2"), "--quiet"])
    assert r.exit_code != 0 and r.output.startswith("Error: ") and r.output.count("\n") == 1


def test_cli(raw, tmp_path):
    out = tmp_path / "ds"
    r = CliRunner().invoke(main, ["glas", str(raw), "-o", str(out), "--quiet", "--seed", "2", "--mpp", "1.24"])
    assert r.exit_code == 0, r.output
    assert "15 images" in r.output and "1.24 um/px" in r.output
    assert json.loads((out / "dataset.json").read_text())["mpp"] == 1.24
    r = CliRunner().invoke(main, ["glas", str(raw), "-o", str(out), "--quiet"])
    assert r.exit_code != 0 and "--overwrite" in r.output
