"""Many slides: the per-slide rules shared by the local loop and Ray, and `infer_cohort` on a Ray cluster.

    driver: plan outputs -> skip finished slides -> one actor per worker -> a slide to each idle actor
    actor (one per Ray worker process): opens the model once, then `run_slide` per slide it is given

The actors are dispatched by hand with `ray.wait` rather than `ray.util.ActorPool` because a slide whose
worker died on every retry must still be named in the table; ActorPool's results do not say which input
failed. Each actor is restarted when its process dies (`max_restarts=-1`) and the slide it was running is
retried (`max_task_retries`): inference is deterministic and every output is written atomically, so a
retry writes the same mask and a killed attempt leaves none. Slides, the model and OUT_DIR must be at paths
that every node sees (a shared filesystem); workers read and write them directly.

Ray is optional (`pip install 'segcls[cluster]'`) and imported only when a cohort runs on it.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from segcls.core.atomic import atomic_path
from segcls.core.errors import BackendUnavailableError, SegclsError
from segcls.runtime.backends import Backend, backend_for
from segcls.runtime.pipeline import InferOptions, available_cores, infer_slide, open_model, reader_budget, result_line

CSV_NAME = "cohort.csv"
CSV_FIELDS = ("slide", "status", "seconds", "tiles", "tiles_per_s", "mask", "worker", "error")
# Fault injection for tests: when this file exists, the first worker to finish a slide's first batch
# removes it and kills its own process (os._exit), as an OOM kill or a lost node would.
CRASH_FILE_ENV = "SEGCLS_TEST_CRASH_FILE"
EXTRA_KINDS = ("overlay", "geojson", "probs", "summary")  # InferOptions fields of the optional outputs


@dataclass
class SlideRow:
    """One line of the cohort table (and of cohort.csv)."""

    slide: str
    status: str  # done | skipped | failed
    mask: str
    seconds: float | None = None
    tiles: int | None = None
    tiles_per_s: float | None = None
    worker: str = ""  # host:pid that ran it
    error: str = ""


def import_ray():
    try:
        import ray
    except ImportError:
        message = "--ray needs Ray, which is not installed: pip install 'segcls[cluster]'"
        raise BackendUnavailableError(message) from None
    return ray


def pending_slides(plans: list[tuple[Path, dict[str, Path]]], overwrite: bool) -> tuple[list, list[SlideRow]]:
    """(slides still to run with their outputs, a `skipped` row for each slide whose outputs all exist,
    said on stderr)."""
    todo, skipped = [], []
    for slide, outputs in plans:
        if overwrite or not all(p.exists() for p in outputs.values()):
            todo.append((slide, outputs))
        else:
            skipped.append(SlideRow(str(slide), "skipped", str(outputs["mask"])))
            print(f"{slide.name}: done already ({outputs['mask']}); --overwrite to redo", file=sys.stderr)
    return todo, skipped


def make_folders(out_dir: Path, extras: dict[str, str | None]) -> None:
    """OUT_DIR and each folder named for an optional output kind ("-" means beside the mask)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for value in extras.values():
        if value not in (None, "-"):
            Path(value).mkdir(parents=True, exist_ok=True)


def slide_options(options: InferOptions, outputs: dict[str, Path]) -> InferOptions:
    """`options` with the optional output paths of one slide (from `plan_outputs`)."""
    extra = {k: v for k, v in outputs.items() if k != "mask"}
    return dataclasses.replace(options, **{**dict.fromkeys(EXTRA_KINDS), **extra})


