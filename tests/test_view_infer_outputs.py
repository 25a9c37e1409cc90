"""segcls-view reads what segcls-infer really writes: a cohort folder (cohort.csv, masks at --out-mpp,
summaries, GeoJSON) made by the command itself on the Aperio slide and a slide whose levels are 1/3 and 1/9."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from _runtime_models import exported_onnx
from _view_fixtures import write_slide
from click.testing import CliRunner

from segcls.runtime.cli import main as infer
from segcls.runtime.view import open_viewer

CMU = Path(__file__).parent / "data" / "cmu-1-small-region.svs"


def test_viewer_opens_a_cohort_written_by_segcls_infer(tmp_path_factory, tmp_path):
    model = exported_onnx(tmp_path_factory)
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(CMU, slides / CMU.name)
    write_slide(slides / "thirds.tif", size=(1500, 1000))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        infer, [str(slides), "-o", str(out), "--model", str(model), "--out-mpp", "2.0", "--summary", "--geojson", "-q",
                "--tile", "256", "--overlap", "32"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    app = open_viewer(out, progress=False)
    assert [(i.name, i.status) for i in app.order] == [(CMU.name, "done"), ("thirds.tif", "done")]
    for item in app.order:
        summary = json.loads((out / f"{Path(item.name).stem}.summary.json").read_text())
        assert item.mask_tiles is not None and item.geojson_path is not None
        assert item.areas_mm2() == summary["area_mm2"]  # the legend's areas are the run's
        slide_w = item.tiles.grid.size[0]
        assert item.mask_tiles.mask.dimensions[0] < slide_w  # the mask is coarser than the slide (--out-mpp 2)
        grid = item.tiles.grid
        top = grid.level_count - 1
        cols, rows = grid.level_tiles[top]
        labels = item.mask_tiles.labels(top, cols // 2, rows // 2)
        assert labels.shape[0] > 200 and set(labels.ravel()) <= {0, 1, 2, 255}
    index = app.respond("/", "")[2].decode()
    assert index.count('data-status="done"') == 2
    app.close()
