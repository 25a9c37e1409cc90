"""The one-call GPU check that bench/gpu_check.sh runs: under 7 minutes on the GPU machine of
../shared/NOTES.md by construction, and a report however the call ends.

Every step runs in a process of its own and is stopped when its budget is spent; the budgets add up to
BUDGET_S, which gpu_check.sh's limit covers. OUT_DIR/gpu-check.json and gpu-check.md are rewritten after
every step, so a call cut short still brings back each step that finished.

    python -P -m segcls.bench.gpu_check OUT_DIR                      # on the GPU machine (gpu_check.sh)
    python -P -m segcls.bench.gpu_check OUT_DIR --device cpu --toy   # every step on a CPU, toy sizes

Steps (bench/gpu_steps.py): tests (the `gpu` tests, a skip failing where nvidia-smi lists a GPU: only
TensorRT and ONNX Runtime CUDA may skip), prepare (checkpoint, CPU FP32 reference, synthetic slide),
agreement (torch fp32 / tf32 / fp16 vs CPU FP32), eager / graph / compile / compile-graph (tiles/s of each
torch mode), e2e (e2e vs backend-only vs read-only on the slide; target e2e >= 0.8 x min of the two),
train (training steps/s with AMP). A CPU run proves the script runs; it says nothing about a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path

import click

from segcls.bench import gpu_steps
from segcls.bench.bench_infer import cpu_line, machine
from segcls.bench.gpu_steps import Settings
from segcls.core.atomic import atomic_path

# name -> (seconds, what runs in the step's process; None: the tests, run by pytest). The measured steps
# need `prepare`'s files. Each budget includes its process's start (Python, torch, CUDA: ~5 s).
STEPS: dict[str, tuple[float, Callable | None]] = {
    "tests": (90, None),
    "prepare": (30, gpu_steps.prepare),
    "agreement": (25, gpu_steps.precision_agreement),
    "eager": (30, functools.partial(gpu_steps.torch_mode, mode="eager")),
    "graph": (25, functools.partial(gpu_steps.torch_mode, mode="graph")),
    "e2e": (35, gpu_steps.end_to_end),
    "train": (25, gpu_steps.training),
    "compile": (60, functools.partial(gpu_steps.torch_mode, mode="compile")),
    "compile-graph": (30, functools.partial(gpu_steps.torch_mode, mode="compile-graph")),  # Inductor's cache is warm
}
START_S = 15  # this process's own start, the report writes and the stops of steps cut short


def total_budget(steps: dict[str, tuple[float, Callable | None]]) -> float:
    """The most a check of `steps` takes: their budgets and this process's own share."""
    return sum(budget for budget, _ in steps.values()) + START_S


BUDGET_S = total_budget(STEPS)  # gpu_check.sh's CHECK_S must cover it (tests/test_gpu_check.py)
STOP_GRACE_S = 5  # a step past its budget: SIGTERM, this long, then SIGKILL (its whole process group)


def gpu_info() -> dict:
    """nvidia-smi's view of the GPUs (name, compute capability, driver, memory), or why there is none."""
    query = "name,compute_cap,driver_version,memory.total"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"nvidia-smi: {e}"}
    rows = [
        dict(zip(query.split(","), (v.strip() for v in line.split(",")), strict=False))
        for line in out.stdout.splitlines()
    ]
    return {"gpus": rows} if rows else {"error": out.stderr.strip() or "no GPU listed"}


def versions() -> dict:
    """Installed versions, read from metadata (this process imports no torch)."""
    out = {"python": sys.version.split()[0]}
    for package in ("torch", "numpy", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tifffile", "imagecodecs",
                    "openslide-python", "openslide-bin", "triton", "pytest"):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


