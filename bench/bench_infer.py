"""Slide-runtime throughput: the whole pipeline vs the backend alone on the same batches, one process.

    python bench/bench_infer.py                       # random model + synthetic slide, ONNX Runtime
    python bench/bench_infer.py --model m.onnx --slide s.svs --tile 1024 --batch 8

The ratio pipeline / backend-only says how much of the backend's speed the pipeline keeps (reading,
resampling, stitching and writing overlap with inference or add to it). Writes NAME.json and NAME.md (a
markdown table with the machine and library versions) in the working directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from segcls.runtime.backends import open_backend
from segcls.runtime.feed import read_batches
from segcls.runtime.pipeline import InferOptions, infer_slide
from segcls.runtime.plan import plan_tiles
from segcls.runtime.slide import open_slide
from segcls.runtime.tiling import DEFAULT_OVERLAP


def random_model(folder: Path, mpp: float) -> Path:
    """A randomly initialised network exported to ONNX (needs torch + onnx: the export extras)."""
    from segcls.checkpoint import save_checkpoint
    from segcls.core.description import ModelDescription
    from segcls.export.onnx_export import export_onnx
    from segcls.model import build_model

    description = ModelDescription(classes=("a", "b", "c"), mpp=mpp)
    save_checkpoint(folder / "random.pt", build_model(3), description)
    return export_onnx(folder / "random.pt", folder / "random.onnx", verify=False).path


def synthetic_slide(folder: Path, size: int) -> Path:
    from segcls.synth.slide import make_slide

    path = folder / f"synthetic-{size}.tif"
    make_slide(path, size, size, mpp=0.5, seed=0, progress=False)
    return path


def first_batches(backend, slide_path: Path, opts: InferOptions, max_tiles: int) -> list[np.ndarray]:
    """The pipeline's own first `max_tiles` tiles (trimmed as it trims them), read into memory as batches."""
    with open_slide(slide_path, mpp=opts.slide_mpp) as slide:
        plan = plan_tiles(slide, backend, opts)
        return read_batches(slide, plan.read, plan.tiles[:max_tiles], opts.batch)


def backend_only(backend, batches: list[np.ndarray]) -> dict:
    """Time only the backend on batches already in memory (after one warm-up call), driven as the pipeline
    drives it: through `infer_stream`, where a backend overlaps batches (GPU copies, ONNX Runtime's CPU
    sessions side by side)."""
    backend.infer(batches[0])  # allocations, kernel selection
    start = time.perf_counter()
    for _ in backend.infer_stream(iter(batches)):
        pass
    seconds = time.perf_counter() - start
    tiles = sum(len(b) for b in batches)
    mpx = sum(b.shape[0] * b.shape[1] * b.shape[2] for b in batches) / 1e6  # trimmed tiles differ in size
    return {
        "tiles": tiles,
        "seconds": round(seconds, 3),
        "tiles_per_s": round(tiles / seconds, 3),
        "mpx_per_s": round(mpx / seconds, 3),
    }


def versions() -> dict:
    out = {"python": platform.python_version()}
    for package in ("segcls", "numpy", "onnxruntime", "onnxruntime-gpu", "openslide-python", "openslide-bin",
                    "tifffile", "torch", "tensorrt", "openvino"):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


def machine() -> dict:
    """The CPU with the instruction sets its kernels depend on (`segcls.core.cpu`), cores, system, load."""
    from segcls.core.cpu import cpu_info

    cpu = cpu_info()
    return {
        "cpu": cpu.model,
        "isa": cpu.isa,
        "cores": os.cpu_count(),
        "system": platform.platform(),
        "loadavg": os.getloadavg(),
    }


def cpu_line(m: dict) -> str:
    """The CPU of `machine()` with the instruction sets its kernels depend on: "AMD EPYC (avx2 fma)"."""
    return f"{m['cpu']} ({' '.join(m.get('isa', [])) or 'ISA unknown'})"


