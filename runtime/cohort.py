"""Many slides: one driver (`infer_cohort`) and the runners it hands the slides to.

    driver: plan each slide's outputs -> skip finished slides -> runner -> OUT_DIR/cohort.csv + a table
    LocalRunner: this process, one model opened once, the slides in order
    RayRunner (ray_runner.py): one model per Ray worker, a slide to each idle worker, lost workers replaced

Every output is written atomically and inference is deterministic, so a slide that is run again (a rerun, a
retry on another worker) writes the same files, and an attempt that was killed leaves none: only temporary
`.NAME.*.partial` files, which the next attempt at that slide, and the driver at the end, remove.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from segcls.core.atomic import atomic_path
from segcls.core.errors import ModelError, SegclsError
from segcls.runtime.backends import Backend
from segcls.runtime.options import InferOptions
from segcls.runtime.outputs import extras_of, make_folders, plan_outputs, slide_options
from segcls.runtime.pipeline import infer_slide, open_model

CSV_NAME = "cohort.csv"
CSV_FIELDS = ("slide", "status", "seconds", "tiles", "tiles_per_s", "mask", "worker", "attempts", "error")


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
    attempts: int = 0  # runs started for it: more than 1 when its worker was lost and it was retried
    error: str = ""


class SlideJob(NamedTuple):
    slide: Path
    outputs: dict[str, Path]  # kind -> path, the mask last (`plan_outputs`)


@dataclass(frozen=True)
class ModelSpec:
    """How a runner opens the model: once in this process, or once in each Ray worker (so it is plain,
    picklable data). `open` is what a worker calls."""

    path: Path
    backend: str = "auto"
    precision: str | None = None  # None: the model's own (torch: fp16 on CUDA); bf16: OpenVINO on an FP32 .onnx
    tile: int = 1024  # a TensorRT engine built for an .onnx: its tile and largest batch
    batch: int = 4
    sessions: int | str = "auto"

    @classmethod
    def of(cls, path: str | Path, options: InferOptions, precision: str | None = None) -> ModelSpec:
        """The model as `options` runs it."""
        return cls(Path(path), options.backend, precision, options.tile, options.batch, options.sessions)

    def open(self, threads: int | None = None, log: Callable[[str], None] = lambda message: None) -> Backend:
        return open_model(
            self.path, self.backend, threads=threads, sessions=self.sessions, precision=self.precision,
            tile=self.tile, batch=self.batch, log=log,
        )  # fmt: skip


# report(row, line): a slide ended (done or failed); `line` is what to print for it.
Report = Callable[[SlideRow, str], None]


class Runner(Protocol):
    def run(self, jobs: list[SlideJob], model: ModelSpec, options: InferOptions, report: Report) -> list[SlideRow]:
        """Run every job; report each as it ends; return one row per job (in any order)."""
        ...


@dataclass
class CohortResult:
    rows: list[SlideRow]  # one per slide, in the order the slides were given
    seconds: float
    table: str = field(repr=False)  # the table printed at the end of a run

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.rows)

    @property
    def run(self) -> int:
        return sum(r.status != "skipped" for r in self.rows)


def infer_cohort(
    slides: list[str | Path],
    model: str | Path | ModelSpec,
    out_dir: str | Path,
    options: InferOptions | None = None,
    *,
    runner: Runner | None = None,
    overwrite: bool = False,
    report: Report | None = None,
) -> CohortResult:
    """Segment `slides` into `out_dir` (NAME.mask.tif each, + the optional outputs of `options`: "-" for beside
    the mask, or a folder) and write OUT_DIR/cohort.csv.

    Slides whose outputs all exist are skipped unless `overwrite`. `runner` runs the rest: `LocalRunner()`
    (default) or `RayRunner(...)`. `report(row, line)` is called as each slide ends (default: print the line,
    failures on stderr). A slide's error never stops the others; it is a `failed` row.
    """
    opts = options or InferOptions()
    spec = model if isinstance(model, ModelSpec) else ModelSpec.of(model, opts)
    spec = dataclasses.replace(spec, path=spec.path.resolve())  # workers may run in other folders
    if not spec.path.is_file():
        raise ModelError(f"model not found: {spec.path}")
    out_dir = Path(out_dir).resolve()
    extras = extras_of(opts)
    make_folders(out_dir, extras)
    jobs = [SlideJob(s, plan_outputs(s, out_dir, True, extras)) for s in (Path(p).resolve() for p in slides)]
    todo, skipped = pending_slides(jobs, overwrite)
    start = time.perf_counter()
    rows = {row.slide: row for row in skipped}
    if todo:
        ran = (runner or LocalRunner()).run(todo, spec, opts, report or print_line)
        rows |= {row.slide: row for row in ran}
    for job in todo:  # what attempts killed on a lost worker left, where no later attempt cleaned it up
        if rows[str(job.slide)].status != "done":
            remove_partials(job.outputs)
    ordered = [rows[str(job.slide)] for job in jobs]
    seconds = time.perf_counter() - start
    return CohortResult(ordered, seconds, write_table(out_dir, ordered, seconds))


def print_line(row: SlideRow, line: str) -> None:
    print(line, file=sys.stderr if row.status == "failed" else sys.stdout, flush=True)


class LocalRunner:
    """The slides one after another in this process, on one model opened once."""

    def run(self, jobs: list[SlideJob], model: ModelSpec, options: InferOptions, report: Report) -> list[SlideRow]:
        log = lambda message: print(message, file=sys.stderr)  # noqa: E731
        rows = []
        with model.open(log=log) as backend:
            log(f"Backend: {backend.name} on {backend.device}")
            for job in jobs:
                row, line = run_slide(job, backend, options)
                rows.append(row)
                report(row, line)
        return rows


def pending_slides(jobs: list[SlideJob], overwrite: bool) -> tuple[list[SlideJob], list[SlideRow]]:
    """(jobs still to run, a `skipped` row for each slide whose outputs all exist, said on stderr)."""
    todo, skipped = [], []
    for job in jobs:
        if overwrite or not all(p.exists() for p in job.outputs.values()):
            todo.append(job)
        else:
            skipped.append(SlideRow(str(job.slide), "skipped", str(job.outputs["mask"])))
            print(f"{job.slide.name}: done already ({job.outputs['mask']}); --overwrite to redo", file=sys.stderr)
    return todo, skipped


def run_slide(job: SlideJob, backend: Backend, options: InferOptions, attempt: int = 1) -> tuple[SlideRow, str]:
    """Run one slide of a cohort: errors become a `failed` row, never an exception. -> (row, line to print)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    remove_partials(job.outputs)
    start = time.perf_counter()
    try:
        result = infer_slide(job.slide, backend, job.outputs["mask"], slide_options(options, job.outputs))
    except Exception as e:  # one broken slide must not stop a cohort; say what broke
        message = str(e) if isinstance(e, SegclsError) else f"{type(e).__name__}: {e}"
        seconds = round(time.perf_counter() - start, 3)
        mask = str(job.outputs["mask"])
        row = SlideRow(str(job.slide), "failed", mask, seconds, worker=worker, attempts=attempt, error=message)
        return row, f"Error: {job.slide}: {message}"
    s = result.summary
    row = SlideRow(
        str(job.slide), "done", str(result.mask), s["timings_s"]["total"], s["tiles"]["run"], s["tiles_per_s"], worker,
        attempt,
    )  # fmt: skip
    return row, result.line


