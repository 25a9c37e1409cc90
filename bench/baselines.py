"""The two loops users write instead of segcls-infer, as baselines for `segcls-bench slide`.

plain_loop: OpenSlide's `read_region` of every 1024 px tile of the read frame (no overlap, no tissue detection), ONNX
Runtime at batch 1 with its default session options, the labels upsampled into a full-size numpy canvas,
`tifffile.imwrite`. sliding_window: the whole read frame held in memory, MONAI's
`sliding_window_inference` (roi 1024, overlap 1/16, gaussian weights) with ONNX Runtime as its
predictor, argmax of the blended probabilities, `tifffile.imwrite`.

Both write a uint8 label mask of the read frame's size (rows x columns = height x width of the slide
resampled to the model's mpp). Run one in its own process with

    python -m segcls.bench.baselines plain|window|segcls SLIDE MODEL OUT [--mpp X] [--options JSON] [--precision P]

which prints one JSON line (seconds, tiles, peak RSS), so `bench/slide.py` measures each in a fresh
process; "segcls" runs `infer_slide` the same way, then times the backend alone and the readers alone on
the tiles it ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROI = 1024
WINDOW_OVERLAP = 1 / 16


def peak_rss_mb() -> float:
    """Peak resident set of this process so far: `latency.peak_rss_mb` (VmHWM, not ru_maxrss, which a
    child inherits from the process that started it: the benchmark's parent, which opened the models)."""
    from segcls.bench.latency import peak_rss_mb as own_peak

    return own_peak()


def _session(model: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])  # defaults, as users write it


def _plan(slide, model: Path, mpp: float | None):
    from segcls.core.model_info import read_model_info
    from segcls.runtime.tiling import plan_read

    description = read_model_info(model).description
    return plan_read(slide, mpp if mpp is not None else description.mpp)


def _open(slide_path: str | Path):
    """The slide as an OpenSlide user reads it: OpenSlide's own decoder (not segcls' direct TIFF decode)."""
    from segcls.core.errors import SlideError
    from segcls.runtime.slide import OpenSlideSlide, open_slide

    try:
        return OpenSlideSlide(slide_path, direct=False)
    except SlideError:  # a file OpenSlide cannot open at all: whatever reads it
        return open_slide(slide_path)


def _write(out: Path, canvas: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(out, canvas, tile=(512, 512), compression="zlib")


def plain_loop(slide_path: str | Path, model: str | Path, out: str | Path, mpp: float | None = None) -> dict:
    """The per-tile loop: read, infer (batch 1), paste into a full-size canvas, write."""
    from segcls.runtime.tiling import read_tile

    start = time.perf_counter()
    session = _session(Path(model))
    with _open(slide_path) as slide:
        plan = _plan(slide, Path(model), mpp)
        width, height = plan.size
        canvas = np.zeros((height, width), dtype=np.uint8)
        tiles = 0
        for y in range(0, height, ROI):
            for x in range(0, width, ROI):
                pixels = read_tile(slide, plan, x, y, ROI)
                (labels,) = session.run(["labels"], {"image": pixels[None]})
                full = np.repeat(np.repeat(labels[0], 8, axis=0), 8, axis=1)
                h, w = min(ROI, height - y), min(ROI, width - x)
                canvas[y : y + h, x : x + w] = full[:h, :w]
                tiles += 1
    _write(Path(out), canvas)
    return {"seconds": time.perf_counter() - start, "tiles": tiles, "size": [width, height]}


def read_frame(slide, plan) -> np.ndarray:
    """The whole read frame as one (h, w, 3) array, as a whole-frame method needs it: one read_region
    of the level, or (when the level must be resampled) 1024 px blocks resampled like the pipeline's."""
    from segcls.runtime.tiling import read_tile

    width, height = plan.size
    if not plan.resample:
        return slide.read_region((0, 0), plan.level, (width, height))
    frame = np.empty((height, width, 3), dtype=np.uint8)
    for y in range(0, height, ROI):
        for x in range(0, width, ROI):
            h, w = min(ROI, height - y), min(ROI, width - x)
            frame[y : y + h, x : x + w] = read_tile(slide, plan, x, y, ROI)[:h, :w]
    return frame


def sliding_window(slide_path: str | Path, model: str | Path, out: str | Path, mpp: float | None = None) -> dict:
    """MONAI's whole-frame sliding window (gaussian blending) with ONNX Runtime as the predictor."""
    import torch
    from monai.inferers import sliding_window_inference

    start = time.perf_counter()
    session = _session(Path(model))
    with _open(slide_path) as slide:
        plan = _plan(slide, Path(model), mpp)
        frame = read_frame(slide, plan)
    width, height = plan.size
    windows = 0

    def predictor(x: torch.Tensor) -> torch.Tensor:
        nonlocal windows
        nhwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy(), dtype=np.uint8)
        (probs,) = session.run(["probs"], {"image": nhwc})
        windows += len(nhwc)
        return torch.from_numpy(probs.astype(np.float32))

    # White up to a multiple of 16 (the network's input multiple, so outputs are exactly 1/8); MONAI
    # accumulates in the input's dtype: a float frame, as MONAI users hold it.
    frame = np.pad(frame, ((0, -height % 16), (0, -width % 16), (0, 0)), constant_values=255)
    image = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    del frame
    with torch.inference_mode():
        probs = sliding_window_inference(
            image, ROI, 1, predictor, overlap=WINDOW_OVERLAP, mode="gaussian", padding_mode="constant", cval=255
        )
    labels = probs[0].argmax(0).numpy().astype(np.uint8)
    canvas = np.repeat(np.repeat(labels, 8, axis=0), 8, axis=1)[:height, :width]
    _write(Path(out), np.ascontiguousarray(canvas))
    return {"seconds": time.perf_counter() - start, "tiles": windows, "size": [width, height]}


