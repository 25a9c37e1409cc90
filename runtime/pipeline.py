"""One slide in, a label mask (and optional overlay, GeoJSON, probabilities, summary) out.

    thumbnail -> tissue mask -> tiles with tissue (row-major), on a CPU cut down to it (trim_tiles)
    reader threads: read + resample single tiles into a fixed ring of batch buffers
    main thread: backend.infer_stream(batches) -> stitcher (stride-8 label map) -> outputs
    mask thread: level-0 mask tiles over label rows the stitcher reports final, compressed on a few
      threads while inference goes on; reduced-level tiles compressed ahead into a spool file, written
      once level 0 is complete

Threads: ONNX Runtime gets every core this process may use (`open_model`); `--workers auto` picks the
readers from the core count and the backend's device (`reader_budget`: 1 per 8 cores beside a CPU
backend, all cores but one beside a GPU).

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
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcls.core.atomic import atomic_path, check_writable
from segcls.core.description import ModelDescription
from segcls.core.errors import ModelError, SegclsError, SlideError
from segcls.runtime.backends import Backend, open_backend
from segcls.runtime.cores import available_cores
from segcls.runtime.stitch import STITCH_MODES, make_stitcher
from segcls.runtime.tiling import DEFAULT_OVERLAP, ReadPlan, Tile, TileGrid, plan_read, read_tile, tissue_in_box

THUMBNAIL_SIZE = 2048
MIN_DETECTION_SIDE = 1024  # below this a thumbnail loses faint tissue at the edges; ~0.08 s to detect on


@dataclass
class InferOptions:
    """What `segcls-infer` options set; paths of optional outputs are None when not wanted."""

    backend: str = "auto"
    batch: int = 4
    tile: int = 1024  # read-frame px, context included
    overlap: int = DEFAULT_OVERLAP  # read-frame px of context on each side, multiple of 16 (docs/overlap.md)
    stitch: str = "crop"  # crop | blend
    mpp: float | None = None  # target resolution; default the model's training mpp
    slide_mpp: float | None = None  # overrides the slide's own mpp
    level: int | None = None  # read this level as is (no resampling)
    out_mpp: float | None = None  # mask resolution; default the slide's level 0
    tissue: str | Path = "auto"  # auto | none | mask image path
    trim: bool = True  # CPU backend, crop stitching: tiles cut down to their cores' tissue (trim_tiles)
    overlay: Path | None = None
    geojson: Path | None = None
    geojson_per_region: bool = False  # one feature per region instead of one MultiPolygon per class
    geojson_min_area: float = 0.0  # um^2: smaller regions are left out of the GeoJSON
    probs: Path | None = None
    summary: Path | None = None
    truth: Path | None = None  # a ground-truth label mask (segcls TIFF, 255 = ignore): F1 goes in the summary
    workers: int | str = "auto"  # reader threads, or "auto": from the core count and the device (reader_budget)
    sessions: int | str = "auto"  # ONNX Runtime sessions side by side on the CPU, or "auto" (cpu_sessions)
    prefetch: int = 1  # batch buffers beyond the three a streaming backend and one filling batch need
    progress: bool = True

    def __post_init__(self) -> None:
        if self.stitch not in STITCH_MODES:
            raise SegclsError(f"--stitch must be one of {', '.join(STITCH_MODES)}, got {self.stitch!r}")
        for name in ("workers", "sessions"):
            value = getattr(self, name)
            if value != "auto":
                try:
                    setattr(self, name, int(value))
                except (TypeError, ValueError):
                    raise SegclsError(f"--{name} must be 'auto' or a number >= 1, got {value!r}") from None
        for name in ("batch", "workers", "sessions"):
            value = getattr(self, name)
            if value != "auto" and value < 1:
                raise SegclsError(f"--{name} must be >= 1, got {value}")
        if self.prefetch < 0:
            raise SegclsError(f"prefetch must be >= 0, got {self.prefetch}")
        TileGrid((1, 1), self.tile, self.overlap)  # refuses a bad --tile or --overlap before any work
        if self.geojson_min_area < 0:
            raise SegclsError(f"--geojson-min-area must be >= 0, got {self.geojson_min_area}")
        for name in ("mpp", "slide_mpp", "out_mpp"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise SegclsError(f"--{name.replace('_', '-')} must be > 0, got {value}")

    def outputs(self, mask: Path) -> dict[str, Path]:
        """Every file this run writes, by kind; the mask last."""
        extra = {k: getattr(self, k) for k in ("probs", "overlay", "geojson", "summary")}
        return {k: Path(v) for k, v in extra.items() if v is not None} | {"mask": Path(mask)}


@dataclass
class SlideResult:
    slide: Path
    outputs: dict[str, Path]
    summary: dict = field(repr=False)
    labels: np.ndarray = field(repr=False)  # the stride-8 label map (uint8, 255 = not tissue)

    @property
    def mask(self) -> Path:
        return self.outputs["mask"]


def infer_slide(
    slide_path: str | Path,
    model: str | Path | Backend,
    out_path: str | Path,
    options: InferOptions | None = None,
) -> SlideResult:
    """Segment one slide and write its mask to `out_path` (plus the optional outputs in `options`).

    `model` is a model file (opened with `options.backend`, closed afterwards) or a loaded `Backend`
    (shared across slides). `slide_path` may also be an open `Slide`.
    """
    opts = options or InferOptions()
    if opts.truth is not None and not Path(opts.truth).is_file():
        raise SlideError(f"ground-truth mask not found: {opts.truth}")
    outputs = opts.outputs(Path(out_path))
    for path in outputs.values():
        check_writable(path)
    with contextlib.ExitStack() as stack:
        if isinstance(model, Backend):
            backend = model
            if backend.description is None:
                backend.load()
        else:
            backend = stack.enter_context(_opened(open_model(model, opts.backend, sessions=opts.sessions)))
        slide = slide_path
        if isinstance(slide_path, (str, Path)):
            from segcls.runtime.slide import open_slide

            slide = stack.enter_context(open_slide(slide_path, mpp=opts.slide_mpp))
        return _run(slide, backend, outputs, opts, stack)


def open_model(
    model_path: str | Path, backend: str = "auto", threads: int | None = None, sessions: int | str = "auto", **kwargs
) -> Backend:
    """`open_backend` with the thread budget the pipeline plans with: ONNX Runtime gets `threads`, by
    default every core, split over `sessions` (`cpu_sessions`) that run tiles side by side on the CPU
    (other backends ignore both).

    ORT's default is the physical-core count, which a container's CPU share or SMT can make wrong; the
    readers take their share of the cores through `reader_budget`, not by shrinking the backend's.
    """
    from segcls.runtime.backends import backend_for

    if backend in ("auto", "onnxruntime") and backend_for(model_path) == "onnxruntime":
        kwargs["threads"] = threads or available_cores()
        kwargs["sessions"] = cpu_sessions(sessions, kwargs["threads"])
    return open_backend(model_path, backend, **kwargs)


def cpu_sessions(sessions: int | str, threads: int) -> int:
    """ONNX Runtime sessions for `--sessions` ("auto" or a count) on `threads` cores.

    "auto" is 2 from 2 cores on, each with half the threads: beside the readers and the mask writer, one
    session's threads stall at every operator's barrier whenever one of them is preempted, two sessions
    on different tiles do not (2 cores: a dense slide 1.06x faster in FP32, 1.21x in INT8; more cores
    not measured). A GPU provider always runs one session.
    """
    if sessions != "auto":
        return int(sessions)
    return 2 if threads >= 2 else 1


def reader_budget(workers: int | str, device: str, cores: int | None = None) -> int:
    """Reader threads for `--workers` ("auto" or a count) on a backend running on `device`.

    "auto" (measured in bench/results/cpu-2core-readers.md): on a CPU backend the network and the readers
    share the cores and decoding a tile costs about a tenth of running it, so one reader per 8 cores (at
    least one) keeps the backend fed without taking its cores; a GPU backend leaves the host's cores to
    the readers (decoding scales with threads: OpenSlide and numpy release the GIL), less one for the
    thread that drives the device, at most 32.
    """
    if workers != "auto":
        return int(workers)
    cores = cores or available_cores()
    if device.lower().startswith("cpu"):
        return max(1, cores // 8)
    return max(2, min(cores - 1, 32))


@contextlib.contextmanager
def _opened(backend: Backend):
    try:
        yield backend
    finally:
        backend.close()


def _target_mpp(description: ModelDescription, opts: InferOptions) -> float | None:
    if opts.level is not None or opts.mpp is not None:
        return opts.mpp
    if description.mpp is None:
        raise ModelError("the model does not record the mpp it was trained at: pass --mpp X or --level L")
    return description.mpp


def _run(slide, backend: Backend, outputs: dict[str, Path], opts: InferOptions, stack) -> SlideResult:
    from segcls.runtime.mask_writer import MaskWriter

    t_start = time.perf_counter()
    description = backend.description
    plan, grid, keep, tiles, thumb = plan_tiles(slide, backend, opts)
    t_tissue = time.perf_counter() - t_start

    labels = np.full(grid.map_shape, 255, dtype=np.uint8)
    probs = None
    if "probs" in outputs:  # renamed into place when infer_slide's stack closes without an error
        tmp = stack.enter_context(atomic_path(outputs["probs"]))
        shape = (description.num_classes, *grid.map_shape)
        probs = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    # The mask is written on a background thread as the stitcher reports rows final, so most of level 0
    # is on disk when inference ends; it is renamed into place by finish(), after the other outputs.
    size, mask_mpp = _mask_size(slide, opts.out_mpp)
    min_area = 0.0  # level-0 px^2; checked here, before the work, like the mask size
    if "geojson" in outputs and opts.geojson_min_area:
        if not slide.mpp:
            raise SlideError(f"--geojson-min-area is in um^2 but {slide.path} has no mpp: pass --slide-mpp")
        min_area = opts.geojson_min_area / slide.mpp**2
    # The label map covers whole tiles (it may overhang the slide): place it by its pixel size.
    label_px = grid.stride * plan.scale * size[0] / slide.dimensions[0]
    mask = MaskWriter(
        outputs["mask"], labels, size, description.colors, mask_mpp, classes=description.classes, downsample=label_px
    )
    stack.enter_context(mask)
    stitcher = make_stitcher(opts.stitch, grid, labels, probs, keep, description.num_classes, mask.rows_final)

    name = Path(getattr(slide, "path", "slide")).name
    timings, scores = _infer_tiles(slide, plan, grid, tiles, backend, stitcher, opts, name)
    timings["tissue"] = t_tissue
    t0 = time.perf_counter()
    stitcher.finish()
    timings["stitch"] += time.perf_counter() - t0
    if probs is not None:
        probs.flush()
        del probs

    t0 = time.perf_counter()
    if "overlay" in outputs:
        from segcls.runtime.overlay import write_overlay

        if thumb is None or max(thumb.shape[:2]) != THUMBNAIL_SIZE:  # none detected on, or a smaller one
            thumb = slide.get_thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        write_overlay(outputs["overlay"], thumb, labels, description.classes, description.colors)
    if "geojson" in outputs:
        from segcls.runtime.geojson import write_geojson

        write_geojson(
            outputs["geojson"], labels, description.classes, description.colors, grid.stride * plan.scale,
            per_region=opts.geojson_per_region, min_area=min_area, size=slide.dimensions,
        )  # fmt: skip
    mask.finish()
    timings["write"] = time.perf_counter() - t0  # writing left after inference: what it adds to the run
    timings["write_cpu"] = mask.cpu_seconds  # all the mask's tile work, on any thread, overlapped or not

    seconds = time.perf_counter() - t_start
    summary = _summary(slide, backend, plan, grid, tiles, labels, scores, timings, seconds, outputs, opts)
    if opts.truth is not None:
        from segcls.runtime.score import score_masks

        truth = score_masks(outputs["mask"], opts.truth, description.num_classes)
        summary["truth"] = {"path": str(opts.truth), **truth.to_dict(description.classes)}
    if "summary" in outputs:
        with atomic_path(outputs["summary"]) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return SlideResult(Path(getattr(slide, "path", name)), outputs, summary, labels)


def plan_tiles(slide, backend: Backend, opts: InferOptions) -> tuple:
    """(read plan, grid, keep(box) or None, the tiles to run, the tissue thumbnail or None): everything the
    pipeline decides before reading a pixel; the benchmarks call it to run exactly the pipeline's tiles."""
    plan = plan_read(slide, _target_mpp(backend.description, opts), opts.level)
    grid = TileGrid(plan.size, opts.tile, opts.overlap, backend.description.stride)
    keep, tiles, thumb = select_tiles(slide, grid, plan, opts.tissue)
    if opts.trim and opts.stitch == "crop" and backend.device.lower().startswith("cpu"):
        tiles = trim_tiles(grid, tiles, keep)
    return plan, grid, keep, tiles, thumb