def remove_partials(outputs: dict[str, Path]) -> None:
    """Temporary files an earlier, killed attempt left for these outputs (atomic_path's `.NAME.*.partial`)."""
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
    lines = [f"{'slide':<{width}}  status    seconds   tiles  tiles/s  tries"]
    for r in rows:
        num = [f"{r.seconds:7.1f}" if r.seconds is not None else f"{'-':>7}"]
        num += [f"{r.tiles:7d}" if r.tiles is not None else f"{'-':>7}"]
        num += [f"{r.tiles_per_s:7.2f}" if r.tiles_per_s is not None else f"{'-':>7}"]
        num += [f"{r.attempts:5d}" if r.attempts else f"{'-':>5}"]
        lines.append(f"{Path(r.slide).name:<{width}}  {r.status:<8}  {'  '.join(num)}  {r.error}".rstrip())
    count = {s: sum(r.status == s for r in rows) for s in ("done", "skipped", "failed")}
    retried = sum(r.attempts > 1 for r in rows)
    rate = f", {count['done'] / seconds:.3f} slides/s" if seconds > 0 and count["done"] else ""
    again = f" ({retried} retried after a lost worker)" if retried else ""
    lines.append(
        f"{len(rows)} slides: {count['done']} done{again}, {count['skipped']} skipped, {count['failed']} failed "
        f"in {seconds:.1f} s{rate} -> {Path(out_dir) / CSV_NAME}"
    )
    return "\n".join(lines)
