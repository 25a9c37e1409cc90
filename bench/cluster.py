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


def write_results(path: Path, results: dict, command: str) -> None:
    """JSON + a markdown table beside it."""
    doc = {"machine": machine(), "command": command, **results}
    path.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# {path.stem}", "", f"`{command}`", "", f"machine: {doc['machine']}", ""]
    for section, rows in results.items():
        key = "slides/s" if section == "ray" else "tiles/s"
        lines += [f"## {section}", "", f"| config | median {key} | min | max |", "|---|---|---|---|"]
        lines += [f"| {name} | {r['median']} | {r['min']} | {r['max']} |" for name, r in rows.items()]
        lines.append("")
    path.with_suffix(".md").write_text("\n".join(lines))


@click.command("cluster")
@click.argument("slides", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", required=True, type=click.Path(exists=True, path_type=Path), help="Model for the cohort.")
@click.option("--dataset", required=True, type=click.Path(exists=True, path_type=Path), help="Training dataset.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Results: OUT.json + OUT.md.")
@click.option("--rounds", default=3, show_default=True, help="Rounds; the configurations alternate in each.")
@click.option("--slide-mpp", type=float, default=2.0, show_default=True, help="For slides without an mpp.")
@click.option("--train-args", default="--epochs 1 --steps-per-epoch 6 --batch-size 16 --tile 64 --device cpu")
def cluster_command(
    slides, model: Path, dataset: Path, out: Path, rounds: int, slide_mpp: float, train_args: str
) -> None:
    """Ray cohort slides/s with 1 vs 2 workers, and torchrun training tiles/s with 1 vs 2 processes."""
    import shlex
    import sys

    from segcls.bench.cluster import ddp_processes, ray_workers, write_results

    opts = dict(tile=256, overlap=32, batch=2, slide_mpp=slide_mpp)
    results = {"ray": ray_workers(list(slides), model, rounds=rounds, **opts)}
    results["ddp"] = ddp_processes(dataset, rounds=rounds, args=tuple(shlex.split(train_args)))
    write_results(out, results, "segcls-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    click.echo(out.with_suffix(".md").read_text())
