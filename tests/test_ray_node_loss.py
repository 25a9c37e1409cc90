"""A Ray cohort that loses one of its two nodes mid-way: every slide is done, identical to the local run, in
bounded time, the lost slide retried on the live node and no temporary file left behind.

Two raylets on this machine (`ray.cluster_utils.Cluster`, Ray's own test cluster: a head node and one more,
1 CPU each, so each holds one worker); the second is killed (SIGKILL, no graceful exit) while its worker is
in the middle of a slide.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import os
import signal
import threading
import time

import numpy as np
import pytest
import tifffile
from _ray_faults import HoldingModel, pickle_by_value
from _runtime_models import exported_onnx, tissue_image
from PIL import Image

from segcls.runtime.cohort import ModelSpec, infer_cohort
from segcls.runtime.options import InferOptions
from segcls.runtime.ray_runner import RayRunner

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
# ONNX Runtime named: with auto, workers (1 thread) and the local run (all cores) could time their way to
# different backends, whose labels may differ by a tie (what is compared here is the cohort machinery).
OPTIONS = InferOptions(backend="onnxruntime", tile=128, overlap=16, batch=1, slide_mpp=2.0, progress=False)
BOUND_S = 240  # node start-up ~15 s, loss detected in seconds, 6 small slides: far inside this


def pixels(path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [page.asarray() for page in tif.pages]


def test_a_cohort_that_loses_a_node_finishes_every_slide(tmp_path, tmp_path_factory):
    from ray.cluster_utils import Cluster

    model = exported_onnx(tmp_path_factory)
    slides = []
    for seed in range(6):
        slides.append(tmp_path / f"s{seed}.png")
        Image.fromarray(tissue_image(256, 384, seed=seed)).save(slides[-1])
    local = tmp_path / "local"
    assert not infer_cohort(slides, model, local, OPTIONS).failed

    gate = tmp_path / "gate"
    gate.mkdir()
    holding = HoldingModel(**ModelSpec.of(model, OPTIONS).__dict__, gate=str(gate))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        doomed = cluster.add_node(num_cpus=1)
        pickle_by_value()
        out, result = tmp_path / "ray", {}

        def run() -> None:
            runner = RayRunner(cluster.address, workers=2, cpus=1, retries=1)
            result["cohort"] = infer_cohort(slides, holding, out, OPTIONS, runner=runner)

        start = time.monotonic()
        driver = threading.Thread(target=run)
        driver.start()
        held = gate / doomed.node_id
        while not held.exists() and driver.is_alive() and time.monotonic() - start < BOUND_S:
            time.sleep(0.1)
        assert held.exists(), "the worker on the second node never started a slide"
        assert list(out.glob(".*.partial")), "the held slide is mid-way: its mask is being written"
        cluster.remove_node(doomed, allow_graceful=False)
        # A lost machine takes its processes with it; a worker whose raylet alone was killed could still
        # finish the slide and answer the driver directly (actor replies bypass the raylet).
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(held.read_text()), signal.SIGKILL)
        (gate / "release").touch()
        driver.join(BOUND_S - (time.monotonic() - start))
        assert not driver.is_alive(), f"the cohort did not finish within {BOUND_S} s of losing a node"
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()

    rows = result["cohort"].rows
    assert [r.status for r in rows] == ["done"] * len(slides), [r.error for r in rows]
    assert sum(r.attempts == 2 for r in rows) == 1 and all(r.attempts in (1, 2) for r in rows)
    for slide in slides:
        a, b = pixels(out / f"{slide.stem}.mask.tif"), pixels(local / f"{slide.stem}.mask.tif")
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{s.stem}.mask.tif" for s in slides), "cohort.csv"])
    with open(out / "cohort.csv", newline="") as f:
        assert sorted(row["attempts"] for row in csv.DictReader(f)) == ["1"] * (len(slides) - 1) + ["2"]
    assert "1 retried after a lost worker" in result["cohort"].table
