import json

import numpy as np
import pytest
from _prepare_fixtures import write_digestpath
from click.testing import CliRunner
from PIL import Image

from segcls.cli.prepare import main
from segcls.core.errors import DatasetError
from segcls.data.folder import default_split, load_pair, open_dataset
from segcls.prepare.digestpath2019 import prepare_digestpath2019

W, H = 300, 240


def malignant_box(x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    positives = {"2019-05-07 21_17_27-lv1-1-2": malignant_box(0, 0, 150, 240), "p2": malignant_box(60, 48, 240, 192)}
    return write_digestpath(tmp_path_factory.mktemp("digestpath"), positives, ["n1", "n2"], size=(W, H))


def test_import(raw, tmp_path):
    out = tmp_path / "dp"
    summary = prepare_digestpath2019(raw.parent, out, size=64, seed=1, progress=False)  # the folder above works
    ds = open_dataset(out)
    assert ds.classes == ("benign", "malignant") and ds.mpp is None
    assert sorted(ds.images) == ["2019-05-07 21_17_27-lv1-1-2", "n1", "n2", "p2"]
    assert json.loads((out / "split.json").read_text()) == default_split(list(ds.images), 1)
    assert "2 with masks, 2 all benign" in str(summary)

    image, mask = load_pair(ds, "p2")
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert set(np.unique(mask).tolist()) == {0, 1}  # JPEG noise thresholded away
    # malignant box 60..240 x 48..192 of 300 x 240 -> 12.8..51.2 x 12.8..51.2 of 64 x 64
    assert mask[14:50, 14:50].all() and mask[:12].sum() == 0 and mask[:, 52:].sum() == 0
    _, left_half = load_pair(ds, "2019-05-07 21_17_27-lv1-1-2")
    assert left_half[:, :31].all() and not left_half[:, 33:].any()
    _, negative = load_pair(ds, "n1")
    assert not negative.any()


def test_size_zero_keeps_the_raw_size(raw, tmp_path):
    prepare_digestpath2019(raw, tmp_path / "dp", size=0, progress=False)
    with Image.open(tmp_path / "dp" / "images" / "n2.png") as im:
        assert im.size == (W, H)
    mask = np.asarray(Image.open(tmp_path / "dp" / "masks" / "p2.png"))
    assert mask.sum() == 180 * 144  # the box, exactly, after thresholding at 128


def test_malformed_folders(tmp_path):
    top = write_digestpath(tmp_path / "raw", {"p1": malignant_box(0, 0, 10, 10)}, ["n1"], size=(W, H))
    pos = top / "tissue-train-pos-v1"
    out = tmp_path / "out"
    Image.fromarray(np.zeros((H, W), np.uint8)).save(pos / "p9_mask.jpg")
    with pytest.raises(DatasetError, match=r"mask .*p9_mask\.jpg has no image"):
        prepare_digestpath2019(top, out, progress=False)
    (pos / "p9_mask.jpg").unlink()
    (top / "tissue-train-neg" / "n1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"cannot read image .*n1\.jpg"):
        prepare_digestpath2019(top, out, progress=False)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(top / "tissue-train-neg" / "n1.jpg")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(pos / "p8.jpg")
    with pytest.raises(DatasetError, match=r"positive image .*p8\.jpg has no mask"):
        prepare_digestpath2019(top, out, progress=False)
    Image.fromarray(np.zeros((H // 2, W), np.uint8)).save(pos / "p8_mask.jpg")
    with pytest.raises(DatasetError, match=r"mask .*p8_mask\.jpg is \(300, 120\) px but its image is \(300, 240\)"):
        prepare_digestpath2019(top, out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no output, no .partial folder left


def test_cli(raw, tmp_path):
    out = tmp_path / "dp"
    result = CliRunner().invoke(main, ["digestpath2019", str(raw), "-o", str(out), "--size", "32", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("digestpath2019: 4 images with masks (train 2 / val 1 / test 1)")
    missing = CliRunner().invoke(main, ["digestpath2019", str(raw / "tissue-train-neg"), "-o", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "missing folder 'tissue-train-pos-v1'" in missing.output
