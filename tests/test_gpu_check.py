"""bench/gpu_check.sh + gpu_check.py on the CPU: the budgets fit one call by construction, the report is
written after every step, a step past its budget is stopped and the next one runs, the read-only baseline
plans the GPU run's tiles; and (slow) the whole script end to end at toy sizes, which proves it runs,
nothing about a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from _runtime_models import save_checkpoint

from segcls.bench import gpu_check
from segcls.bench.gpu_check import BUDGET_S, STEPS, run_check, total_budget
from segcls.bench.gpu_steps import NullBackend, Settings
from segcls.runtime.backends import Backend, open_backend
from segcls.runtime.pipeline import InferOptions
from segcls.runtime.plan import plan_tiles
from segcls.runtime.slide import open_slide

REPO = Path(__file__).parent.parent
SCRIPT = REPO / "bench" / "gpu_check.sh"
CMU = Path(__file__).parent / "data" / "cmu-1-small-region.svs"
ONE_CALL_S = 7 * 60  # the GPU machine gives one call 10 minutes; the check keeps under 7


def _script_seconds(name: str) -> int:
    return int(re.search(rf"^{name}=(\d+)$", SCRIPT.read_text(), re.M).group(1))


def test_budgets_fit_one_call():
    install, check, kill = _script_seconds("INSTALL_S"), _script_seconds("CHECK_S"), _script_seconds("KILL_S")
    assert BUDGET_S == sum(b for b, _ in STEPS.values()) + gpu_check.START_S <= check
    assert install + check + kill <= ONE_CALL_S - 5
    assert "tests" in STEPS and {"agreement", "eager", "graph", "compile", "e2e", "train"} <= STEPS.keys()


# Steps for the runner's own test (module level: a spawned process imports them by name).
def _quick(settings: Settings, work: Path) -> dict:
    (work / "quick").write_text("ran")
    return {"value": 1}


def _slow(settings: Settings, work: Path) -> dict:
    time.sleep(60)
    return {"value": 2}


def _broken(settings: Settings, work: Path) -> dict:
    raise ValueError("boom")


def _after(settings: Settings, work: Path) -> dict:
    return {"saw_quick": (work / "quick").read_text()}


def test_report_after_every_step_and_a_step_stopped_at_its_budget(tmp_path):
    seen = []

    def echo(line: str) -> None:  # called after each step's report write
        if not line.startswith("=="):
            seen.append(list(json.loads((tmp_path / "gpu-check.json").read_text())["steps"]))

    steps = {"quick": (20, _quick), "slow": (2, _slow), "broken": (20, _broken), "after": (20, _after)}
    start = time.perf_counter()
    report = run_check(tmp_path, Settings.toy(), steps, notes={"wheels": "none"}, echo=echo)
    assert time.perf_counter() - start < 45  # the slow step was stopped, not waited for
    assert seen == [["quick"], ["quick", "slow"], ["quick", "slow", "broken"], ["quick", "slow", "broken", "after"]]
    out = report["steps"]
    assert out["quick"]["status"] == "done" and out["quick"]["value"] == 1
    assert out["slow"]["status"] == "timed out" and out["slow"]["seconds"] < 2 + 2 * gpu_check.STOP_GRACE_S
    assert out["broken"]["status"] == "failed" and out["broken"]["error"] == "ValueError: boom"
    assert out["after"] == out["after"] | {"status": "done", "saw_quick": "ran"}  # one work folder for all
    assert report["budget_s"]["total"] == total_budget(steps) and report["notes"] == {"wheels": "none"}
    assert not gpu_check.succeeded(report)
    md = (tmp_path / "gpu-check.md").read_text()
    assert "| slow | timed out |" in md and "stopped after its budget of 2 s" in md


class _GpuLike(Backend):
    """Any backend on a GPU, as the planner sees it."""

    @property
    def on_cpu(self) -> bool:
        return False

    def load(self) -> None:
        pass

    def infer(self, batch):
        raise NotImplementedError


def test_read_only_baseline_plans_the_gpu_runs_tiles(tmp_path):
    """e2e is held against min(backend-only, read-only): the read-only run must do the GPU run's reading
    (whole tiles), not a CPU run's (tiles trimmed to their tissue); and a CPU reference with trim=False
    plans the very tiles of a GPU run (tests/test_gpu_torch_backend.py's slide test)."""
    with open_backend(save_checkpoint(tmp_path / "m.pt"), "torch", device="cpu") as cpu:
        description = cpu.description
        opts = InferOptions(mpp=2.0, tile=512, batch=2, progress=False)
        gpu = _GpuLike()
        gpu.description = description
        nulls = {on_cpu: NullBackend(description, 3, on_cpu=on_cpu) for on_cpu in (False, True)}
        for null in nulls.values():
            null.load()
        with open_slide(CMU) as slide:
            planned = {
                "gpu": plan_tiles(slide, gpu, opts).tiles,
                "null beside a gpu": plan_tiles(slide, nulls[False], opts).tiles,
                "null beside a cpu": plan_tiles(slide, nulls[True], opts).tiles,
                "cpu": plan_tiles(slide, cpu, opts).tiles,
                "cpu, whole tiles": plan_tiles(slide, cpu, replace(opts, trim=False)).tiles,
            }
    assert planned["null beside a gpu"] == planned["gpu"] == planned["cpu, whole tiles"]
    assert planned["null beside a cpu"] == planned["cpu"] != planned["gpu"]  # trimming matters on this slide
    assert nulls[False].fixed_tile and not nulls[True].fixed_tile


@pytest.mark.slow  # ~2 min on 2 cores, much more when they are busy: each step starts a Python with torch
def test_the_whole_script_runs_on_a_cpu_at_toy_sizes(tmp_path):
    """bash bench/gpu_check.sh as the GPU machine runs it, on the CPU, with toy sizes and budgets x10 (a
    shared 2-core machine). The compiled modes are left out here (Inductor compiles for minutes on 2 cores;
    tests/test_torch_backend_stream.py runs one); graph mode reports itself skipped without CUDA."""
    args = "--device cpu --toy --skip compile --skip compile-graph"
    env = os.environ | {"GPU_CHECK_ARGS": args, "GPU_CHECK_SCALE": "10", "WHEELS": str(tmp_path / "none"),
                        "PYTHON": sys.executable}  # fmt: skip
    env.pop("SEGCLS_REQUIRE_GPU", None)
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    steps = report["steps"]
    assert list(steps) == [name for name in STEPS if "compile" not in name]
    assert {name for name, out in steps.items() if out["status"] != "done"} == {"graph"}
    assert steps["graph"]["skipped"] == "CUDA graphs need a CUDA GPU"
    assert steps["tests"]["skipped"] == steps["tests"]["tests"] > 0 and not steps["tests"]["require_gpu"]
    assert steps["agreement"]["fp32"]["labels_agreement"] == 1.0  # CPU fp32 against itself
    assert [p["batch"] for p in steps["eager"]["throughput"]] == [1, 2]
    e2e = steps["e2e"]["modes"]["eager"]
    assert e2e["same_tiles_as_read_only"] and e2e["tiles"] == steps["e2e"]["read_only"]["tiles"] > 0
    assert steps["train"]["steps_per_s"] > 0 and not steps["train"]["amp"]
    assert report["notes"] == {"wheels": "none carried"}
    assert report["segcls"].startswith(f"{REPO} (")  # imported from this very tree, not from a wheel
    assert "| e2e | done |" in (tmp_path / "out" / "gpu-check.md").read_text()
    assert "e2e tiles/s: eager" in result.stdout


def test_gpu_wheels_start_afresh_and_carry_only_what_the_gpu_machine_lacks(tmp_path):
    """Two versions of a package in the folder stop `pip install`; segcls is not a wheel (the check imports
    the live tree); the packages are the ones the GPU machine lacks, at requirements-cpu.txt's versions.
    `pip download` is a stand-in here (PYTHON), which writes a wheel per requested package."""
    dest = tmp_path / "whl"
    dest.mkdir()
    (dest / "imagecodecs-2024.1.1-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"old")
    (dest / "segcls-0.1.0-py3-none-any.whl").write_bytes(b"stale")
    log = tmp_path / "pip-args"
    python = tmp_path / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$@" >> {log}\n'
        "while [[ $# -gt 0 ]]; do case $1 in\n"
        "  --dest) d=$2; shift 2;;\n"
        '  *==*) touch "$d/${1%%==*}-${1##*==}-py3-none-any.whl"; shift;;\n'
        "  *) shift;;\n"
        "esac; done\n"
    )
    python.chmod(0o755)
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_wheels.sh"), str(dest)],
                            env=os.environ | {"PYTHON": str(python)}, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    pins = dict(line.split()[0].split("==") for line in (REPO / "requirements-cpu.txt").read_text().splitlines()
                if "==" in line)  # fmt: skip
    wanted = ["openslide-bin", "openslide-python", "imagecodecs", "simplejpeg", "pytest-timeout"]
    assert sorted(p.name for p in dest.glob("*.whl")) == sorted(f"{p}-{pins[p]}-py3-none-any.whl" for p in wanted)
    (args,) = log.read_text().splitlines()  # one download, no `pip wheel .` of segcls
    assert args.startswith("-m pip download") and "--python-version 3.12" in args and "--no-deps" in args
