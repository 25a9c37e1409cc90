"""Scale-out on one machine: slides/s of a Ray cohort with 1 vs 2 workers, tiles/s of training with 1 vs 2
torchrun processes. Configurations alternate within each round, so a busy shared host slows them alike."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from segcls.bench.report import check_results, results_options, write_results
from segcls.core.cli import command, input_path, require_extra


def ray_workers(slides: list[Path], model: Path, workers: tuple[int, ...] = (1, 2), rounds: int = 3, **options):
    """Seconds for the whole cohort per worker count (Ray started once, 1 CPU and 1 ORT thread per worker)."""
    import ray

    from segcls.runtime.cohort import infer_cohort
    from segcls.runtime.options import InferOptions
    from segcls.runtime.ray_runner import RayRunner

    opts = InferOptions(progress=False, **options)
    seconds: dict[int, list[float]] = {w: [] for w in workers}
    ray.init(num_cpus=max(workers), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as out:
            for _ in range(rounds):
                for w in workers:
                    start = time.perf_counter()
                    cohort = infer_cohort(slides, model, out, opts, runner=RayRunner(workers=w), overwrite=True)
                    seconds[w].append(time.perf_counter() - start)
                    assert not cohort.failed, cohort.rows
    finally:
        ray.shutdown()
    return {f"{w} workers": _stats(len(slides) / s for s in seconds[w]) | {"seconds": seconds[w]} for w in workers}


def ddp_processes(dataset: Path, configs=((1, 1), (1, 2), (2, 1)), rounds: int = 3, args: tuple[str, ...] = ()):
    """Training tiles/s (metrics.json, validation excluded) per (processes, threads per process)."""
    train = Path(sys.executable).parent / "segcls-train"
    rates: dict[tuple, list[float]] = {c: [] for c in configs}
    for _ in range(rounds):
        for procs, threads in configs:
            with tempfile.TemporaryDirectory() as out:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
                cmd += ["--master_addr", "127.0.0.1", "--master_port", "29533", str(train), str(dataset), "-o", out]
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                subprocess.run([*cmd, "-q", *args], env=env, check=True, capture_output=True)
                rates[(procs, threads)].append(json.loads((Path(out) / "metrics.json").read_text())["tiles_per_s"])
    return {f"{p} proc x {t} thread": _stats(rates[(p, t)]) | {"tiles_per_s": rates[(p, t)]} for p, t in configs}


def _stats(values) -> dict:
    values = sorted(values)
    return {"median": round(statistics.median(values), 4), "min": round(values[0], 4), "max": round(values[-1], 4)}


def machine() -> dict:
    import torch

    return {
        "cpus": len(os.sched_getaffinity(0)),
        "load_avg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": _version("ray"),
        "onnxruntime": _version("onnxruntime"),
    }


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


def markdown(doc: dict) -> str:
    """The tables of a cluster benchmark's results (`doc`: machine, command and one section per kind)."""
    lines = [f"`{doc['command']}`", "", f"machine: {doc['machine']}", ""]
    for section in ("ray", "ddp"):
        key = "slides/s" if section == "ray" else "tiles/s"
        lines += [f"## {section}", "", f"| config | median {key} | min | max |", "|---|---|---|---|"]
        lines += [f"| {name} | {r['median']} | {r['min']} | {r['max']} |" for name, r in doc[section].items()]
        lines.append("")
    return "\n".join(lines)


@command("cluster")
@click.argument("slides", nargs=-1, required=True, type=input_path())
@click.option("--model", required=True, type=input_path(dir_okay=False), help="Model for the cohort.")
@click.option("--dataset", required=True, type=input_path(file_okay=False), help="Training dataset folder.")
@click.option("--rounds", default=3, type=click.IntRange(1), help="Rounds; the configurations alternate in each.")
@click.option("--slide-mpp", type=float, default=2.0, help="Level-0 um/px of slides without one.")
@click.option(
    "--train-args",
    default="--epochs 1 --steps-per-epoch 6 --batch-size 16 --tile 64 --device cpu",
    help="segcls-train options of the timed training runs.",
)
@results_options("cluster")
def cluster_command(
    slides, model: Path, dataset: Path, rounds: int, slide_mpp: float, train_args: str, output: Path,
    overwrite: bool, quiet: bool,
) -> None:  # fmt: skip
    """Ray cohort slides/s with 1 vs 2 workers, and torchrun training tiles/s with 1 vs 2 processes."""
    import shlex
    import sys

    check_results(output, overwrite)
    require_extra("cluster", "ray")
    require_extra("train", "torch")
    opts = dict(tile=256, overlap=32, batch=2, slide_mpp=slide_mpp)
    results = {"ray": ray_workers(list(slides), model, rounds=rounds, **opts)}
    results["ddp"] = ddp_processes(dataset, rounds=rounds, args=tuple(shlex.split(train_args)))
    doc = {"machine": machine(), "command": "segcls-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]), **results}
    text = markdown(doc)
    write_results(output, doc, text, command=False)  # the table names the command already
    click.echo(text)