def segcls_run(
    slide_path: str | Path,
    model: str | Path,
    out: str | Path,
    mpp: float | None = None,
    options: dict | None = None,
    backend_tiles: int = 8,
    precision: str | None = None,
) -> dict:
    """`infer_slide` with default options (plus `options`; `precision` as `--precision`), then the backend
    alone on up to `backend_tiles` of the same tiles held in memory, then the readers alone over every tile
    run."""
    from segcls.bench.bench_infer import backend_only
    from segcls.runtime.pipeline import InferOptions, infer_slide, open_model

    start = time.perf_counter()
    opts = InferOptions(mpp=mpp, progress=False, **(options or {}))
    backend = open_model(model, opts.backend, sessions=opts.sessions, precision=precision, tile=opts.tile)
    summary = infer_slide(slide_path, backend, out, opts).summary
    seconds = time.perf_counter() - start
    rss = peak_rss_mb()  # before the extra passes below allocate their own buffers
    tiles = _tiles_run(slide_path, backend, opts)
    plan, grid, run_tiles = tiles
    sample = run_tiles[:: max(1, len(run_tiles) // backend_tiles)][:backend_tiles]  # spread over the slide
    only = backend_only(backend, _read_batches(slide_path, (plan, grid, sample), opts))
    reads = read_only(slide_path, tiles, opts, backend.on_cpu)
    backend.close()
    run = summary["tiles"]["run"]
    return {
        "seconds": seconds,
        "tiles": run,
        "size": summary["read_size"],
        "peak_rss_mb": rss,
        "summary": {
            k: summary[k]
            for k in (
                "tiles",
                "timings_s",
                "tiles_per_s",
                "readers",
                "backend",
                "precision",
                "backend_choice",
                "device",
            )
        },
        "backend_only": only,
        "read_only": reads,
        "e2e_tiles_per_s": run / summary["timings_s"]["total"],
        "e2e_mpx_per_s": summary["tiles"]["input_mpx"] / summary["timings_s"]["total"],
    }


def open_only(model: str | Path, mpp: float | None, options: dict, precision: str | None) -> dict:
    """Open the model as `segcls_run` does, then close it: what a first open measures or compiles (`--backend
    auto`'s probe, OpenVINO's compiled model) is cached for the timed runs."""
    from segcls.runtime.pipeline import InferOptions, open_model

    start = time.perf_counter()
    opts = InferOptions(mpp=mpp, progress=False, **options)
    open_model(model, opts.backend, sessions=opts.sessions, precision=precision, tile=opts.tile).close()
    return {"seconds": time.perf_counter() - start}


def _tiles_run(slide_path, backend, opts) -> tuple:
    """(plan, grid, the tiles the pipeline runs), by the pipeline's own choices."""
    from segcls.runtime.plan import plan_tiles
    from segcls.runtime.slide import open_slide

    with open_slide(slide_path, mpp=opts.slide_mpp) as slide:
        plan = plan_tiles(slide, backend, opts)
    return plan.read, plan.grid, plan.tiles


def _read_batches(slide_path, planned, opts) -> list[np.ndarray]:
    from segcls.runtime.feed import read_batches
    from segcls.runtime.slide import open_slide

    plan, _, tiles = planned
    with open_slide(slide_path, mpp=opts.slide_mpp) as slide:
        return read_batches(slide, plan, tiles, opts.batch)


def read_only(slide_path, planned, opts, on_cpu: bool = True) -> dict:
    """The pipeline's readers with nothing to feed: tiles/s of reading alone, same threads."""
    from segcls.bench.readers import read_throughput
    from segcls.runtime.cores import reader_budget
    from segcls.runtime.slide import open_slide

    plan, grid, tiles = planned
    with open_slide(slide_path, mpp=opts.slide_mpp) as slide:
        return read_throughput(slide, plan, tiles, grid, reader_budget(opts.workers, on_cpu), opts.batch)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run one of the compared methods once and print one JSON line.")
    p.add_argument("method", choices=("plain", "window", "segcls"))
    p.add_argument("slide", type=Path)
    p.add_argument("model", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--mpp", type=float)
    p.add_argument("--options", default="{}", help="segcls only: InferOptions fields as JSON")
    p.add_argument("--precision", help="segcls only: as segcls-infer --precision")
    p.add_argument("--open-only", action="store_true", help="segcls only: open the model as the run would, no more")
    args = p.parse_args(argv)
    if args.method == "segcls" and args.open_only:
        result = open_only(args.model, args.mpp, json.loads(args.options), args.precision)
    elif args.method == "segcls":
        options = json.loads(args.options)
        result = segcls_run(args.slide, args.model, args.out, args.mpp, options, precision=args.precision)
    else:
        run = plain_loop if args.method == "plain" else sliding_window
        result = run(args.slide, args.model, args.out, args.mpp)
        result["peak_rss_mb"] = peak_rss_mb()
    result["method"] = args.method
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
