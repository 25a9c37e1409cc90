"""`segcls-bench latency`: per-call latency and throughput of backends and precisions, side by side.

    segcls-bench latency model.onnx model.int8.onnx model.onnx@openvino model.onnx@openvino:bf16 \
        model.int8.onnx@openvino --batch 1 --tile 1024 --slide dense.tif --mpp 1.0 -o out.json

Every MODEL is loaded into one process: `PATH` runs on the backend of its file type (.onnx ONNX Runtime,
.pt torch eager, .engine TensorRT) or on `--backend`, `PATH@BACKEND` on that backend, `PATH@BACKEND:PRECISION`
also in that precision (e.g. `model.onnx@openvino:bf16`); the precision run is read back from the backend.
For each (tile, batch) all models are warmed up, then timed in rounds that alternate them, so a ratio
between two models is measured under the same machine load (the machines this runs on are shared):
`speedup_vs_first` is the median of the per-round throughput ratios against the first MODEL, with their
min and max. Latency percentiles pool every timed call. `labels_agree_with_first` is the share of labels
equal to the first MODEL's on the timed tiles: random pixels, or with `--slide` the first tiles with tissue
of that slide read at `--mpp`, real texture. Peak RSS is measured apart, in a fresh process per (model,
tile, batch) that loads the model and runs two calls, because a process's peak only grows and these
models would share one. The machine's ISA flags (AVX-512, VNNI, BF16) are in the report: kernels depend
on them.
"""

from __future__ import annotations

import os
import resource
import shlex
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import click
import numpy as np

from segcls.bench.bench_infer import cpu_line, int_list
from segcls.bench.report import check_results, results_options, write_results
from segcls.core.cli import command, input_path
from segcls.core.errors import SegclsError


@dataclass(frozen=True)
class LatencyOptions:
    backend: str = "auto"
    batches: tuple[int, ...] = (1, 4, 8)
    tiles: tuple[int, ...] = (512, 1024)
    threads: int = os.cpu_count() or 1
    warmup: int = 2  # untimed calls per model and (tile, batch)
    rounds: int = 5
    runs: int = 2  # timed calls per model per round
    memory: bool = True  # peak RSS in a separate process per configuration
    sessions: int = 1  # ONNX Runtime CPU sessions sharing `threads` (a batch's tiles split over them)


@dataclass(frozen=True)
class ModelRun:
    """One MODEL argument: `PATH[@BACKEND[:PRECISION]]`."""

    path: Path
    backend: str | None = None  # None: --backend
    precision: str | None = None  # None: the model's own

    @classmethod
    def parse(cls, text: str) -> ModelRun:
        path, _, spec = str(text).partition("@")
        backend, _, precision = spec.partition(":")
        return cls(Path(path), backend or None, precision or None)

    def __str__(self) -> str:
        spec = f"@{self.backend}" if self.backend else ""
        return f"{self.path}{spec}{f':{self.precision}' if self.precision else ''}"


def _open(run: ModelRun, backend: str, threads: int, sessions: int = 1):
    from segcls.runtime.backends import backend_for, open_backend

    backend = run.backend or backend
    kind = backend_for(run.path) if backend == "auto" else backend
    if kind == "torch":
        import torch

        torch.set_num_threads(threads)
    kwargs = {"threads": threads, "sessions": sessions} if kind in ("onnxruntime", "openvino") else {}
    return open_backend(run.path, backend, precision=run.precision, **kwargs)


def _peak_rss_mb(model: str, backend: str, threads: int, sessions: int, tile: int, batch: int) -> float:
    """Run in a fresh process: load, two calls, peak RSS."""
    instance = _open(ModelRun.parse(model), backend, threads, sessions)
    images = np.random.default_rng(0).integers(0, 256, (batch, tile, tile, 3), dtype=np.uint8)
    for _ in range(2):
        instance.infer(images)
    instance.close()
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak RSS: Linux's VmHWM, which belongs to the address space and so starts afresh at
    exec. `ru_maxrss` does not: Linux carries it over from the process that forked this one, so a spawned
    child would report at least its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def _percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)} | {"mean": round(ms.mean(), 2)}