def run_slide(slide: Path, backend: Backend, outputs: dict[str, Path], options: InferOptions) -> tuple[SlideRow, str]:
    """Run one slide of a cohort: errors become a `failed` row, never an exception. -> (row, line to print)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    _remove_partials(outputs)
    opts = slide_options(options, outputs)
    start = time.perf_counter()
    try:
        result = infer_slide(slide, backend, outputs["mask"], opts)
    except Exception as e:  # one broken slide must not stop a cohort; say what broke
        message = str(e) if isinstance(e, SegclsError) else f"{type(e).__name__}: {e}"
        seconds = round(time.perf_counter() - start, 3)
        row = SlideRow(str(slide), "failed", str(outputs["mask"]), seconds, worker=worker, error=message)
        return row, f"Error: {slide}: {message}"
    s = result.summary
    row = SlideRow(
        str(slide), "done", str(result.mask), s["timings_s"]["total"], s["tiles"]["run"], s["tiles_per_s"], worker
    )
    return row, result_line(result)


def _remove_partials(outputs: dict[str, Path]) -> None:
    """Temporary files a killed earlier attempt left for these outputs (atomic_path's `.NAME.*.partial`)."""
    for path in outputs.values():
        for leftover in path.parent.glob(f".{path.name}.*.partial"):
            leftover.unlink(missing_ok=True)


def write_table(out_dir: Path, rows: list[SlideRow], seconds: float) -> str:
    """Write OUT_DIR/cohort.csv and return the table printed at the end of a run."""
    with atomic_path(Path(out_dir) / CSV_NAME) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in rows)
    width = max([len(Path(r.slide).name) for r in rows] + [5])
    lines = [f"{'slide':<{width}}  status    seconds   tiles  tiles/s"]
    for r in rows:
        num = [f"{r.seconds:7.1f}" if r.seconds is not None else f"{'-':>7}"]
        num += [f"{r.tiles:7d}" if r.tiles is not None else f"{'-':>7}"]
        num += [f"{r.tiles_per_s:7.2f}" if r.tiles_per_s is not None else f"{'-':>7}"]
        lines.append(f"{Path(r.slide).name:<{width}}  {r.status:<8}  {'  '.join(num)}  {r.error}".rstrip())
    count = {s: sum(r.status == s for r in rows) for s in ("done", "skipped", "failed")}
    rate = f", {count['done'] / seconds:.3f} slides/s" if seconds > 0 and count["done"] else ""
    lines.append(
        f"{len(rows)} slides: {count['done']} done, {count['skipped']} skipped, {count['failed']} failed "
        f"in {seconds:.1f} s{rate} -> {Path(out_dir) / CSV_NAME}"
    )
    return "\n".join(lines)


class _SlideWorker:
    """A Ray actor: the model is opened once per worker process, in the constructor (rerun on restart)."""

    def __init__(self, model: str, options: InferOptions, precision: str | None, threads: int) -> None:
        # As the local run opens it (precision, engine tile and batch), on this worker's share of the CPUs.
        self.backend = open_model(
            model, options.backend, precision=precision, tile=options.tile, batch=options.batch, threads=threads,
            sessions=options.sessions,
        )  # fmt: skip
        self.threads = threads

    def run(self, slide: str, outputs: dict[str, Path], options: InferOptions) -> tuple[SlideRow, str]:
        if os.environ.get(CRASH_FILE_ENV):
            _crash_after_first_batch(self.backend, Path(os.environ[CRASH_FILE_ENV]))
        readers = reader_budget(options.workers, self.backend.device, cores=self.threads)  # not the whole node's
        return run_slide(Path(slide), self.backend, outputs, dataclasses.replace(options, workers=readers))


def _crash_after_first_batch(backend: Backend, armed: Path) -> None:
    stream = type(backend).infer_stream.__get__(backend)

    def infer_stream(batches):
        for i, out in enumerate(stream(batches)):
            if i == 1:  # the first batch is stitched: the slide is half done
                try:
                    armed.unlink()
                except FileNotFoundError:
                    pass
                else:
                    os._exit(17)
            yield out

    backend.infer_stream = infer_stream


