import json

import openslide
import pytest
from click.testing import CliRunner

from segcls.cli.synth import main


@pytest.fixture
def runner():
    return CliRunner()


def _error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_dataset(runner, tmp_path):
    out = tmp_path / "ds"
    args = ["dataset", "-o", str(out), "--images", "2", "--size", "256", "--labeled", "1", "--labeled-size", "128"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "dataset.json").read_text())["mpp"] == 2.0
    assert len(list((out / "images").iterdir())) == 2
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"Wrote {out}: 2 images of 256 px and 4 labeled images")
    assert " seg, " in summary and " cls " in summary


@pytest.mark.parametrize("size", ["100", "0", "-16"])
def test_dataset_bad_size(runner, tmp_path, size):
    result = runner.invoke(main, ["dataset", "-o", str(tmp_path / "ds"), "--size", size])
    assert result.exit_code == 2
    assert "--size" in _error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_dataset_unwritable(runner, tmp_path):
    (tmp_path / "file").write_text("")
    result = runner.invoke(main, ["dataset", "-o", str(tmp_path / "file" / "ds"), "--images", "1"])
    assert result.exit_code == 2
    _error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_slide_with_mask(runner, tmp_path):
    out, mask = tmp_path / "s.tif", tmp_path / "m.tif"
    args = ["slide", "-o", str(out), "--width", "700", "--height", "500", "--mask", str(mask), "--tile", "256"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1].startswith(f"Wrote {out} and mask {mask}: 700 x 500 px")
    with openslide.OpenSlide(out) as s, openslide.OpenSlide(mask) as m:
        assert s.dimensions == m.dimensions == (700, 500)
        assert s.level_count == m.level_count == 3  # 700, 350, 175 px wide
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif", "s.tif"]


@pytest.mark.parametrize(
    "extra, word",
    [(["--width", "0", "--height", "10"], "size"), (["--width", "64", "--height", "64", "--tile", "100"], "tile")],
)
def test_slide_bad_arguments(runner, tmp_path, extra, word):
    result = runner.invoke(main, ["slide", "-o", str(tmp_path / "s.tif"), "--mask", str(tmp_path / "m.tif"), *extra])
    assert result.exit_code == 2
    assert word in _error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_slide_unwritable(runner, tmp_path):
    args = ["slide", "-o", str(tmp_path / "missing" / "s.tif"), "--width", "64", "--height", "64"]
    result = runner.invoke(main, [*args, "--mask", str(tmp_path / "m.tif")])
    assert result.exit_code == 2
    assert "missing" in _error_line(result)
    assert list(tmp_path.iterdir()) == []