def measure_latency(
    models: list[str | Path],
    options: LatencyOptions = LatencyOptions(),
    progress: bool = True,
    images: Callable[[int, int], np.ndarray] | None = None,
) -> dict:
    """Latency, throughput and peak RSS of each model at each (tile, batch); see the module docstring.

    `images(batch, tile)`: the timed input (default: seeded random pixels)."""
    from tqdm import tqdm

    from segcls.bench.bench_infer import machine, versions
    from segcls.core.constants import check_multiple

    if not models:
        raise SegclsError("give at least one MODEL")
    for tile in options.tiles:
        check_multiple("tile size", tile)
    if min(options.batches) < 1 or min(options.rounds, options.runs, options.threads, options.sessions) < 1:
        raise SegclsError("batch sizes, rounds, runs, threads and sessions must be >= 1")
    models = [ModelRun.parse(m) for m in models]
    for m in models:
        if not m.path.exists():
            raise SegclsError(f"model not found: {m.path}")
    backends = [_open(m, options.backend, options.threads, options.sessions) for m in models]
    rng = np.random.default_rng(0)
    results = []
    configs = [(t, b) for t in options.tiles for b in options.batches]
    steps = len(configs) * len(models) * (options.warmup + options.rounds * options.runs)
    with tqdm(total=steps, desc="latency", unit="call", disable=not progress) as bar:
        for tile, batch in configs:
            pixels = images(batch, tile) if images else rng.integers(0, 256, (batch, tile, tile, 3), dtype=np.uint8)
            labels = [np.array(backend.infer(pixels).labels) for backend in backends]  # also a first warm-up call
            for backend in backends:
                for _ in range(options.warmup):
                    backend.infer(pixels)
                    bar.update()
            calls: list[list[float]] = [[] for _ in backends]
            per_round: list[list[float]] = [[] for _ in backends]  # tiles/s of each round
            for _ in range(options.rounds):
                for i, backend in enumerate(backends):
                    start_round = time.perf_counter()
                    for _ in range(options.runs):
                        start = time.perf_counter()
                        backend.infer(pixels)
                        calls[i].append(time.perf_counter() - start)
                        bar.update()
                    per_round[i].append(batch * options.runs / (time.perf_counter() - start_round))
            for i, (model, backend) in enumerate(zip(models, backends, strict=True)):
                latency = _percentiles(calls[i])
                ratios = np.asarray(per_round[i]) / np.asarray(per_round[0])
                results.append({
                    "model": str(model.path), "run": str(model), "backend": backend.name,
                    "precision": backend.precision or "fp32", "device": backend.device, "tile": tile, "batch": batch,
                    "calls": len(calls[i]), "labels_agree_with_first": round(float((labels[i] == labels[0]).mean()), 5),
                    "latency_ms": latency,
                    "tiles_per_s": round(batch * 1000 / latency["p50"], 3),
                    "mpix_per_s": round(batch * tile * tile / 1e6 * 1000 / latency["p50"], 3),
                    "speedup_vs_first": {"median": round(float(np.median(ratios)), 3),
                                         "min": round(float(ratios.min()), 3), "max": round(float(ratios.max()), 3)},
                    "peak_rss_mb": None,
                })  # fmt: skip
    for backend in backends:
        backend.close()
    if options.memory:
        # One fresh process per configuration (max_tasks_per_child=1): a reused one keeps its peak.
        with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
            for r in tqdm(results, desc="peak RSS", unit="process", disable=not progress):
                args = (r["run"], options.backend, options.threads, options.sessions, r["tile"], r["batch"])
                rss = pool.submit(_peak_rss_mb, *args)
                r["peak_rss_mb"] = round(rss.result(), 1)
    return {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        "versions": versions(),
        "threads": options.threads,
        "sessions": options.sessions,
        "warmup": options.warmup,
        "rounds": options.rounds,
        "runs_per_round": options.runs,
        "input": "random pixels" if images is None else getattr(images, "source", "given tiles"),
        "results": results,
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {cpu_line(m)}, {m['cores']} cores, {m['system']} (load average at the end {m['loadavg'][0]:.1f}); "
        f"threads {report['threads']} in {report.get('sessions', 1)} session(s); {report['warmup']} warm-up calls, "
        f"then {report['rounds']} rounds x {report['runs_per_round']} calls per model, models alternating",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"Input: {report.get('input', 'random pixels')}; labels = first: share of labels equal to the first row's "
        "on those tiles",
        "",
        "| model | backend | precision | device | tile | batch | p50 ms | p90 ms | p99 ms | tiles/s | Mpix/s "
        "| vs first (median, min-max) | labels = first | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lat, s = r["latency_ms"], r["speedup_vs_first"]
        rss = "" if r["peak_rss_mb"] is None else r["peak_rss_mb"]
        name = Path(r.get("run", r["model"])).name
        lines.append(
            f"| {name} | {r['backend']} | {r['precision']} | {r['device']} | {r['tile']} "
            f"| {r['batch']} | {lat['p50']} | {lat['p90']} | {lat['p99']} | {r['tiles_per_s']} | {r['mpix_per_s']} "
            f"| {s['median']}x ({s['min']}-{s['max']}) | {r.get('labels_agree_with_first', '')} | {rss} |"
        )
    return "\n".join(lines) + "\n"


def slide_tiles(slide_path: Path, mpp: float | None, model: Path) -> Callable[[int, int], np.ndarray]:
    """`images(batch, tile)`: the first `batch` tiles with tissue of a slide read at `mpp` (default the
    model's), row-major from the top left, each tile x tile px; real texture for the agreement figure."""
    from segcls.core.model_info import read_model_info
    from segcls.runtime.slide import open_slide
    from segcls.runtime.tiling import plan_read, read_tile
    from segcls.runtime.tissue import detect_tissue

    def images(batch: int, tile: int) -> np.ndarray:
        with open_slide(slide_path) as slide:
            plan = plan_read(slide, mpp if mpp is not None else read_model_info(model).description.mpp)
            width, height = plan.size
            tiles = []
            for y in range(0, max(height - tile, 0) + 1, tile):
                for x in range(0, max(width - tile, 0) + 1, tile):
                    pixels = read_tile(slide, plan, x, y, tile)
                    if detect_tissue(pixels[::8, ::8]).mean() >= 0.5:
                        tiles.append(pixels)
                    if len(tiles) == batch:
                        return np.stack(tiles)
        raise SegclsError(f"{slide_path} has fewer than {batch} tiles of {tile} px with tissue at that resolution")

    images.source = f"the first tiles with tissue of {Path(slide_path).name}" + (f" at {mpp} um/px" if mpp else "")
    return images


@command("latency")
@click.argument("models", nargs=-1, required=True, metavar="MODEL[@BACKEND[:PRECISION]]...")
@click.option("--backend", default="auto", help="auto (from each file type) or one backend.")
@click.option("--batch", "batches", default="1,4,8", callback=int_list, help="Batch sizes, tiles, comma-separated.")
@click.option("--tile", "tiles", default="512,1024", callback=int_list, help="Tile sides, px, comma-separated.")
@click.option(
    "--threads",
    default=os.cpu_count() or 1,
    type=click.IntRange(min=1),
    help="Threads of each backend (all cores by default).",
)
@click.option("--warmup", default=2, type=click.IntRange(min=0), help="Untimed calls per model and config.")
@click.option("--rounds", default=5, type=click.IntRange(min=1), help="Rounds, the models alternating in each.")
@click.option("--runs", default=2, type=click.IntRange(min=1), help="Timed calls per model and round.")
@click.option(
    "--sessions",
    default=1,
    type=click.IntRange(min=1),
    help="CPU sessions (ONNX Runtime) or streams (OpenVINO) sharing --threads, a batch's tiles split over them "
    "(segcls-infer runs 2).",
)
@click.option(
    "--slide",
    type=input_path(dir_okay=False),
    help="Time on this slide's first tiles with tissue (real texture for the labels agreement) [default: random "
    "pixels].",
)
@click.option("--mpp", type=float, help="--slide's read resolution, um/px [default: the first model's training mpp].")
@click.option("--memory/--no-memory", default=True, help="Peak RSS, one process per config.")
@results_options("latency")
def latency(
    models, backend, batches, tiles, threads, sessions, slide, mpp, warmup, rounds, runs, memory, output, overwrite,
    quiet,
):  # fmt: skip
    """Latency (p50/p90/p99), tiles/s, Mpix/s, labels agreement and peak RSS of MODELs (.onnx, .pt, .engine;
    MODEL@openvino, MODEL@openvino:bf16 for another backend or precision), alternating."""
    check_results(output, overwrite)
    options = LatencyOptions(backend, batches, tiles, threads, warmup, rounds, runs, memory, sessions)
    images = slide_tiles(slide, mpp, ModelRun.parse(models[0]).path) if slide else None
    report = measure_latency(list(models), options, progress=not quiet, images=images)
    table = markdown(report)
    click.echo(table)
    write_results(output, report, table, command=False)  # the table names the command already
    click.echo(f"wrote {output} and {output.with_suffix('.md')}")