def source() -> str:
    """The segcls tree this runs (gpu_check.sh imports it from the working tree itself)."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        described = ""
    return f"{Path(gpu_steps.__file__).resolve().parent.parent} ({described or 'not a git tree'})"


# -- running the steps -------------------------------------------------------------------------------


def _child(step: Callable, settings: Settings, work: Path, result: Path) -> None:
    """A step's process: its own process group (so a stop takes whatever it started), its result as JSON."""
    os.setpgrp()
    try:
        out = {"status": "done"} | step(settings, work)
        if "skipped" in out:
            out["status"] = "skipped"
    except Exception as e:
        last = traceback.extract_tb(e.__traceback__)[-1]
        out = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:600], "at": f"{last.filename}:{last.lineno}"}
    with atomic_path(result) as tmp:
        tmp.write_text(json.dumps(out, default=str))


def _stop(pid: int, alive: Callable[[], bool], first: signal.Signals = signal.SIGTERM) -> None:
    for sig in (first, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not alive():
            return


_running: set[int] = set()  # process groups of the steps running now, stopped if this process is


def _stop_steps_and_exit(signum, frame) -> None:
    """The check itself is stopped (gpu_check.sh's limit): stop the step running, keep the report."""
    for pid in list(_running):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    raise SystemExit(f"stopped by signal {signum}; the report holds every step that finished")


def run_step(name: str, step: Callable, settings: Settings, work: Path, budget: float) -> dict:
    """Run `step` in a spawned process for at most `budget` seconds; what it returned, or why not."""
    result = work / f"{name}.result.json"
    process = multiprocessing.get_context("spawn").Process(
        target=_child, args=(step, settings, work, result), name=f"gpu-check-{name}"
    )  # not a daemon: a step may start processes of its own (the dataset renderer, Inductor's compilers)
    start = time.perf_counter()
    process.start()
    _running.add(process.pid)
    try:
        process.join(budget)
        if process.is_alive():
            _stop(process.pid, process.is_alive)
            process.join()
    finally:
        _running.discard(process.pid)
    if process.exitcode in (-signal.SIGTERM, -signal.SIGKILL) and not result.is_file():
        out = {"status": "timed out", "error": f"stopped after its budget of {budget:.0f} s"}
    elif result.is_file():
        out = json.loads(result.read_text())
    else:
        out = {"status": "failed", "error": f"its process ended with exit code {process.exitcode} and no result"}
    return out | {"seconds": round(time.perf_counter() - start, 2), "budget_s": budget}


def gpu_test_files(tests: Path) -> list[str]:
    """The test files with `gpu` tests (read, not imported)."""
    return sorted(p.name for p in tests.glob("test_*.py") if "pytest.mark.gpu" in p.read_text())


def run_tests(out_dir: Path, budget: float, repo: Path) -> dict:
    """pytest -m gpu over the gpu test files, stopped (SIGINT first: pytest then writes its report) at the
    budget. With a GPU listed by nvidia-smi, SEGCLS_REQUIRE_GPU=1 makes a skip a failure (tests/conftest.py)."""
    tests = repo / "tests"
    if not tests.is_dir():
        return {"status": "skipped", "skipped": f"no tests/ folder in {repo}"}
    require = "1" if "gpus" in gpu_info() else "0"
    junit, log = out_dir / "gpu-tests.xml", out_dir / "gpu-tests.log"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-P", "-m", "pytest", "-m", "gpu", "-rs", "-p", "no:cacheprovider", "--junitxml", str(junit)]
    env = os.environ | {"SEGCLS_REQUIRE_GPU": require}
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*cmd, *gpu_test_files(tests)], cwd=tests, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        _running.add(process.pid)
        try:
            code = process.wait(budget - 2 * STOP_GRACE_S)
            status = "done"
        except subprocess.TimeoutExpired:
            _stop(process.pid, lambda: process.poll() is None, first=signal.SIGINT)
            code, status = process.wait(), "timed out"
        finally:
            _running.discard(process.pid)
    report = {"status": status, "exit_code": code, "require_gpu": require == "1"} | test_results(junit)
    tail = log.read_text(errors="replace").splitlines()[-30:]
    return report | {"output_tail": tail, "seconds": round(time.perf_counter() - start, 2), "budget_s": budget}


