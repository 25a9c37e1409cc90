"""Cohorts on Ray (a local instance, 2 CPUs): same masks as the local run, failures, reruns, killed workers.

Losing a whole node: tests/test_ray_node_loss.py."""

from __future__ import annotations

import csv
import importlib.util
import sys

import numpy as np
import pytest
import tifffile
from _ray_faults import CrashingModel, pickle_by_value
from _runtime_models import exported_onnx, tissue_image
from click.testing import CliRunner
from PIL import Image

from segcls.runtime.cli import main
from segcls.runtime.cohort import ModelSpec, infer_cohort
from segcls.runtime.options import InferOptions
from segcls.runtime.ray_runner import RayRunner

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
FAST = ["--backend", "onnxruntime", "--tile", "128", "--overlap", "16", "--batch", "1", "--slide-mpp", "2.0", "-q"]
# ONNX Runtime named: with auto, workers (1 thread) and the local run (all cores) could time their way to
# different backends, whose labels may differ by a tie (what is compared here is the cohort machinery).
OPTIONS = InferOptions(backend="onnxruntime", tile=128, overlap=16, batch=1, slide_mpp=2.0, progress=False)
NAMES = ("a", "b", "c")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def pixels(path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [page.asarray() for page in tif.pages]


def same_mask(a, b) -> bool:
    pa, pb = pixels(a), pixels(b)
    return len(pa) == len(pb) and all(np.array_equal(x, y) for x, y in zip(pa, pb, strict=True))


def table(out) -> dict[str, dict]:
    with open(out / "cohort.csv", newline="") as f:
        return {row["slide"].rsplit("/", 1)[-1]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return exported_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    paths = []
    for seed, name in enumerate(NAMES):
        paths.append(folder / f"{name}.png")
        Image.fromarray(tissue_image(256, 384, seed=seed)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def local(tmp_path_factory, model, slides):
    """The reference: the same slides through the local (no Ray) multi-slide run."""
    out = tmp_path_factory.mktemp("local")
    r = invoke(*slides, "-o", out, "--model", model, *FAST)
    assert r.exit_code == 0, r.output
    assert {name: row["status"] for name, row in table(out).items()} == dict.fromkeys(
        (f"{n}.png" for n in NAMES), "done"
    )
    return out


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance for the module (2 CPUs: two workers of 1 CPU)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    pickle_by_value()
    yield
    ray.shutdown()


@needs_ray
def test_no_cluster_at_the_address_is_one_error_line(tmp_path, model, slides):
    # First in the module: "auto" would join the local instance that the `ray_local` fixture starts.
    import os
    import subprocess
    from pathlib import Path

    infer = Path(sys.executable).parent / "segcls-infer"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [str(infer), str(slides[0]), "-o", str(tmp_path / "out"), "--model", str(model), *FAST, "--ray", "auto"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Error: cannot join the Ray cluster at auto" in r.stderr and "Traceback" not in r.stderr


@needs_ray
def test_masks_identical_to_the_local_run(tmp_path, model, slides, local, ray_local):
    rows = infer_cohort(slides, model, tmp_path / "out", OPTIONS, runner=RayRunner()).rows
    assert [r.status for r in rows] == ["done"] * len(slides)
    assert [r.attempts for r in rows] == [1] * len(slides)
    for slide in slides:
        assert same_mask(tmp_path / "out" / f"{slide.stem}.mask.tif", local / f"{slide.stem}.mask.tif")
    assert {row["status"] for row in table(tmp_path / "out").values()} == {"done"}
    assert all(int(r.tiles) > 0 and r.tiles_per_s > 0 for r in rows)
    # two workers (num_cpus=2, 1 CPU each) for three slides: a worker process ran more than one slide
    assert len({r.worker for r in rows}) <= 2


@needs_ray
def test_a_broken_slide_is_reported_and_the_others_go_on(tmp_path, model, slides, local, ray_local):
    bad = tmp_path / "broken.svs"
    bad.write_text("not a slide")
    out = tmp_path / "out"
    r = invoke(slides[0], bad, slides[1], "-o", out, "--model", model, *FAST, "--ray")
    assert r.exit_code == 1, r.output
    assert f"Error: {bad}" in r.output and "1 of 3 slides failed" in r.output
    assert "Traceback" not in r.output
    rows = table(out)
    assert rows["broken.svs"]["status"] == "failed" and "broken.svs" in rows["broken.svs"]["error"]
    assert rows["a.png"]["status"] == rows["b.png"]["status"] == "done"
    assert sorted(p.name for p in out.iterdir()) == ["a.mask.tif", "b.mask.tif", "cohort.csv"]
    assert same_mask(out / "b.mask.tif", local / "b.mask.tif")
    assert "2 done, 0 skipped, 1 failed" in r.output


@needs_ray
def test_a_rerun_skips_finished_slides(tmp_path, model, slides, ray_local):
    out = tmp_path / "out"
    args = [*slides[:2], "-o", out, "--model", model, *FAST, "--summary", "--ray"]
    assert invoke(*args).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "cohort.csv"}
    (out / "b.summary.json").unlink()  # b is unfinished: one of its outputs is missing
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert r.output.count("done already") == 1 and "a.png: done already" in r.output
    assert (out / "a.mask.tif").stat().st_mtime_ns == before["a.mask.tif"]
    assert (out / "b.summary.json").is_file()
    assert {k: v["status"] for k, v in table(out).items()} == {"a.png": "skipped", "b.png": "done"}
    r = invoke(*args[:-1], "--overwrite", "--ray")
    assert r.exit_code == 0 and "2 done, 0 skipped" in r.output


@needs_ray
def test_a_worker_killed_mid_slide_leaves_no_mask_and_its_retry_the_same_one(tmp_path, model, slides, local, ray_local):
    out = tmp_path / "out"
    opts = InferOptions(**{**OPTIONS.__dict__, "probs": "-"})
    armed = tmp_path / "armed"
    crashing = CrashingModel(**ModelSpec.of(model, opts).__dict__, armed=str(armed))
    armed.touch()  # no retries: the slide fails, and nothing of it is left
    rows = infer_cohort(slides[:1], crashing, out, opts, runner=RayRunner(retries=0)).rows
    assert not armed.exists(), "the worker did not reach the crash"
    assert rows[0].status == "failed" and "Ray worker was lost 1 times" in rows[0].error
    assert rows[0].attempts == 1
    assert sorted(p.name for p in out.iterdir()) == ["cohort.csv"]  # no mask, no .partial

    armed.touch()  # one retry: a new worker redoes the slide
    rows = infer_cohort(slides[:1], crashing, out, opts, runner=RayRunner(retries=1)).rows
    assert not armed.exists()
    assert rows[0].status == "done" and rows[0].attempts == 2
    assert same_mask(out / "a.mask.tif", local / "a.mask.tif")
    assert sorted(p.name for p in out.iterdir()) == ["a.mask.tif", "a.probs.npy", "cohort.csv"]  # no .partial
    assert table(out)["a.png"]["attempts"] == "2"


def test_ray_missing_is_one_error_line(tmp_path, model, slides, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = invoke(*slides[:2], "-o", tmp_path / "out", "--model", model, *FAST, "--ray")
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1] == (
        "Error: --ray needs Ray, which is not installed: pip install 'segcls[cluster]'"
    )
    assert not (tmp_path / "out").exists()


@needs_ray
def test_a_tensorrt_engine_on_a_cluster_without_gpus_is_an_error(tmp_path, slides, model, ray_local):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not needed: refused before any worker starts")
    r = invoke(*slides[:1], "-o", tmp_path / "out", "--model", engine, *FAST, "--ray")
    assert r.exit_code == 2 and "TensorRT engine, but the Ray cluster has no GPU" in r.output, r.output
    assert not list((tmp_path / "out").glob("*.mask.tif"))
    r = invoke(*slides[:1], "-o", tmp_path / "out", "--model", model, *FAST, "--ray", "--backend", "tensorrt")
    assert r.exit_code == 2 and "runs on TensorRT (--backend tensorrt), but the Ray cluster has no GPU" in r.output
    assert not list((tmp_path / "out").glob("*.mask.tif"))
