import json

import numpy as np
import pytest
from _prepare_fixtures import write_gleason
from click.testing import CliRunner
from PIL import Image

from segcls.cli.prepare import main
from segcls.core.errors import DatasetError
from segcls.data.folder import load_pair, open_dataset
from segcls.prepare.gleason2019 import CLASSES, majority_vote, prepare_gleason2019

U = 255
W, H = 200, 160


def band_map(values: list[int]) -> np.ndarray:
    """A raw map of vertical bands, one raw value per band (H x W)."""
    cols = np.array_split(np.arange(W), len(values))
    out = np.zeros((H, W), dtype=np.uint8)
    for v, c in zip(values, cols, strict=True):
        out[:, c] = v
    return out


def test_majority_vote_and_ties():
    a, b, c = np.array([[0, 1, 2, U]]), np.array([[0, 2, 3, U]]), np.array([[1, 2, 3, 0]])
    assert majority_vote([a, b, c]).tolist() == [[0, 2, 3, U]]
    # two pathologists who disagree: unlabelled by default, the more severe label on request
    assert majority_vote([a, b]).tolist() == [[0, U, U, U]]
    assert majority_vote([a, b], ties="higher").tolist() == [[0, 2, 3, U]]
    # a class against "nothing drawn" is a tie too; "higher" prefers the class
    assert majority_vote([np.array([[U]]), np.array([[1]])], ties="higher").tolist() == [[1]]
    assert majority_vote([a]).tolist() == a.tolist()
    with pytest.raises(ValueError, match="ties"):
        majority_vote([a], ties="lower")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    g3 = band_map([1, 3, 3, 0])
    cores = {
        # three pathologists: 1 benign / 3 grade 3 / 0 nothing / 6 (a known mistake for benign)
        "slide001_core001": {1: band_map([1, 3, 4, 0]), 2: band_map([1, 3, 5, 0]), 3: band_map([6, 4, 4, 5])},
        "slide001_core002": {1: g3, 3: band_map([1, 3, 4, 4])},  # two who disagree on one band
        "slide002_core001": {1: band_map([5, 5, 1, 1])},
        "slide002_core002": {3: g3},
        "slide003_core001": {},  # nobody annotated it
    }
    root = write_gleason(tmp_path_factory.mktemp("gleason"), cores, size=(W, H))
    # Maps6_T pads the core number differently in the release; it still belongs to slide002_core002
    (root / "Maps6_T").mkdir()
    Image.fromarray(band_map([1, 3, 3, 3]), mode="L").save(root / "Maps6_T" / "slide2_core0002_classimg_nonconvex.png")
    return root


def test_import(raw, tmp_path):
    out = tmp_path / "gleason"
    summary = prepare_gleason2019(raw, out, size=100, seed=3, progress=False)
    ds = open_dataset(out)
    assert ds.classes == CLASSES == ("benign", "gleason3", "gleason4", "gleason5")
    assert ds.mpp is None
    assert sorted(ds.images) == ["slide001_core001", "slide001_core002", "slide002_core001", "slide002_core002"]
    assert sum(len(v) for v in ds.split.values()) == 4 and len(ds.split["train"]) == 2
    assert "1 cores without maps skipped" in str(summary)

    image, mask = load_pair(ds, "slide001_core001")
    assert image.shape == (80, 100, 3)  # 200 x 160 with the longest side 100
    bands = [mask[:, 5], mask[:, 35], mask[:, 60], mask[:, 90]]
    assert [set(b.tolist()) for b in bands] == [{0}, {1}, {2}, {U}]  # benign (1, 1, 6), g3, g4, nothing
    _, mask = load_pair(ds, "slide001_core002")
    assert [mask[0, x] for x in (5, 35, 60, 90)] == [0, 1, U, U]  # tie on band 3, "nothing" vs g4 on 4
    _, mask = load_pair(ds, "slide002_core002")
    assert [mask[0, x] for x in (5, 35, 60, 90)] == [0, 1, 1, U]  # Maps3 + Maps6: tie on the last band


def test_ties_higher_and_seeded_split(raw, tmp_path):
    prepare_gleason2019(raw, tmp_path / "a", size=0, ties="higher", seed=3, progress=False)
    prepare_gleason2019(raw, tmp_path / "b", size=100, seed=3, progress=False)
    mask = np.asarray(Image.open(tmp_path / "a" / "masks" / "slide001_core002.png"))
    assert mask.shape == (H, W)
    assert [mask[0, x] for x in (10, 70, 120, 180)] == [0, 1, 2, 2]
    split_a, split_b = (json.loads((tmp_path / d / "split.json").read_text()) for d in "ab")
    assert split_a == split_b


def test_malformed_maps(tmp_path):
    root = write_gleason(tmp_path / "raw", {"slide001_core001": {1: band_map([1, 3])}}, size=(W, H))
    out = tmp_path / "out"
    small = root / "Maps2_T"
    small.mkdir()
    Image.fromarray(np.ones((H // 2, W // 2), np.uint8), mode="L").save(
        small / "slide001_core001_classimg_nonconvex.png"
    )
    with pytest.raises(DatasetError, match=r"Maps2_T/slide001_core001_classimg_nonconvex\.png is \(100, 80\) px"):
        prepare_gleason2019(root, out, progress=False)
    (small / "slide001_core001_classimg_nonconvex.png").unlink()
    Image.fromarray(band_map([1, 2]), mode="L").save(small / "slide001_core001_classimg_nonconvex.png")
    with pytest.raises(DatasetError, match="unexpected map value 2"):
        prepare_gleason2019(root, out, size=0, progress=False)
    (small / "slide001_core001_classimg_nonconvex.png").unlink()
    Image.fromarray(band_map([1]), mode="L").save(small / "slide009_core001_classimg_nonconvex.png")
    with pytest.raises(DatasetError, match=r"slide009_core001_classimg_nonconvex\.png has no core image"):
        prepare_gleason2019(root, out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no output, no .partial folder left


def test_cli_missing_folder(tmp_path):
    (tmp_path / "raw" / "Maps1_T").mkdir(parents=True)
    result = CliRunner().invoke(main, ["gleason2019", str(tmp_path / "raw"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and "missing folder 'Train Imgs'" in result.output
    assert not (tmp_path / "out").exists()