def infer_cohort(
    slides: list[str | Path],
    model: str | Path,
    out_dir: str | Path,
    options: InferOptions | None = None,
    ray_address: str | None = None,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    cpus_per_slide: float = 1,
    gpus_per_slide: float | None = None,
    retries: int = 2,
    precision: str | None = None,
) -> list[SlideRow]:
    """Segment `slides` on a Ray cluster into `out_dir` (NAME.mask.tif each) and write OUT_DIR/cohort.csv.

    `ray_address`: None starts a local Ray instance on this machine's cores (unless Ray is already
    initialised in this process); "auto" or "ray://host:port" joins an existing cluster. The optional outputs
    of `options` (overlay, geojson, probs, summary) are "-" for beside the mask, or a folder. `workers`:
    actors (each holds one model), default as many as the cluster's CPUs (GPUs) allow; `gpus_per_slide`
    default: 1 when the cluster has GPUs, else 0. A slide is retried `retries` times when its worker dies.
    `precision`: the torch backend's, as `open_backend`'s.
    Returns one row per slide (done, skipped or failed), in the order of `slides`.
    """
    from segcls.runtime.cli import plan_outputs

    ray = import_ray()
    opts = options or InferOptions()
    out_dir = Path(out_dir).resolve()
    model = Path(model).resolve()
    if not model.is_file():
        raise SegclsError(f"model not found: {model}")
    family = "tensorrt" if opts.backend == "tensorrt" else backend_for(model)  # an .onnx may run on TensorRT
    if not cpus_per_slide > 0:
        raise SegclsError(f"--ray-cpus must be > 0, got {cpus_per_slide}")
    if retries < 0:
        raise SegclsError(f"--ray-retries must be >= 0, got {retries}")
    if workers is not None and workers < 1:
        raise SegclsError(f"--ray-workers must be >= 1, got {workers}")
    extras = {k: getattr(opts, k) for k in EXTRA_KINDS}
    make_folders(out_dir, extras)
    plans = [(Path(s).resolve(), plan_outputs(Path(s).resolve(), out_dir, True, extras)) for s in slides]
    todo, skipped = pending_slides(plans, overwrite)
    start = time.perf_counter()
    rows = {row.slide: row for row in skipped}
    if todo:
        started = not ray.is_initialized()
        if started:
            _init_ray(ray, ray_address)
        try:
            resources = (workers, cpus_per_slide, gpus_per_slide, retries)
            rows |= _run_on_ray(ray, todo, model, family, opts, precision, *resources)
        finally:
            if started:
                ray.shutdown()
    ordered = [rows[str(slide)] for slide, _ in plans]
    print(write_table(out_dir, ordered, time.perf_counter() - start))
    return ordered


def _init_ray(ray, address: str | None) -> None:
    if address is None:
        ray.init(num_cpus=available_cores(), include_dashboard=False, log_to_driver=False)
    else:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:  # no cluster there, or a malformed address
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise SegclsError(f"cannot join the Ray cluster at {address}: {first}") from None


def _run_on_ray(
    ray, todo, model: Path, family: str, opts, precision, workers, cpus, gpus, retries
) -> dict[str, SlideRow]:
    resources = ray.cluster_resources()
    if gpus is None:
        gpus = 1 if resources.get("GPU", 0) > 0 else 0
    if family == "tensorrt" and not gpus:
        what = "is a TensorRT engine" if backend_for(model) == "tensorrt" else "runs on TensorRT (--backend tensorrt)"
        raise BackendUnavailableError(f"{model} {what}, but the Ray cluster has no GPU")
    if workers is None:
        fit = resources.get("GPU", 0) / gpus if gpus else resources.get("CPU", 1) / cpus
        workers = max(1, int(fit))
    workers = min(workers, len(todo))
    actor_class = ray.remote(_SlideWorker).options(
        num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=retries
    )
    threads = max(1, int(cpus))
    actors = [actor_class.remote(str(model), opts, precision, threads) for _ in range(workers)]
    worker_opts = dataclasses.replace(opts, progress=False)
    print(f"Ray: {len(todo)} slides on {workers} workers ({cpus:g} CPU, {gpus:g} GPU each)", file=sys.stderr)

    queue, idle, running, rows = deque(todo), list(actors), {}, {}
    bar = tqdm(total=len(todo), desc="slides", unit="slide", disable=not opts.progress)
    try:
        while queue or running:
            while idle and queue:
                actor = idle.pop()
                slide, outputs = queue.popleft()
                running[actor.run.remote(str(slide), outputs, worker_opts)] = (slide, outputs, actor)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            slide, outputs, actor = running.pop(ref)
            idle.append(actor)
            try:
                row, line = ray.get(ref)
            except ray.exceptions.RayError as e:  # the worker died on every attempt, or Ray lost the task
                what = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                message = f"its Ray worker failed {retries + 1} times ({type(e).__name__}: {what})"
                row = SlideRow(str(slide), "failed", str(outputs["mask"]), error=message)
                line = f"Error: {slide}: {message}"
            rows[str(slide)] = row
            bar.write(line, file=sys.stderr if row.status == "failed" else sys.stdout)
            bar.update(1)
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
    return rows