def select_tiles(slide, grid: TileGrid, plan: ReadPlan, source) -> tuple:
    """(keep(box) or None, tiles to run, the thumbnail the tissue was found on or None)."""
    if str(source) == "none":
        return None, list(grid), None
    from segcls.runtime.tissue import tissue_mask

    core = grid.step * plan.scale  # level-0 px of a tile's core
    side = detection_side(slide.dimensions, grid.stride * plan.scale)
    thumb = None
    if str(source) == "auto":  # detect on a thumbnail that the overlay reuses when it is full size
        thumb = slide.get_thumbnail((side, side))
    tissue = tissue_mask(slide, source, side, thumbnail=thumb)
    tiles = [t for t in grid if tissue.covers(t.col * core, t.row * core, core, core)]

    def keep(box: tuple[int, int, int, int]) -> np.ndarray:
        return tissue_in_box(box, grid, plan, tissue.mask, tissue.downsample)

    return keep, tiles, thumb


def detection_side(dimensions: tuple[int, int], label_px: float) -> int:
    """Thumbnail side to detect tissue on: the label map's (`label_px` level-0 px a pixel), within
    [MIN_DETECTION_SIDE, THUMBNAIL_SIZE]. Tiles and trims are placed in label-map pixels, so a finer mask
    decides nothing more, and each halving of its side costs 4x (a 16k px slide read at 1 um/px was
    detected on 2048 px, twice its label map's side: 0.5 s instead of 0.08 s)."""
    return min(THUMBNAIL_SIZE, max(MIN_DETECTION_SIDE, math.ceil(max(dimensions) / label_px)))