def environment() -> dict:
    """What a result must be read with: the machine, its load, the library versions, the threads."""
    from segcls.runtime.cores import available_cores

    return {"machine": machine(), "versions": versions(), "cores_available": available_cores(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip


def machine_line(env: dict) -> str:
    m = env["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    return (
        f"Machine: {cpu_line(m)}, {env['cores_available']} cores "
        f"available (load average {m['loadavg'][0]:.1f}, "
        f"shared host), {env['date']}. Versions: {versions}"
    )


def int_list(ctx, param, value: str) -> tuple[int, ...]:
    """click callback: "1,4,8" -> (1, 4, 8), or a one-line usage error."""
    import click

    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def markdown(results: list[dict]) -> str:
    r0 = results[0]
    lines = [
        f"Machine: {cpu_line(r0['machine'])}, {r0['machine']['cores']} cores (load average at the end "
        f"{r0['machine']['loadavg'][0]:.1f}); device: {r0['device']}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r0["versions"].items()),
        "",
        "| backend | tile | batch | stitch | tiles | Mpix/s | pipeline tiles/s | backend-only tiles/s | ratio "
        "| read s | wait s | infer s | stitch s | write s | total s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r["pipeline"]["timings_s"]
        lines.append(
            f"| {r['backend']} | {r['tile']} | {r['batch']} | {r['stitch']} | {r['pipeline']['tiles']} "
            f"| {r['pipeline']['mpix_per_s']} | {r['pipeline']['tiles_per_s']} "
            f"| {r['backend_only']['tiles_per_s']} | {r['ratio']} | {t['read']} | {t['wait']} | {t['infer']} "
            f"| {t['stitch']} | {t['write']} | {t['total']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="model file [default: a random network exported to ONNX]")
    p.add_argument("--slide", type=Path, help="slide [default: a synthetic slide of --synthetic-size px]")
    p.add_argument("--synthetic-size", type=int, default=8192)
    p.add_argument("--backend", default="auto")
    p.add_argument("--mpp", type=float, default=1.0, help="read resolution (um/px)")
    p.add_argument("--tile", type=int, nargs="+", default=[512])
    p.add_argument("--batch", type=int, nargs="+", default=[4])
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    p.add_argument("--stitch", default="crop")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tissue", default="none", help="auto|none|PATH [default none: every tile, a fixed count]")
    p.add_argument("--max-tiles", type=int, default=64, help="tiles for the backend-only pass")
    p.add_argument("--name", help="results file stem, in the working directory [default: machine-backend-time]")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or random_model(tmp, args.mpp)
        slide = args.slide or synthetic_slide(tmp, args.synthetic_size)
        backend = open_backend(model, args.backend)
        results = []
        for tile in args.tile:
            for batch in args.batch:
                opts = InferOptions(tile=tile, overlap=args.overlap, batch=batch, stitch=args.stitch,
                                    mpp=args.mpp, workers=args.workers, tissue=args.tissue, progress=False)  # fmt: skip
                batches = first_batches(backend, slide, opts, args.max_tiles)
                before = backend_only(backend, batches)
                run = infer_slide(slide, backend, tmp / "mask.tif", opts).summary
                after = backend_only(backend, batches)  # best of before/after: less noise from other load
                only = max(before, after, key=lambda r: r["tiles_per_s"])
                del batches
                mpix = run["tiles"]["run"] * tile * tile / 1e6 / run["timings_s"]["total"]
                results.append({
                    "backend": backend.name, "device": backend.device, "tile": tile, "batch": batch,
                    "overlap": args.overlap, "stitch": args.stitch, "workers": args.workers,
                    "slide": str(args.slide or f"synthetic {args.synthetic_size}^2 at 0.5 mpp"),
                    "model": str(args.model or "random network, ONNX fp32"),
                    "read_size": run["read_size"],
                    "pipeline": {"tiles": run["tiles"]["run"], "tiles_per_s": run["tiles_per_s"],
                                 "mpix_per_s": round(mpix, 3), "timings_s": run["timings_s"]},
                    "backend_only": only,
                    "ratio": round(run["tiles_per_s"] / only["tiles_per_s"], 3),
                    "machine": machine(), "versions": versions(), "tissue": args.tissue,
                })  # fmt: skip
                print(markdown(results[-1:]).splitlines()[-1], flush=True)
        backend.close()

    name = args.name or f"{platform.node() or 'machine'}-{results[0]['backend']}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    Path(f"{name}.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {name}.json and .md")


if __name__ == "__main__":
    main()