def test_results(junit_xml: Path) -> dict:
    """Counts and the names of failed / skipped tests from pytest's --junitxml report."""
    import xml.etree.ElementTree as ET

    if not junit_xml.is_file():
        return {"error": f"no pytest report at {junit_xml}"}
    root = ET.parse(junit_xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    out: dict = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    out["not_passed"] = {}
    for case in suite.iter("testcase"):
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                name = f"{case.get('classname')}::{case.get('name')}"
                out["not_passed"][name] = f"{kind}: {(node.get('message') or '')[:300]}"
    return out


def run_check(
    out_dir: Path,
    settings: Settings,
    steps: dict[str, tuple[float, Callable | None]] = STEPS,
    notes: dict | None = None,
    repo: Path | None = None,
    echo: Callable[[str], None] = lambda line: None,
) -> dict:
    """Run `steps` in order, each within its budget; the report is written after every one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "command": " ".join(sys.argv),
        "settings": asdict(settings),
        "machine": machine() | gpu_info(),
        "versions": versions(),
        "segcls": source(),
        "budget_s": {name: budget for name, (budget, _) in steps.items()} | {"total": total_budget(steps)},
        "notes": notes or {},
        "steps": {},
    }
    write_report(report, out_dir)
    with tempfile.TemporaryDirectory(prefix="segcls-gpu-check-") as tmp:
        work = Path(tmp)
        for name, (budget, step) in steps.items():
            echo(f"== {name} (at most {budget:.0f} s)")
            prepared = report["steps"].get("prepare", {}).get("status") == "done"
            if step is None:
                out = run_tests(out_dir, budget, repo or Path.cwd())
            elif name != "prepare" and "prepare" in steps and not prepared:
                out = {"status": "skipped", "skipped": "the prepare step did not finish"}
            else:
                out = run_step(name, step, settings, work, budget)
            report["steps"][name] = out
            write_report(report, out_dir)
            echo(step_line(name, out))
    return report


# -- the report --------------------------------------------------------------------------------------


def _tps(points: list[dict]) -> str:
    return ", ".join(f"b{p['batch']} {p['tiles_per_s']}" for p in points)


def step_line(name: str, out: dict) -> str:
    """One line per step: its status, its time, and the figures that matter."""
    head = f"{name:<14} {out['status']:<9} {out.get('seconds', 0):6.1f} s of {out.get('budget_s', 0):.0f}"
    return f"{head}  {step_result(name, out)}".rstrip()


def step_result(name: str, out: dict) -> str:
    """The figures of a step that matter, or why it has none."""
    if out["status"] != "done" or "error" in out:
        return out.get("error") or out.get("skipped") or ""
    if name == "tests":
        return f"{out['tests']} run, {out['failures']} failed, {out['errors']} errors, {out['skipped']} skipped"
    if name == "agreement":
        parts = [f"{p} {a['labels_agreement']:.4f} (probs {a['probs_max_abs_diff']:.1e})" for p, a in out.items()
                 if isinstance(a, dict) and "labels_agreement" in a]  # fmt: skip
        return "labels vs CPU FP32: " + ", ".join(parts)
    if "throughput" in out:
        labels = out["agreement_vs_cpu_fp32"]["labels_agreement"]
        return f"tiles/s {_tps(out['throughput'])}; labels vs CPU FP32 {labels:.4f}"
    if name == "e2e":
        parts = [
            f"{mode} {e['tiles_per_s']} = {e['e2e_over_min']} x min(backend {e['backend_only_tiles_per_s']}, "
            f"read {e['read_only_tiles_per_s']}) {'met' if e['target_met'] else 'MISSED'}"
            for mode, e in out["modes"].items()
        ]
        return "e2e tiles/s: " + "; ".join(parts or [f"read-only {out['read_only']['tiles_per_s']}"])
    if name == "prepare":
        env, slide = out["environment"], out["slide"]
        where = f"CUDA {env['torch_cuda']}, {env.get('gpu', 'no GPU visible to torch')}"
        return (f"torch {env['torch']} ({where}); CPU FP32 reference {out['cpu_reference_s']} s; "
                f"{slide['size_px']} px {slide['compression']} slide {out['slide_s']} s")  # fmt: skip
    if name == "train":
        return f"{out['steps_per_s']} steps/s ({out['tiles_per_s']} tiles/s, AMP {out['amp']}, {out['device']})"
    return ""


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    gpus = ", ".join(f"{g['name']} (sm {g['compute_cap']}, driver {g['driver_version']})" for g in m.get("gpus", []))
    lines = [
        f"GPU check: {gpus or m.get('error', 'no GPU')}; CPU {cpu_line(m)}, {m['cores']} cores",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"segcls: {report['segcls']}",
        f"Command: `{report['command']}`; device {s['device']}, tile {s['tile']} px, precision {s['precision']}, "
        f"slide {s['slide_px']} px, e2e batch {s['e2e_batch']}",
        *(f"Note: {k}: {v}" for k, v in report["notes"].items()),
        "",
        "| step | status | seconds (budget) | result |",
        "|---|---|---|---|",
    ]
    for name, out in report["steps"].items():
        seconds = f"{out.get('seconds', 0)} ({out.get('budget_s', 0):.0f})"
        lines.append(f"| {name} | {out['status']} | {seconds} | {step_result(name, out)} |")
    tests = report["steps"].get("tests", {})
    if tests.get("not_passed"):
        lines += ["", "Tests not passed:", *(f"- {k}: {v}" for k, v in tests["not_passed"].items())]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> None:
    with atomic_path(out_dir / "gpu-check.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    with atomic_path(out_dir / "gpu-check.md") as tmp:
        tmp.write_text(markdown(report))


def succeeded(report: dict) -> bool:
    """Every step done (skips are allowed only where a step says why) and the tests passed."""
    steps = report["steps"].values()
    tests = report["steps"].get("tests", {})
    return all(o["status"] in ("done", "skipped") for o in steps) and tests.get("exit_code", 0) == 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--device", default="cuda", show_default=True, help="cuda, or cpu to test this script.")
@click.option("--toy", is_flag=True, help="Toy sizes (seconds per step on a CPU): proves the script runs.")
@click.option("--only", multiple=True, type=click.Choice(list(STEPS)), help="Run these steps only (repeatable).")
@click.option("--skip", multiple=True, type=click.Choice(list(STEPS)), help="Leave these steps out (repeatable).")
@click.option("--note", multiple=True, help="KEY=TEXT recorded in the report (e.g. how the wheels installed).")
@click.option("--budget-scale", default=1.0, show_default=True, help="Multiplies every step's budget (a slow CPU).")
def main(out_dir: Path, device: str, toy: bool, only: tuple[str, ...], skip: tuple[str, ...],
         note: tuple[str, ...], budget_scale: float) -> None:  # fmt: skip
    """Run the GPU check's steps within their budgets; OUT_DIR gets gpu-check.json and gpu-check.md."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_steps_and_exit)
    settings = Settings.toy(device) if toy else replace(Settings(), device=device)
    steps = {k: (b * budget_scale, f) for k, (b, f) in STEPS.items() if (not only or k in only) and k not in skip}
    notes = dict(n.split("=", 1) if "=" in n else (n, "") for n in note)
    click.echo(f"GPU check: {len(steps)} steps, at most {total_budget(steps):.0f} s; the report after each")
    report = run_check(out_dir, settings, steps, notes, echo=click.echo)
    click.echo(f"results: {out_dir}/gpu-check.json, gpu-check.md, gpu-tests.xml, gpu-tests.log")
    sys.exit(0 if succeeded(report) else 1)


if __name__ == "__main__":
    main()