def trim_tiles(grid: TileGrid, tiles: list[Tile], keep, splits: int = 2) -> list[Tile]:
    """Each tile trimmed (`TileGrid.trim`) to the box around its core's tissue (the whole core without a
    tissue mask); a tile whose core holds no tissue at the label map's resolution is dropped.

    Where the tissue is scattered, the box is split in four, up to `splits` times, whenever the trimmed
    inputs of the parts are smaller in all than the one of the whole (each part carries its own
    `overlap` of context). For a CPU backend in crop mode: a CPU runs a smaller input proportionally
    faster (bench/results/cpu-2core-trim-shapes.md), while a GPU wants one input shape (engine profiles,
    cuDNN autotuning, full batches), and blending needs whole tiles.
    """
    trimmed = []
    for t in tiles:
        core = grid.core(t)
        if keep is None:
            trimmed.append(grid.trim(t))
            continue
        trimmed += [grid.trim(t, box) for box in _tissue_boxes(grid, t, keep(core), core[:2], splits)]
    return trimmed


def _tissue_boxes(grid: TileGrid, t: Tile, tissue: np.ndarray, at: tuple[int, int], splits: int) -> list[tuple]:
    """Label-map boxes covering the True pixels of `tissue` (whose top left is map pixel `at`) that make
    the least network input: the bounding box, or its four quarters' boxes if they cost less."""
    rows, cols = np.flatnonzero(tissue.any(axis=1)), np.flatnonzero(tissue.any(axis=0))
    if not rows.size:
        return []
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    box = (at[0] + c0, at[1] + r0, at[0] + c1, at[1] + r1)
    if splits == 0 or (r1 - r0 < 2 and c1 - c0 < 2):
        return [box]
    hr, hc = (r1 - r0) // 2, (c1 - c0) // 2
    parts = []
    for a, b in ((r0, r0 + hr), (r0 + hr, r1)):
        for c, d in ((c0, c0 + hc), (c0 + hc, c1)):
            if b > a and d > c:
                parts += _tissue_boxes(grid, t, tissue[a:b, c:d], (at[0] + c, at[1] + a), splits - 1)

    def cost(boxes: list[tuple]) -> int:
        return sum(w.width * w.height for w in (grid.trim(t, b) for b in boxes))

    return parts if cost(parts) < cost([box]) else [box]


