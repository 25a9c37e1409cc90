"""One slide in, a label mask (and optional overlay, GeoJSON, probabilities, summary) out: `infer_slide`.

    plan (plan.py): thumbnail -> tissue mask -> tiles with tissue (row-major), trimmed to it on a CPU
    feed (feed.py): reader threads read + resample single tiles into a fixed ring of batch buffers
    here: backend.infer_stream(batches) -> stitcher (stride-8 label map) -> outputs
    mask thread (mask_writer.py): level-0 mask tiles over label rows the stitcher reports final, compressed
      on a few threads while inference goes on; reduced levels spooled and written once level 0 is complete

Threads: ONNX Runtime gets every core this process may use (`open_model`); `--workers auto` picks the
readers from the core count and whether the backend runs on the CPU (`cores.reader_budget`).

Memory bound. Besides the model, peak memory is
    the uint8 label map, (H/8) x (W/8) bytes of the read frame (156 MB for a 200k x 200k slide at
    0.25 mpp read at 0.5 mpp; 255 = not tissue)
    + the batch buffers, allocated once and reused: (3 + prefetch) x batch x tile^2 x 3 bytes, whatever
      the number of readers (+ one batch of network outputs)
    + per reader thread, while reading, one region under one tile: tile^2 x 7 bytes (RGBA from OpenSlide
      + RGB), or when resampling (tile x scale / level downsample)^2 x 7 bytes, e.g. 112 MB for a 1024
      tile read 4x finer
    + blend only: a band of float32 accumulators, (C + 1) x tile/8 x W/8 x 4 bytes
    + the tissue thumbnail (<= 2048^2) and, while writing, a few mask tiles (2 per compression thread).
Probabilities (`probs`) go to a float16 memmap on disk, so they cost page cache, not heap. No float map of
the whole slide is ever held. Measured on 2 CPU cores: a 20k x 20k slide with a trivial backend grows
peak RSS by 78-95 MB (tests/test_pipeline.py); a 16k x 16k OpenSlide pyramid read at 2 um/px through
ONNX Runtime (tiles of 1024, batch 4) peaks at 648 MB, ~510 MB of which is ONNX Runtime itself.

Every output is written under a temporary name and renamed when complete, the mask only after inference
and the overlay and GeoJSON, so Ctrl-C or an error leaves no mask (and no partial file of any kind).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcls.core.atomic import atomic_path, check_writable
from segcls.core.errors import DamagedTileError, SlideError
from segcls.runtime.backends import Backend, backend_for, open_backend
from segcls.runtime.backends.choice import BackendChoice, choose_backend
from segcls.runtime.cores import available_cores, cpu_sessions, reader_budget
from segcls.runtime.feed import TileFeed
from segcls.runtime.mask_writer import MaskWriter
from segcls.runtime.options import InferOptions
from segcls.runtime.plan import THUMBNAIL_SIZE, TilePlan, plan_tiles
from segcls.runtime.slide.damage import SkippingDamage
from segcls.runtime.stitch import make_stitcher
from segcls.runtime.summary import SlideRun, Timings, result_line, summarize


@dataclass
class SlideResult:
    slide: Path
    outputs: dict[str, Path]
    summary: dict = field(repr=False)
    labels: np.ndarray = field(repr=False)  # the stride-8 label map (uint8, 255 = not tissue)

    @property
    def mask(self) -> Path:
        return self.outputs["mask"]

    @property
    def line(self) -> str:
        """The one line printed for the finished slide."""
        return result_line(self.summary, self.mask)


def infer_slide(
    slide_path: str | Path,
    model: str | Path | Backend,
    out_path: str | Path,
    options: InferOptions | None = None,
    *,
    mask_writer: type[MaskWriter] = MaskWriter,
) -> SlideResult:
    """Segment one slide and write its mask to `out_path` (plus the optional outputs in `options`).

    `model` is a model file (opened with `options.backend`, closed afterwards) or a loaded `Backend`
    (shared across slides). `slide_path` may also be an open `Slide`. The slide is opened before the
    model, so a missing or unreadable slide costs no model load (nor a TensorRT engine build).
    `mask_writer`: the class that writes the mask while inference goes on (`MaskWriter`'s interface).
    """
    opts = options or InferOptions()
    if opts.truth is not None and not Path(opts.truth).is_file():
        raise SlideError(f"ground-truth mask not found: {opts.truth}")
    outputs = opts.outputs(Path(out_path))
    for path in outputs.values():
        check_writable(path)
    with contextlib.ExitStack() as stack:
        slide = slide_path
        if isinstance(slide_path, (str, Path)):
            from segcls.runtime.slide import open_slide

            slide = stack.enter_context(open_slide(slide_path, mpp=opts.slide_mpp, damaged_ok=opts.skip_damaged))
        if isinstance(model, Backend):
            backend = model
            if backend.description is None:
                backend.load()
        else:
            backend = stack.enter_context(open_model(model, opts.backend, sessions=opts.sessions, tile=opts.tile))
        try:
            return _run(slide, backend, outputs, opts, mask_writer)
        except DamagedTileError as e:
            hint = f"{e.reason} (--skip-damaged reads it as glass, leaves its region unlabelled and goes on)"
            raise DamagedTileError(e.path, e.level, e.box, hint, e.level_box) from None


def open_model(
    model_path: str | Path,
    backend: str = "auto",
    threads: int | None = None,
    sessions: int | str = "auto",
    *,
    precision: str | None = None,
    tile: int = 1024,
    log: Callable[[str], None] = lambda message: None,
    choose: Callable[..., BackendChoice] = choose_backend,
    **kwargs,
) -> Backend:
    """`open_backend` with the thread budget the pipeline plans with, and `--backend auto` measured.

    A CPU backend of an .onnx (ONNX Runtime, OpenVINO) gets `threads`, by default every core, split over
    `sessions` (`cores.cpu_sessions`) that run tiles side by side (ONNX Runtime sessions, OpenVINO
    streams). With `backend="auto"` an .onnx runs on the fastest backend that verifies on this machine at
    `precision` (`choice.choose_backend`, measured on `tile` px inputs once per model and machine, then
    cached; `choose` is that function); the choice goes to `log` and to `Backend.choice` (the summary).

    ORT's default is the physical-core count, which a container's CPU share or SMT can make wrong; the
    readers take their share of the cores through `reader_budget`, not by shrinking the backend's.
    """
    choice = None
    if backend in ("auto", "onnxruntime", "openvino") and backend_for(model_path) == "onnxruntime":
        threads = threads or available_cores()
        sessions = cpu_sessions(sessions, threads)
        if backend == "auto":
            choice = choose(model_path, precision, threads=threads, sessions=sessions, tile=tile, log=log)
            backend = choice.backend
            log(choice.line())
        kwargs |= {"threads": threads, "sessions": sessions}
    instance = open_backend(model_path, backend, precision=precision, tile=tile, log=log, **kwargs)
    instance.choice = choice.to_dict() if choice is not None else None
    return instance


def _run(slide, backend: Backend, outputs: dict[str, Path], opts: InferOptions, mask_writer) -> SlideResult:
    """Plan, infer while the mask streams to disk, write the other outputs, summarise."""
    t_start = time.perf_counter()
    damage = None
    if opts.skip_damaged:
        slide = damage = SkippingDamage(slide)
    plan = plan_tiles(slide, backend, opts)
    timings = Timings(tissue=time.perf_counter() - t_start)
    labels = np.full(plan.grid.map_shape, 255, dtype=np.uint8)
    size, mask_mpp = _mask_size(slide, opts.out_mpp)
    min_area = _geojson_min_area(slide, opts) if "geojson" in outputs else 0.0  # checked before the work
    description = backend.description
    with contextlib.ExitStack() as stack:
        probs = None
        if "probs" in outputs:  # renamed into place when the stack closes without an error
            shape = (description.num_classes, *plan.grid.map_shape)
            tmp = stack.enter_context(atomic_path(outputs["probs"]))
            probs = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        # The mask is written on a background thread as the stitcher reports rows final, so most of level 0
        # is on disk when inference ends; finish() renames it into place after the other outputs. The label
        # map covers whole tiles (it may overhang the slide): it is placed by its pixel size.
        label_px = plan.label_px * size[0] / slide.dimensions[0]
        colors, classes = description.colors, description.classes
        mask = mask_writer(outputs["mask"], labels, size, colors, mask_mpp, classes=classes, downsample=label_px)
        stack.enter_context(mask)

        def rows_final(rows: int) -> None:  # the regions of damaged tiles stay unlabelled in every final row
            if damage is not None:
                _unlabel(damage.damaged, plan.label_px, labels, probs, rows)
            mask.rows_final(rows)

        stitcher = make_stitcher(opts.stitch, plan.grid, labels, probs, plan.keep, description.num_classes, rows_final)
        readers = reader_budget(opts.workers, backend.on_cpu)
        scores = _infer_tiles(slide, plan, backend, stitcher, opts, readers, timings)
        t0 = time.perf_counter()
        stitcher.finish()
        timings.stitch += time.perf_counter() - t0
        if probs is not None:
            probs.flush()
            del probs
        t0 = time.perf_counter()
        _write_extras(slide, plan, labels, description, outputs, opts, min_area)
        mask.finish()
        timings.write = time.perf_counter() - t0
        timings.write_cpu = mask.cpu_seconds
    seconds = time.perf_counter() - t_start
    damaged = damage.damaged if damage is not None else []
    run = SlideRun(slide, backend, plan, opts, outputs, labels, scores, timings, seconds, readers, damaged)
    summary = summarize(run)
    if opts.truth is not None:
        from segcls.runtime.score import score_masks

        truth = score_masks(outputs["mask"], opts.truth, description.num_classes)
        summary["truth"] = {"path": str(opts.truth), **truth.to_dict(description.classes)}
    if "summary" in outputs:
        with atomic_path(outputs["summary"]) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return SlideResult(Path(getattr(slide, "path", "slide")), outputs, summary, labels)


def _infer_tiles(slide, plan: TilePlan, backend: Backend, stitcher, opts, readers: int, timings: Timings):
    """Every tile through the backend, read ahead by the feed, stitched as its outputs come back.

    Returns the slide-level class scores (the max over tiles). "infer" is the time spent inside the
    backend's stream, less the time it waited for the readers.
    """
    scores = None
    name = Path(getattr(slide, "path", "slide")).name
    feed = TileFeed(slide, plan.read, plan.tiles, opts.batch, plan.grid.tile, readers, opts.prefetch)
    bar = tqdm(total=len(plan.tiles), desc=name, unit="tile", disable=not opts.progress, leave=False)
    with feed, bar:
        outputs = backend.infer_stream(iter(feed))
        while True:
            t0, wait0 = time.perf_counter(), feed.wait_seconds
            out = next(outputs, None)
            t1 = time.perf_counter()
            timings.infer += t1 - t0 - (feed.wait_seconds - wait0)
            if out is None:
                break
            tiles = feed.done()
            for i, t in enumerate(tiles):
                stitcher.add(t, out.labels[i], out.probs[i])
            batch_scores = np.asarray(out.class_scores, dtype=np.float32).max(axis=0)
            scores = batch_scores if scores is None else np.maximum(scores, batch_scores)
            timings.stitch += time.perf_counter() - t1
            bar.update(len(tiles))
    timings.read, timings.wait = feed.read_seconds, feed.wait_seconds
    return scores


def _unlabel(damaged: list[DamagedTileError], label_px: float, labels, probs, rows: int) -> None:
    """Label-map rows [0, rows) of every damaged tile's level-0 box set to 255 (and their probabilities to 0)."""
    for e in damaged:
        x, y, w, h = e.box
        x0, y0 = int(x // label_px), int(y // label_px)
        x1, y1 = math.ceil((x + w) / label_px), min(rows, math.ceil((y + h) / label_px))
        if y1 > y0:
            labels[y0:y1, x0:x1] = 255
            if probs is not None:
                probs[:, y0:y1, x0:x1] = 0


def _write_extras(slide, plan: TilePlan, labels, description, outputs: dict[str, Path], opts, min_area: float):
    """The overlay and the GeoJSON, once the label map is complete."""
    if "overlay" in outputs:
        from segcls.runtime.overlay import write_overlay

        thumb = plan.thumbnail
        if thumb is None or max(thumb.shape[:2]) != THUMBNAIL_SIZE:  # none detected on, or a smaller one
            thumb = slide.get_thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        write_overlay(outputs["overlay"], thumb, labels, description.classes, description.colors)
    if "geojson" in outputs:
        from segcls.runtime.geojson import write_geojson

        write_geojson(
            outputs["geojson"], labels, description.classes, description.colors, plan.label_px,
            per_region=opts.geojson_per_region, min_area=min_area, size=slide.dimensions,
        )  # fmt: skip


def _geojson_min_area(slide, opts: InferOptions) -> float:
    """`--geojson-min-area` (um^2) in level-0 px^2."""
    if not opts.geojson_min_area:
        return 0.0
    if not slide.mpp:
        raise SlideError(f"--geojson-min-area is in um^2 but {slide.path} has no mpp: pass --slide-mpp")
    return opts.geojson_min_area / slide.mpp**2


def _mask_size(slide, out_mpp: float | None) -> tuple[tuple[int, int], float | None]:
    """(width, height) of the mask's level 0 and its mpp: the slide's level 0, or `--out-mpp`."""
    w0, h0 = slide.dimensions
    if out_mpp is None:
        return (w0, h0), slide.mpp
    if not slide.mpp:
        raise SlideError("--out-mpp needs the slide's mpp: pass --slide-mpp X")
    f = slide.mpp / out_mpp
    return (max(1, round(w0 * f)), max(1, round(h0 * f))), out_mpp
