"""segcls-infer on a slide with a damaged stored tile: one line and no mask by default; with --skip-damaged
the tile reads as glass, its region is 255 in the mask, and the summary and the result line say so."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from _damaged import HOWS, damage_tile
from _runtime_models import exported_onnx
from click.testing import CliRunner
from test_cli_infer import CMU, FAST

from segcls.runtime.cli import main

ARGS = ["--mpp", 2.0, *FAST]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return exported_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, model):
    out = tmp_path_factory.mktemp("clean") / "cmu.mask.tif"
    r = invoke(CMU, "-o", out, "--model", model, *ARGS)
    assert r.exit_code == 0, r.output
    return tifffile.imread(out)


@pytest.mark.parametrize("how", HOWS[:2])
def test_a_damaged_tile_stops_the_slide_with_one_line(tmp_path, model, how):
    slide = tmp_path / "bad.svs"
    x, y, w, h = damage_tile(CMU, slide, tile=(4, 6), how=how)
    r = invoke(slide, "-o", tmp_path / "out.tif", "--model", model, *ARGS)
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: damaged tile in {slide}: level 0 tile at x={x}, y={y} ({w} x {h} px"), line
    assert "--skip-damaged" in line and "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.svs"]


@pytest.mark.parametrize("how", HOWS[:2])
def test_skip_damaged_leaves_the_tile_unlabelled_and_the_rest_as_before(tmp_path, model, clean, how):
    slide = tmp_path / "bad.svs"
    x, y, w, h = damage_tile(CMU, slide, tile=(4, 6), how=how)
    out = tmp_path / "out.tif"
    r = invoke(slide, "-o", out, "--model", model, *ARGS, "--skip-damaged", "--summary")
    assert r.exit_code == 0, r.output
    assert "1 damaged tile left unlabelled" in r.output
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert [d["box"] for d in summary["damaged_tiles"]] == [[x, y, w, h]] and summary["damaged_tiles"][0]["level"] == 0
    mask = tifffile.imread(out)
    assert (mask[y : y + h, x : x + w] == 255).all()
    assert (clean[y : y + h, x : x + w] != 255).any(), "the damaged tile lies in tissue"
    # Beyond what the network sees of the glass around it (its receptive field: ~200 read px at 2 um/px, 400
    # level-0 px here), the mask is the clean slide's.
    margin = 400
    far = np.ones(mask.shape, bool)
    far[max(0, y - margin) : y + h + margin, max(0, x - margin) : x + w + margin] = False
    assert np.array_equal(mask[far], clean[far])