def _mask_size(slide, out_mpp: float | None) -> tuple[tuple[int, int], float | None]:
    w0, h0 = slide.dimensions
    if out_mpp is None:
        return (w0, h0), slide.mpp
    if not slide.mpp:
        raise SlideError("--out-mpp needs the slide's mpp: pass --slide-mpp X")
    f = slide.mpp / out_mpp
    return (max(1, round(w0 * f)), max(1, round(h0 * f))), out_mpp


def _infer_tiles(
    slide, plan: ReadPlan, grid: TileGrid, tiles: list[Tile], backend: Backend, stitcher, opts, name: str
) -> tuple[dict[str, float], np.ndarray | None]:
    """Run every tile through the backend, reading ahead on `reader_budget(...)` threads.

    Readers decode single tiles straight into a fixed ring of batch buffers, so many readers can fill one
    batch (a GPU wants hundreds of tiles per second) and memory does not grow with the reader count. A
    buffer is refilled only after its batch's outputs are stitched: `Backend.infer_stream` may take batch
    k+1 before it returns batch k (`in_flight` pairs outputs with their tiles), and the inputs it holds
    must stay intact. "infer" is the time spent inside the backend's stream, less the time it waited for
    the readers.
    """
    timings = dict.fromkeys(("read", "wait", "infer", "stitch"), 0.0)
    scores = None
    readers = reader_budget(opts.workers, backend.device)
    batches = batch_tiles(tiles, opts.batch)
    shape = (min(opts.batch, max(len(tiles), 1)), grid.tile, grid.tile, 3)
    free = [np.empty(shape, dtype=np.uint8) for _ in range(3 + opts.prefetch)]
    pool = ThreadPoolExecutor(readers, thread_name_prefix="segcls-read")
    pending: deque = deque()  # (tiles, buffer, pixels, futures of the tiles' reads), in reading order
    in_flight: deque = deque()  # (tiles, buffer) handed to the backend whose outputs have not come back

    def read_into(pixels: np.ndarray, i: int, t: Tile) -> float:
        t0 = time.perf_counter()
        pixels[i] = _read(slide, plan, t)
        return time.perf_counter() - t0

    def start(batch: list[Tile], buffer: np.ndarray) -> None:
        # The batch's pixels: the front of the buffer as one contiguous (B, H, W, 3) array.
        n, h, w = len(batch), batch[0].height, batch[0].width
        pixels = buffer.reshape(-1)[: n * h * w * 3].reshape(n, h, w, 3)
        pending.append((batch, buffer, pixels, [pool.submit(read_into, pixels, i, t) for i, t in enumerate(batch)]))

    def submit() -> None:
        while free and (batch := next(batches, None)) is not None:
            start(batch, free.pop())

    def pixel_batches():
        while True:
            submit()
            if not pending and (batch := next(batches, None)) is not None:
                # Only a backend holding more batches than the ring has gets here: one more buffer.
                start(batch, np.empty(shape, dtype=np.uint8))
            if not pending:
                return
            batch, buffer, pixels, futures = pending.popleft()
            t0 = time.perf_counter()
            timings["read"] += sum(f.result() for f in futures)
            timings["wait"] += time.perf_counter() - t0
            in_flight.append((batch, buffer))
            yield pixels

    bar = tqdm(total=len(tiles), desc=name, unit="tile", disable=not opts.progress, leave=False)
    try:
        outputs = backend.infer_stream(pixel_batches())
        while True:
            t0 = time.perf_counter()
            wait0 = timings["wait"]
            out = next(outputs, None)
            t1 = time.perf_counter()
            timings["infer"] += t1 - t0 - (timings["wait"] - wait0)
            if out is None:
                break
            batch, buffer = in_flight.popleft()
            for i, t in enumerate(batch):
                stitcher.add(t, out.labels[i], out.probs[i])
            batch_scores = np.asarray(out.class_scores, dtype=np.float32).max(axis=0)
            scores = batch_scores if scores is None else np.maximum(scores, batch_scores)
            free.append(buffer)
            timings["stitch"] += time.perf_counter() - t1
            bar.update(len(batch))
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    return timings, scores


