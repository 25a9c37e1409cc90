import json

import numpy as np
import pytest
from _prepare_fixtures import BACH_REGIONS, SLIDE_MPP, TISSUE, imagescope_xml, write_bach
from click.testing import CliRunner
from PIL import Image

from segcls.cli.prepare import main
from segcls.core.errors import DatasetError
from segcls.data.folder import load_pair, open_dataset
from segcls.prepare.bach import CLASSES, PARTA_MPP, prepare_bach, read_annotations

MPP4 = SLIDE_MPP * 4  # pyramid level 2 of the fixture slide (levels halve)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_bach(tmp_path_factory.mktemp("bach"), wsis=("A01", "A02", "A06"))


@pytest.fixture(scope="module")
def dataset(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "bach"
    summary = prepare_bach(raw.parent, out, mpp=MPP4, piece_size=256, progress=False)
    return out, summary


def test_output_is_a_valid_dataset_folder(dataset):
    out, summary = dataset
    ds = open_dataset(out)
    assert ds.classes == CLASSES
    assert ds.mpp == pytest.approx(MPP4)
    # 512 x 384 at the target resolution, cut into 256 px pieces: 4 per slide, all with tissue
    assert len(ds.images) == 12
    assert {n.split("_")[0] for n in ds.split["train"]} == {"A01", "A06"}  # the paper's training WSIs
    assert {n.split("_")[0] for n in ds.split["val"]} == {"A02"}
    assert ds.split["test"] == []
    assert {c: len(v) for c, v in ds.labeled.items()} == dict.fromkeys(CLASSES, 1)
    for name in ds.images:
        load_pair(ds, name)  # sizes and mask values check out
    assert "12 images" in str(summary) and str(out) in str(summary)


def test_mask_follows_polygons_tissue_and_glass(dataset):
    out, _ = dataset
    mask = np.asarray(Image.open(out / "masks" / "A01_x00000_y00000.png"))
    image = np.asarray(Image.open(out / "images" / "A01_x00000_y00000.png"))
    assert mask.shape == image.shape[:2] == (256, 256)
    # level-0 point p is target pixel p / 4
    assert mask[144, 176] == CLASSES.index("benign")  # centre of the benign box (704, 576)
    assert mask[240, 100] == CLASSES.index("normal")  # tissue outside every polygon
    assert mask[20, 20] == 255  # glass
    assert np.abs(image[144, 176].astype(int) - TISSUE).max() < 25
    # benign box (512..896, 384..768) -> 97 x 97 target pixels, edges included
    assert (mask == 1).sum() == 97 * 97
    other = np.asarray(Image.open(out / "masks" / "A01_x00256_y00000.png"))
    assert other[550 // 4, 1300 // 4 - 256] == CLASSES.index("insitu")
    assert other[1000 // 4, 1400 // 4 - 256] == CLASSES.index("invasive")


def test_photos_are_shrunk_to_the_target_mpp(dataset):
    out, _ = dataset
    factor = MPP4 / PARTA_MPP
    with Image.open(out / "labeled" / "insitu" / "is001.png") as im:
        assert im.size == (round(320 / factor), round(240 / factor))


def test_wsi_choice_split_options_and_paper_downscale(raw, tmp_path):
    out = tmp_path / "ds"
    summary = prepare_bach(
        raw, out, mpp=SLIDE_MPP * 3, parta_downscale=16, wsi=["a02", "A06"], train_wsi=["A02"],
        test_wsi=["A06"], piece_size=2048, progress=False,
    )  # fmt: skip
    split = json.loads((out / "split.json").read_text())
    assert split == {"train": ["A02_x00000_y00000"], "val": [], "test": ["A06_x00000_y00000"]}
    # scale 3 is read from level 1 (downsample 2) and resampled: 2048 / 3 = 682 px wide
    mask = np.asarray(Image.open(out / "masks" / "A02_x00000_y00000.png"))
    assert mask.shape == (512, 682)
    assert mask[576 // 3, 704 // 3] == CLASSES.index("benign")
    with Image.open(out / "labeled" / "normal" / "n001.png") as im:
        assert im.size == (20, 15)  # 320 x 240 / 16
    assert summary.mpp == pytest.approx(SLIDE_MPP * 3)


def test_class_names_are_matched_loosely(tmp_path):
    xml = tmp_path / "a.xml"
    square = [(0, 0), (10, 0), (10, 10)]
    xml.write_text(imagescope_xml([("benign", square), ("IN SITU", square), ("Invasive carcinoma", square),
                                   ("Normal", square)]))  # fmt: skip
    regions, mpp = read_annotations(xml)
    assert [r.label for r in regions] == [1, 2, 3, 0]
    assert mpp == pytest.approx(SLIDE_MPP)


@pytest.mark.parametrize(
    ("regions", "expected"),
    [
        ([("Benign", [])], "region 1 has 0 vertices"),
        ([("Benign", [(0, 0), (5, 5)])], "region 1 has 2 vertices"),
        ([("Benign", [(0, 0), (5, 0), (5, 5)]), ("Fibroadenoma", [(0, 0), (5, 0), (5, 5)])], "'Fibroadenoma'"),
        ([], "no <Region>"),
    ],
)
def test_bad_xml_is_a_one_line_error_naming_the_file(tmp_path, regions, expected):
    xml = tmp_path / "A01.xml"
    xml.write_text(imagescope_xml(regions))
    with pytest.raises(DatasetError, match=expected) as err:
        read_annotations(xml)
    assert str(xml) in str(err.value) and "\n" not in str(err.value)


def test_malformed_raw_folders(tmp_path):
    top = write_bach(tmp_path / "raw", wsis=("A01",))
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="'A05' is not an imported annotated WSI"):
        prepare_bach(top, out, wsi=["A05"], progress=False)
    (top / "WSI" / "A07.xml").write_text(imagescope_xml(BACH_REGIONS))
    with pytest.raises(DatasetError, match=r"A07\.xml has no slide"):
        prepare_bach(top, out, progress=False)
    (top / "WSI" / "A07.xml").unlink()
    (top / "Photos" / "InSitu").rename(top / "Photos" / "Carcinoma")
    with pytest.raises(DatasetError, match="missing folder 'InSitu'"):
        prepare_bach(top, out, progress=False)
    assert not out.exists()


def test_cli_error_exit_code_and_no_partial_output(tmp_path):
    top = write_bach(tmp_path / "raw", wsis=("A01",))
    (top / "WSI" / "A01.xml").write_text(imagescope_xml([("Stroma", [(0, 0), (9, 0), (9, 9)])]))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bach", str(tmp_path / "raw"), "-o", str(out), "--quiet"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and "A01.xml" in result.output
    assert result.output.count("\n") == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "raw"]  # neither out nor a .partial folder


def test_cli_writes_and_refuses_to_overwrite(raw, tmp_path):
    out = tmp_path / "out"
    args = ["bach", str(raw), "-o", str(out), "--quiet", "--wsi", "A01"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # default target: pyramid level 2 of the BACH slides (16 x 0.467 um/px), as in the paper
    assert json.loads((out / "dataset.json").read_text())["mpp"] == pytest.approx(16 * 0.467)
    with Image.open(out / "images" / "A01_x00000_y00000.png") as im:
        assert im.size == (128, 96)  # 2048 x 1536 / 16
    assert result.output.startswith("bach: 1 images with masks") and result.output.count("\n") == 1
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    (out / "marker").write_text("old")
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0
    assert not (out / "marker").exists() and (out / "dataset.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
