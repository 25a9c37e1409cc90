"""What writing the level-0 mask costs a whole-slide run: the streamed writer against the serial one.

    segcls-bench mask-write                              # 20k, 40k, 60k px synthetic slides, 2 rounds
    segcls-bench mask-write --sizes 60000 --rounds 3 --model m.onnx

Each run is `infer_slide` on a synthetic slide (0.5 um/px, read at the model's 4 um/px) in its own process,
so peak RSS is that of the whole run. Two writers, alternated within each round:

- `serial`: the writer before streaming (kept here only, for comparison): after inference, every tile of
  every level upsampled and compressed on one thread, handed to tifffile as arrays;
- `streamed`: the runtime's `MaskWriter`: level-0 tiles written while inference runs, compressed on a
  few threads, uniform tiles compressed once.

Reported per run: e2e wall time, `write` (seconds of writing left after inference: what it adds to the
run), its share of e2e, the CPU seconds all mask tiles took on any thread, inference time, peak RSS. The
two writers' masks are compared byte for byte, and the streamed one is opened with OpenSlide.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import MappingProxyType

import click
import numpy as np

from segcls.bench.bench_infer import cpu_line, int_list
from segcls.bench.report import check_results, results_options, write_results
from segcls.core.cli import command, input_path
from segcls.core.constants import UNLABELLED
from segcls.core.tiff import palette_colormap, pyramid_sizes, write_pyramid
from segcls.runtime.mask_writer import upsample_window
from segcls.runtime.slide import Slide

WRITERS = ("serial", "streamed")
_CHUNK_ROWS = 256  # rows rendered at once: bounds the renderer's temporaries whatever the region size


class SyntheticSlide(Slide):
    """A square slide rendered on demand at each pyramid level (no file): white glass, a few tissue blobs
    of different colours and noise texture, so the mask has glass, one-class regions and mixed tiles.
    A 60k x 60k slide file would take hours to render on 2 cores; writing cost does not depend on it."""

    def __init__(self, size: int, mpp: float = 0.5, seed: int = 0) -> None:
        super().__init__(f"synthetic-{size}.svs")
        self.size, self._mpp = size, mpp
        dims = [(size, size)]
        while max(dims[-1]) > 1024:
            dims.append((math.ceil(dims[-1][0] / 2), math.ceil(dims[-1][1] / 2)))
        self.level_dimensions = tuple(dims)
        rng = np.random.default_rng(seed)
        self._texture = rng.normal(0, 1, (256, 256, 3)).astype(np.float32)
        # (centre x, centre y, radius x, radius y) as fractions of the slide; colour; noise amplitude
        self._blobs = [
            ((rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.25), rng.uniform(0.1, 0.25)),
             np.array([rng.uniform(120, 230), rng.uniform(30, 130), rng.uniform(110, 210)], np.float32),
             rng.uniform(5, 60))
            for _ in range(7)
        ]  # fmt: skip

    @property
    def properties(self) -> MappingProxyType:
        return MappingProxyType({"openslide.mpp-x": str(self._mpp), "openslide.mpp-y": str(self._mpp)})

    def _native_mpp(self) -> float | None:
        return self._mpp

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        return self._padded(location, level, size, lambda x, y, w, h: self._render(level, x, y, w, h))

    def _render(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.size / self.level_dimensions[level][0]
        fx = ((np.arange(x, x + w) + 0.5) * ds / self.size).astype(np.float32)
        tx = np.arange(x, x + w) % 256
        out = np.empty((h, w, 3), np.uint8)
        for r0 in range(0, h, _CHUNK_ROWS):
            r1 = min(h, r0 + _CHUNK_ROWS)
            fy = ((np.arange(y + r0, y + r1) + 0.5) * ds / self.size).astype(np.float32)
            noise = self._texture[(np.arange(y + r0, y + r1) % 256)[:, None], tx[None, :]]
            chunk = np.full((r1 - r0, w, 3), 245, np.float32)
            for (cx, cy, rx, ry), colour, amplitude in self._blobs:
                inside = ((fx[None, :] - cx) / rx) ** 2 + ((fy[:, None] - cy) / ry) ** 2 < 1
                chunk[inside] = colour + amplitude * noise[inside]
            out[r0:r1] = np.clip(chunk, 0, 255)
        return out


class SerialMaskWriter:
    """The mask writer before streaming, with `MaskWriter`'s interface: nothing happens until `finish()`,
    which upsamples and compresses every tile on the calling thread (tifffile given arrays)."""

    def __init__(self, path, labels, size, colors, mpp, tile=512, classes=None, progress=None, *,
                 compression="zlib", compression_level=6, downsample=None) -> None:  # fmt: skip
        self.path, self.labels, self.size, self.tile, self.downsample = path, labels, size, tile, downsample
        self.args = {"tile": tile, "compression": compression, "compression_level": compression_level,
                     "colormap": palette_colormap(colors), "mpp": mpp, "progress": progress,
                     "description": json.dumps({"segcls": "mask", "classes": list(classes) if classes else None,
                                                "colors": [[int(v) for v in c] for c in colors],
                                                "unlabelled": UNLABELLED, "mpp": mpp})}  # fmt: skip
        self.cpu_seconds = 0.0

    def __enter__(self) -> SerialMaskWriter:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def rows_final(self, rows: int) -> None:
        pass

    def finish(self) -> list[tuple[int, int]]:
        sizes = pyramid_sizes(*self.size, self.tile)
        (width, height), ds = self.size, self.downsample

        def read_tile(level, x, y, w, h):
            lw, lh = sizes[level]
            pixel = None if ds is None else (ds * lw / width, ds * lh / height)
            return upsample_window(self.labels, sizes[level], x, y, w, h, pixel)

        t0 = time.thread_time()
        write_pyramid(self.path, self.size, read_tile, **self.args)
        self.cpu_seconds = time.thread_time() - t0
        return sizes


def run_once(size: int, writer: str, model: Path, mask: Path, backend: str = "auto") -> dict:
    """One whole-slide run in this process (call it in a fresh process: peak RSS is the process's)."""
    from segcls.runtime.backends import open_backend
    from segcls.runtime.mask_writer import MaskWriter
    from segcls.runtime.options import InferOptions
    from segcls.runtime.pipeline import infer_slide

    if writer not in WRITERS:
        raise ValueError(f"writer must be one of {WRITERS}, got {writer!r}")
    writer_class = SerialMaskWriter if writer == "serial" else MaskWriter
    with open_backend(model, backend) as be:
        t0 = time.perf_counter()
        result = infer_slide(SyntheticSlide(size), be, mask, InferOptions(progress=False), mask_writer=writer_class)
        e2e = time.perf_counter() - t0
    s = result.summary
    t = s["timings_s"]
    return {
        "size": size, "writer": writer, "e2e_s": round(e2e, 3), "write_s": t["write"],
        "write_share": round(t["write"] / e2e, 4), "write_cpu_s": round(t["write_cpu"], 3),
        "infer_s": t["infer"], "tiles_run": s["tiles"]["run"], "read_size": s["read_size"],
        "label_map": list(result.labels.shape), "backend": s["backend"],
        "level0_uniform_tiles": round(_uniform_fraction(result.labels, 512 * result.labels.shape[1] / size), 3),
        "threads": _threads(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }  # fmt: skip


def _uniform_fraction(labels: np.ndarray, block: float) -> float:
    """Share of level-0 mask tiles of one value: `block` label px per tile side (about)."""
    b = max(1, round(block))
    h, w = (labels.shape[0] // b) * b, (labels.shape[1] // b) * b
    blocks = labels[:h, :w].reshape(h // b, b, w // b, b)
    return float((blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3))).mean())


def _threads() -> dict:
    import os

    return {"cores": len(os.sched_getaffinity(0)), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def _child(size: int, writer: str, model: Path, mask: Path, backend: str) -> dict:
    cmd = [sys.executable, "-m", "segcls.bench.mask_write", str(size), writer, str(model), str(mask), backend]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_masks(serial: Path, streamed: Path, mpp: float) -> dict:
    """Byte equality of the two writers' masks, and what OpenSlide sees in the streamed one."""
    import openslide
    import tifffile

    with tifffile.TiffFile(streamed) as tif:
        levels = len(tif.pages)
        meta = json.loads(tif.pages[0].description)
    slide = openslide.OpenSlide(streamed)
    w, h = slide.dimensions
    pixel = np.asarray(slide.read_region((w // 2, h // 2), 0, (1, 1)))[0, 0, :3]
    out = {
        "identical_bytes": serial.read_bytes() == streamed.read_bytes() if serial.exists() else None,
        "openslide_levels": slide.level_count, "tiff_levels": levels,
        "mpp_ok": abs(float(slide.properties["openslide.mpp-x"]) - mpp) < 1e-6,
        "centre_rgb": pixel.tolist(), "colors": meta["colors"],
    }  # fmt: skip
    slide.close()
    return out


def bench_mask_write(sizes, rounds: int = 2, model: Path | None = None, backend: str = "auto",
                     progress=print) -> dict:  # fmt: skip
    """Alternate the two writers on each size for `rounds` rounds, each run in its own process."""
    from segcls.bench.bench_infer import machine, random_model, versions

    runs = []
    checks = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = model or random_model(tmp, mpp=4.0)
        for r in range(rounds):
            for size in sizes:
                order = WRITERS if r % 2 == 0 else WRITERS[::-1]
                for writer in order:
                    mask = tmp / f"{writer}-{size}.tif"
                    run = _child(size, writer, model_path, mask, backend) | {"round": r}
                    runs.append(run)
                    progress(json.dumps(run))
                if r == 0:
                    checks[size] = check_masks(tmp / f"serial-{size}.tif", tmp / f"streamed-{size}.tif", 0.5)
                    progress(json.dumps({"size": size, **checks[size]}))
                for writer in WRITERS:
                    (tmp / f"{writer}-{size}.tif").unlink(missing_ok=True)
    return {"runs": runs, "summary": summarise(runs), "checks": checks, "machine": machine(),
            "versions": versions(), "model": str(model) if model else "random network, ONNX fp32"}  # fmt: skip


def summarise(runs: list[dict]) -> list[dict]:
    out = []
    for size in sorted({r["size"] for r in runs}):
        for writer in WRITERS:
            rs = [r for r in runs if r["size"] == size and r["writer"] == writer]
            if not rs:
                continue
            row = {"size": size, "writer": writer, "n": len(rs), "tiles_run": rs[0]["tiles_run"]}
            for key in ("e2e_s", "write_s", "write_share", "write_cpu_s", "infer_s", "peak_rss_mb"):
                values = [r[key] for r in rs]
                row[key] = {"median": round(statistics.median(values), 4), "min": min(values), "max": max(values)}
            out.append(row)
    return out


def markdown(result: dict, command: str) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {cpu_line(m)}, {m['cores']} cores (load average at the end {m['loadavg'][0]:.1f}, shared)",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"Command: `{command}`",
        "Model: random ResNet-18 segcls network, ONNX fp32, reads at 4 um/px; synthetic slides at 0.5 um/px.",
        "",
        "Median (min-max) over the rounds; `write` = seconds of writing left after inference.",
        "",
        "| slide | writer | runs | tiles | e2e s | write s | write share | write CPU s | infer s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(v, pct=False):
        f = (lambda x: f"{100 * x:.1f} %") if pct else (lambda x: f"{x:.2f}" if x < 100 else f"{x:.0f}")
        return f"{f(v['median'])} ({f(v['min'])}-{f(v['max'])})"

    for row in result["summary"]:
        lines.append(
            f"| {row['size'] // 1000}k | {row['writer']} | {row['n']} | {row['tiles_run']} | {cell(row['e2e_s'])} "
            f"| {cell(row['write_s'])} | {cell(row['write_share'], True)} | {cell(row['write_cpu_s'])} "
            f"| {cell(row['infer_s'])} | {cell(row['peak_rss_mb'])} |"
        )
    lines += ["", "| slide | masks identical (bytes) | OpenSlide levels | TIFF levels | mpp | centre RGB |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for size, c in result["checks"].items():
        lines.append(f"| {int(size) // 1000}k | {c['identical_bytes']} | {c['openslide_levels']} | {c['tiff_levels']} "
                     f"| {'ok' if c['mpp_ok'] else 'WRONG'} | {c['centre_rgb']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # one run, in the process `_child` started
    size, writer, model, mask, backend = sys.argv[1:6]
    print(json.dumps(run_once(int(size), writer, Path(model), Path(mask), backend)))


@command("mask-write")
@click.option("--sizes", default="20000,40000,60000", callback=int_list,
              help="Sides of the square synthetic slides, px, comma-separated.")  # fmt: skip
@click.option("--rounds", default=2, type=click.IntRange(1), help="Rounds, the writers alternating in each.")
@click.option("--model", type=input_path(dir_okay=False),
              help="Model reading at 4 um/px [default: a random network exported to ONNX].")  # fmt: skip
@click.option("--backend", default="auto", help="auto (from the model file) or one backend.")
@results_options("mask-write")
def mask_write_command(
    sizes: tuple[int, ...], rounds: int, model: Path | None, backend: str, output: Path, overwrite: bool, quiet: bool
) -> None:
    """Mask writing's share of a whole-slide run: streamed writer vs serial, e2e, peak RSS per process."""
    from segcls.bench.mask_write import bench_mask_write, markdown

    if not sizes or min(sizes) < 1024:
        raise click.BadParameter("sizes must be >= 1024 px", param_hint="--sizes")
    check_results(output, overwrite)
    say = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))
    result = bench_mask_write(list(sizes), rounds, model, backend, progress=say)
    command = "segcls-bench mask-write " + " ".join(sys.argv[2:])
    result["command"] = command
    text = markdown(result, command)
    write_results(output, result, text, command=False)  # the table names the command already
    click.echo(text)
    click.echo(f"wrote {output} and {output.with_suffix('.md')}")
