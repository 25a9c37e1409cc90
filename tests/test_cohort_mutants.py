"""Behaviour of the cohort driver that mutation testing found unguarded (docs/mutation.md): the table and
cohort.csv, the output folders, one slide's row, the checks before any Ray work, and on a Ray instance how
many workers a cohort gets and where each slide's line goes. Through write_table, make_folders,
slide_options, pending_slides, run_slide and infer_cohort, so the tests survive the cohort loop moving.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from _runtime_models import exported_onnx, tissue_image
from PIL import Image
from test_pipeline import ColourBackend

from segcls.core.errors import SegclsError
from segcls.runtime.cohort import (
    CSV_FIELDS,
    SlideJob,
    SlideRow,
    infer_cohort,
    make_folders,
    pending_slides,
    run_slide,
    slide_options,
    write_table,
)
from segcls.runtime.pipeline import InferOptions
from segcls.runtime.ray_runner import RayRunner

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
OPTIONS = InferOptions(tile=128, overlap=16, batch=1, slide_mpp=2.0, progress=False)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    paths = []
    for seed, name in enumerate("xyz"):
        paths.append(folder / f"{name}.png")
        Image.fromarray(tissue_image(128, 256, seed=seed)).save(paths[-1])
    return paths


ROWS = [
    SlideRow("/data/a.svs", "done", "/out/a.mask.tif", 1.25, 12, 9.6, "host:1"),
    SlideRow("/data/long-name.svs", "skipped", "/out/long-name.mask.tif"),
    SlideRow("/data/c.svs", "failed", "/out/c.mask.tif", 0.5, worker="host:2", error="cannot open c.svs"),
]


def test_the_table_and_cohort_csv(tmp_path):
    text = write_table(tmp_path, ROWS, 4.0)
    assert text.splitlines() == [
        "slide          status    seconds   tiles  tiles/s  tries",
        "a.svs          done          1.2       12     9.60      -",
        "long-name.svs  skipped         -        -        -      -",
        "c.svs          failed        0.5        -        -      -  cannot open c.svs",
        f"3 slides: 1 done, 1 skipped, 1 failed in 4.0 s, 0.250 slides/s -> {tmp_path / 'cohort.csv'}",
    ]
    with open(tmp_path / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_FIELDS
    assert rows[0] == {
        "slide": "/data/a.svs", "status": "done", "seconds": "1.25", "tiles": "12", "tiles_per_s": "9.6",
        "mask": "/out/a.mask.tif", "worker": "host:1", "attempts": "0", "error": "",
    }  # fmt: skip
    assert [r["status"] for r in rows] == ["done", "skipped", "failed"] and rows[1]["seconds"] == ""
    assert [p.name for p in tmp_path.iterdir()] == ["cohort.csv"]  # written atomically: no temporary left


def test_the_table_of_short_names_and_no_rate_without_time_or_done_slides(tmp_path):
    short = [SlideRow("/d/a.b", "done", "/o/a.mask.tif", 2.0, 3, 1.5)]
    lines = write_table(tmp_path, short, 0.0).splitlines()
    assert lines[:2] == [
        "slide  status    seconds   tiles  tiles/s  tries",
        "a.b    done          2.0        3     1.50      -",
    ]
    assert lines[-1] == f"1 slides: 1 done, 0 skipped, 0 failed in 0.0 s -> {tmp_path / 'cohort.csv'}"
    last = write_table(tmp_path, ROWS[1:], 2.0).splitlines()[-1]
    assert last.startswith("2 slides: 0 done, 1 skipped, 1 failed in 2.0 s -> ")


def test_make_folders_makes_nested_folders_again_and_again(tmp_path):
    extras = {"overlay": str(tmp_path / "ov" / "deep"), "probs": "-", "summary": None, "geojson": None}
    for _ in range(2):
        make_folders(tmp_path / "out" / "sub", extras)
    assert (tmp_path / "out" / "sub").is_dir() and (tmp_path / "ov" / "deep").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ov"] and not Path("-").exists()


def test_slide_options_carry_one_slides_optional_outputs_and_clear_the_others(tmp_path):
    opts = InferOptions(overlay=tmp_path / "any.png", geojson=tmp_path / "any.geojson", tile=256)
    outputs = {"probs": tmp_path / "a.probs.npy", "summary": tmp_path / "a.json", "mask": tmp_path / "a.mask.tif"}
    mine = slide_options(opts, outputs)
    assert (mine.probs, mine.summary, mine.overlay, mine.geojson) == (outputs["probs"], outputs["summary"], None, None)
    assert mine.tile == 256 and opts.overlay == tmp_path / "any.png"  # the cohort's options are left as they were


def test_pending_slides_redo_a_slide_with_any_output_missing_or_with_overwrite(tmp_path):
    done = {"mask": tmp_path / "a.mask.tif", "summary": tmp_path / "a.json"}
    half = {"mask": tmp_path / "b.mask.tif", "summary": tmp_path / "b.json"}
    for p in (*done.values(), half["mask"]):
        p.touch()
    plans = [SlideJob(tmp_path / "a.svs", done), SlideJob(tmp_path / "b.svs", half)]
    todo, skipped = pending_slides(plans, overwrite=False)
    assert todo == plans[1:]
    assert skipped == [SlideRow(str(tmp_path / "a.svs"), "skipped", str(done["mask"]))]
    assert pending_slides(plans, overwrite=True) == (plans, [])


class Failing(ColourBackend):
    def infer(self, batch):
        raise RuntimeError("out of memory")


def test_run_slide_rows_a_success_and_a_failure_with_its_time_and_worker(tmp_path, slides):
    outputs = {"mask": tmp_path / "x.mask.tif"}
    leftover = tmp_path / ".x.mask.tif.1234.partial"  # what a killed earlier attempt leaves
    leftover.touch()
    backend = ColourBackend()
    backend.load()
    start = time.perf_counter()
    row, line = run_slide(SlideJob(slides[0], outputs), backend, OPTIONS)
    wall = time.perf_counter() - start
    assert not leftover.exists() and outputs["mask"].is_file()
    assert (row.slide, row.status, row.mask, row.error) == (str(slides[0]), "done", str(outputs["mask"]), "")
    assert row.worker == f"{socket.gethostname()}:{os.getpid()}" and row.tiles > 0
    assert 0 < row.seconds <= wall + 0.001  # rounded to ms
    assert line.startswith("x.png: ") and line.endswith(f"-> {outputs['mask']}")

    failing = Failing()
    failing.load()
    start = time.perf_counter()
    row, line = run_slide(SlideJob(slides[1], {"mask": tmp_path / "y.mask.tif"}), failing, OPTIONS)
    wall = time.perf_counter() - start
    assert (row.status, row.error, row.tiles) == ("failed", "RuntimeError: out of memory", None)
    assert 0 <= row.seconds <= wall + 0.001 and row.worker.endswith(f":{os.getpid()}")
    assert line == f"Error: {slides[1]}: RuntimeError: out of memory"
    row, _ = run_slide(SlideJob(tmp_path / "none.png", {"mask": tmp_path / "n.mask.tif"}), backend, OPTIONS)
    assert row.error.startswith("slide not found") and not row.error.startswith("SlideError")


@needs_ray
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpus": 0}, "--ray-cpus must be > 0, got 0"),
        ({"retries": -1}, "--ray-retries must be >= 0, got -1"),
        ({"workers": 0}, "--ray-workers must be >= 1, got 0"),
    ],
)
def test_ray_settings_are_checked_before_any_work(tmp_path, slides, kwargs, message):
    model = tmp_path / "m.onnx"
    model.touch()
    with pytest.raises(SegclsError) as error:
        infer_cohort(slides, model, tmp_path / "out", OPTIONS, runner=RayRunner(**kwargs))
    assert str(error.value) == message and not (tmp_path / "out").exists()


@needs_ray
def test_a_cohort_of_finished_slides_starts_no_ray_and_says_so(tmp_path, slides, capsys):
    """Every slide done already: all skipped, nothing to run, the table says it took no time."""
    model = tmp_path / "m.onnx"
    model.touch()  # never opened
    out = tmp_path / "out"
    out.mkdir()
    for slide in slides:
        (out / f"{slide.stem}.mask.tif").touch()
    result = infer_cohort(slides, model, out, OPTIONS, runner=RayRunner())
    assert [r.status for r in result.rows] == ["skipped"] * 3
    last = result.table.splitlines()[-1]
    assert last == f"3 slides: 0 done, 3 skipped, 0 failed in 0.0 s -> {out / 'cohort.csv'}"


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    """A local Ray instance that says it has a GPU (nothing runs on it: ONNX Runtime stays on the CPU)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@needs_ray
def test_on_a_cluster_with_a_gpu_each_worker_takes_one_and_errors_go_to_stderr(
    tmp_path_factory, slides, ray_with_a_gpu, capfd
):
    tmp_path = tmp_path_factory.mktemp("gpu")
    model = exported_onnx(tmp_path_factory)
    broken = tmp_path / "broken.svs"
    broken.write_text("not a slide")
    opts = InferOptions(**{**OPTIONS.__dict__, "progress": True})
    rows = infer_cohort([slides[0], broken], model, tmp_path / "out", opts, runner=RayRunner()).rows
    out, err = capfd.readouterr()
    assert [r.status for r in rows] == ["done", "failed"]
    assert "Ray: 2 slides on 1 workers (1 CPU, 1 GPU each)" in err
    assert f"Error: {broken}" in err and f"Error: {broken}" not in out
    assert "x.png: " in out and "x.png: " not in err
    assert "2/2" in err and "3/2" not in err  # the slides bar


@needs_ray
def test_workers_default_to_as_many_as_the_cpus_hold_without_gpus(tmp_path_factory, slides, ray_with_a_gpu, capfd):
    tmp_path = tmp_path_factory.mktemp("cpu")
    model = exported_onnx(tmp_path_factory)
    rows = infer_cohort(slides, model, tmp_path / "out", OPTIONS, runner=RayRunner(cpus=0.5, gpus=0)).rows
    assert "Ray: 3 slides on 3 workers (0.5 CPU, 0 GPU each)" in capfd.readouterr().err
    assert [r.status for r in rows] == ["done"] * 3  # which worker takes which slide is the scheduler's choice
    assert np.all([(tmp_path / "out" / f"{s.stem}.mask.tif").is_file() for s in slides])