def batch_tiles(tiles: list[Tile], size: int) -> Iterator[list[Tile]]:
    """Runs of consecutive tiles of one input size, `size` at most: each batch is one array."""
    batch: list[Tile] = []
    for t in tiles:
        if batch and (len(batch) == size or (t.width, t.height) != (batch[0].width, batch[0].height)):
            yield batch
            batch = []
        batch.append(t)
    if batch:
        yield batch


def read_batches(slide, plan: ReadPlan, tiles: list[Tile], size: int) -> list[np.ndarray]:
    """`tiles` read into memory as the pipeline batches them (for timing a backend on its own)."""
    return [np.stack([_read(slide, plan, t) for t in batch]) for batch in batch_tiles(tiles, size)]


def _read(slide, plan: ReadPlan, t: Tile) -> np.ndarray:
    try:
        return read_tile(slide, plan, t.x, t.y, t.width, t.height)
    except SegclsError:
        raise
    except Exception as e:  # a reader library's own error for a damaged region
        where = f"tile at read-frame ({t.x}, {t.y}), level {plan.level}"
        raise SlideError(f"cannot read {where} of {getattr(slide, 'path', 'the slide')}: {e}") from None


def _summary(slide, backend, plan, grid, tiles, labels, scores, timings, seconds, outputs, opts) -> dict:
    description = backend.description
    counts = np.bincount(labels.ravel(), minlength=256)
    px_mm2 = None
    if slide.mpp:
        px_mm2 = (grid.stride * plan.scale * slide.mpp / 1000.0) ** 2  # one label-map pixel, in mm^2
    area = {c: (round(float(counts[i]) * px_mm2, 6) if px_mm2 else None) for i, c in enumerate(description.classes)}
    slide_class = None
    if scores is not None:
        slide_class = {
            "class": description.classes[int(np.argmax(scores))],
            "scores": {c: float(s) for c, s in zip(description.classes, scores, strict=True)},
        }
    w0, h0 = slide.dimensions
    return {
        "slide": str(getattr(slide, "path", "")),
        "size": [w0, h0],
        "slide_mpp": slide.mpp,
        "mpp": round(plan.mpp, 6) if plan.mpp else None,
        "level": plan.level,
        "read_size": list(plan.size),
        "tile": grid.tile,
        "overlap": grid.overlap,
        "stitch": opts.stitch,
        "tiles": {
            "total": len(grid),
            "run": len(tiles),  # network inputs: a trimmed tile may be split into several
            "skipped": len(grid) - len({(t.row, t.col) for t in tiles}),
            "input_mpx": round(sum(t.width * t.height for t in tiles) / 1e6, 3),  # the network's work
        },
        "area_mm2": area,
        "tissue_mm2": round(float(counts[: len(description.classes)].sum()) * px_mm2, 6) if px_mm2 else None,
        "slide_class": slide_class,
        "timings_s": {k: round(v, 3) for k, v in timings.items()} | {"total": round(seconds, 3)},
        "tiles_per_s": round(len(tiles) / seconds, 2) if seconds else None,
        "infer_tiles_per_s": round(len(tiles) / timings["infer"], 2) if timings["infer"] else None,
        "backend": backend.name,
        "readers": reader_budget(opts.workers, backend.device),
        "device": backend.device,
        "outputs": {k: str(v) for k, v in outputs.items()},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
    }


def result_line(result: SlideResult) -> str:
    """The one line printed per finished slide."""
    s = result.summary
    truth = f", macro F1 {s['truth']['macro_f1']:.4f} vs truth" if "truth" in s else ""
    return (
        f"{Path(s['slide']).name}: {s['tiles']['run']} tiles in {s['timings_s']['total']:.1f} s "
        f"({s['tiles_per_s'] or 0:.1f} tiles/s, {s['backend']} on {s['device']}{truth}) -> {result.mask}"
    )
