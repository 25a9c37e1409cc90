"""The measured part of bench/gpu_check.sh: per backend that runs here, label agreement with the CPU FP32
reference on the same tiles, tiles/s at several batch sizes, and end-to-end slide throughput against
backend-only and read-only throughput.

    python bench/gpu_check.py OUT_DIR                     # on a CUDA machine (what gpu_check.sh runs)
    python bench/gpu_check.py OUT_DIR --device cpu --tile 64 --slide 512 --batches 1 2   # the script's own test

Backends: torch CUDA FP32 and FP16 always (on --device cpu: torch CPU FP32 and FP16, to test the
script); ONNX Runtime CUDA and TensorRT only where installed, and reported as skipped with the reason
otherwise. Read-only is the same pipeline run with a backend that returns zeros at once; e2e target:
e2e tiles/s >= 0.8 x min(backend-only, read-only). Writes OUT_DIR/gpu-check.json and gpu-check.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import numpy as np

from segcls.bench.bench_infer import cpu_line, machine, synthetic_slide, versions
from segcls.core.atomic import atomic_path
from segcls.runtime.backends import Backend, BackendOutput
from segcls.runtime.pipeline import InferOptions, infer_slide
from segcls.runtime.tiling import DEFAULT_OVERLAP

TARGET = 0.8  # e2e >= TARGET x min(backend-only, read-only)


def gpu_info() -> dict:
    """nvidia-smi's view of the GPUs (name, compute capability, driver, memory), or why there is none."""
    query = "name,compute_cap,driver_version,memory.total"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"nvidia-smi: {e}"}
    rows = [
        dict(zip(query.split(","), (v.strip() for v in line.split(",")), strict=False))
        for line in out.stdout.splitlines()
    ]
    return {"gpus": rows} if rows else {"error": out.stderr.strip() or "no GPU listed"}


def test_results(junit_xml: Path) -> dict:
    """Counts and the names of failed / skipped tests from pytest's --junitxml report."""
    import xml.etree.ElementTree as ET

    if not junit_xml.is_file():
        return {"error": f"no pytest report at {junit_xml}"}
    root = ET.parse(junit_xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    out: dict = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    out["not_passed"] = {}
    for case in suite.iter("testcase"):
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                name = f"{case.get('classname')}::{case.get('name')}"
                out["not_passed"][name] = f"{kind}: {(node.get('message') or '')[:300]}"
    return out


def random_checkpoint(folder: Path, mpp: float = 0.5) -> Path:
    """A seeded random network with random BatchNorm statistics (so labels vary across the tile)."""
    import torch

    from segcls.checkpoint import save_checkpoint
    from segcls.core.description import ModelDescription
    from segcls.model import build_model

    torch.manual_seed(0)
    model = build_model(4)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = folder / "random.pt"
    save_checkpoint(path, model.eval(), ModelDescription(classes=("a", "b", "c", "d"), mpp=mpp))
    return path


def tiles(count: int, size: int, seed: int = 0) -> np.ndarray:
    from segcls.export.verify import tissue_like_images

    return tissue_like_images(count, size, size, np.random.default_rng(seed))


def candidate_backends(checkpoint: Path, work: Path, device: str, tile: int, max_batch: int) -> dict:
    """label -> a function that opens the backend, or the reason it cannot run here (a str)."""
    from segcls.runtime.backends.torch import TorchBackend

    def torch_backend(precision: str) -> Callable[[], Backend]:
        def open_() -> Backend:
            backend = TorchBackend(checkpoint, device=device, precision=precision)
            backend.load()
            return backend

        return open_

    found: dict = {f"torch {device} fp32": torch_backend("fp32"), f"torch {device} fp16": torch_backend("fp16")}
    if device == "cpu":
        return found
    onnx_path: list[Path] = []

    def exported(fp16: bool) -> Path:
        from segcls.export.onnx_export import export_onnx

        if not onnx_path:
            onnx_path.append(export_onnx(checkpoint, work / "model.onnx", fp16=fp16, verify=False).path)
        return onnx_path[0]

    try:
        import onnxruntime

        has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        reason = None if has_cuda else f"onnxruntime {onnxruntime.__version__} has no CUDA provider"
    except ImportError:
        reason = "onnxruntime is not installed"
    if reason:
        found["onnxruntime cuda"] = reason
    else:

        def ort_cuda() -> Backend:
            from segcls.runtime.backends.onnxruntime import OnnxRuntimeBackend

            backend = OnnxRuntimeBackend(exported(True), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            backend.load()  # refuses a session that fell back to the CPU
            return backend

        found["onnxruntime cuda"] = ort_cuda
    try:
        import tensorrt  # noqa: F401

        def trt() -> Backend:
            from segcls.runtime.backends import open_backend

            return open_backend(exported(True), "tensorrt", tile=tile, batch=max_batch, log=print)

        found["tensorrt fp16"] = trt
    except (ImportError, OSError) as e:
        found["tensorrt fp16"] = f"TensorRT is not installed ({type(e).__name__})"
    return found


def agreement(backend: Backend, images: np.ndarray, reference: BackendOutput) -> dict:
    out = backend.infer(images)
    probs = np.asarray(out.probs, dtype=np.float32)
    return {
        "tiles": len(images),
        "labels_agreement": round(float((np.asarray(out.labels) == reference.labels).mean()), 6),
        "probs_max_abs_diff": round(float(np.abs(probs - reference.probs).max()), 6),
    }


def throughput(backend: Backend, image: np.ndarray, batch: int, seconds: float, min_batches: int = 3) -> dict:
    """tiles/s through `infer_stream` on in-memory batches (copies and compute overlapped as in a run)."""
    data = np.repeat(image[None], batch, axis=0)
    for _ in backend.infer_stream(iter([data, data])):  # warm-up: allocations, cuDNN autotuning
        pass
    done = 0
    start = time.perf_counter()

    def batches() -> Iterator[np.ndarray]:
        while done < min_batches or time.perf_counter() - start < seconds:
            yield data

    for _ in backend.infer_stream(batches()):
        done += 1
    elapsed = time.perf_counter() - start
    return {
        "batch": batch,
        "batches": done,
        "seconds": round(elapsed, 3),
        "tiles_per_s": round(done * batch / elapsed, 2),
    }


class NullBackend(Backend):
    """Zeros at once, for the read-only run: the same pipeline, readers and mask writer, no network."""

    name = "null"

    def __init__(self, description, num_classes: int) -> None:
        super().__init__()
        self._description, self._classes = description, num_classes

    def load(self) -> None:
        self.description = self._description

    def infer(self, batch: np.ndarray) -> BackendOutput:
        b, h, w = len(batch), batch.shape[1] // 8, batch.shape[2] // 8
        return BackendOutput(
            np.zeros((b, h, w), np.uint8),
            np.zeros((b, self._classes, h, w), np.float16),
            np.zeros((b, self._classes), np.float32),
        )


def slide_run(slide: Path, backend: Backend, out: Path, opts: InferOptions) -> dict:
    result = infer_slide(slide, backend, out, opts)
    s = result.summary
    tiles_run, seconds = s["tiles"]["run"], s["timings_s"]["total"]
    return {"tiles": tiles_run, "seconds": round(seconds, 3), "tiles_per_s": round(tiles_run / seconds, 2)}


def run_check(
    out_dir: Path,
    device: str = "cuda",
    tile: int = 1024,
    batches: tuple[int, ...] = (1, 8, 32),
    slide_px: int = 20480,
    e2e_batch: int = 16,
    workers: int | None = None,
    seconds: float = 3.0,
    agreement_tiles: int = 4,
    junit: Path | None = None,
) -> dict:
    """Everything the GPU check measures; writes gpu-check.json and gpu-check.md into `out_dir`."""
    import torch

    workers = workers or min(os.cpu_count() or 2, 16)
    report: dict = {
        "command": " ".join(["python", *sys.argv]) if sys.argv[0].endswith("gpu_check.py") else "run_check()",
        "settings": {
            "device": device,
            "tile": tile,
            "batches": list(batches),
            "slide_px": slide_px,
            "e2e_batch": e2e_batch,
            "workers": workers,
            "seconds_per_point": seconds,
        },
        "machine": machine() | gpu_info() | {"torch_threads": torch.get_num_threads()},
        "versions": versions() | {"torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()},
        "backends": {},
        "skipped": {},
    }
    if junit is not None:
        report["gpu_tests"] = test_results(Path(junit))
    with tempfile.TemporaryDirectory(prefix="segcls-gpu-check-") as tmp:
        work = Path(tmp)
        checkpoint = random_checkpoint(work)
        images = tiles(agreement_tiles, tile)
        from segcls.runtime.backends.torch import TorchBackend

        reference_backend = TorchBackend(checkpoint, device="cpu", precision="fp32")
        reference_backend.load()
        reference = reference_backend.infer(images)
        description = reference_backend.description
        reference_backend.close()

        slide = synthetic_slide(work, slide_px)
        overlap = DEFAULT_OVERLAP if tile >= 512 else 16  # the runtime's default, or what a tiny tile allows
        opts = InferOptions(batch=e2e_batch, tile=tile, overlap=overlap, tissue="none", workers=workers, progress=False)
        read_only = slide_run(slide, NullBackend(description, len(description.classes)), work / "null.mask.tif", opts)
        report["read_only"] = read_only

        found = candidate_backends(checkpoint, work, device, tile, max(max(batches), e2e_batch))
        for label, opener in found.items():
            if isinstance(opener, str):
                report["skipped"][label] = opener
                continue
            entry: dict = {}
            try:
                backend = opener()
            except Exception as e:  # a backend that does not start here is reported, not fatal
                report["skipped"][label] = f"{type(e).__name__}: {e}"
                continue
            with contextlib.closing(backend):
                entry["device"] = backend.device
                entry["agreement_vs_cpu_fp32"] = agreement(backend, images, reference)
                entry["throughput"] = [throughput(backend, images[0], b, seconds) for b in batches]
                backend_only = throughput(backend, images[0], e2e_batch, seconds)
                e2e = slide_run(slide, backend, work / f"{label.replace(' ', '-')}.mask.tif", opts)
            bound = min(backend_only["tiles_per_s"], read_only["tiles_per_s"])
            entry["e2e"] = {
                "tiles_per_s": e2e["tiles_per_s"], "tiles": e2e["tiles"], "seconds": e2e["seconds"],
                "backend_only_tiles_per_s": backend_only["tiles_per_s"],
                "read_only_tiles_per_s": read_only["tiles_per_s"],
                "e2e_over_backend_only": round(e2e["tiles_per_s"] / backend_only["tiles_per_s"], 3),
                "e2e_over_read_only": round(e2e["tiles_per_s"] / read_only["tiles_per_s"], 3),
                "e2e_over_min": round(e2e["tiles_per_s"] / bound, 3),
                "target_met": e2e["tiles_per_s"] >= TARGET * bound,
            }  # fmt: skip
            report["backends"][label] = entry
    report["slide"] = {"size_px": slide_px, "mpp": 0.5, "tiles": read_only["tiles"]}
    write_report(report, Path(out_dir))
    return report


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    gpus = ", ".join(f"{g['name']} (sm {g['compute_cap']}, driver {g['driver_version']})" for g in m.get("gpus", []))
    lines = [
        f"GPU check: {gpus or m.get('error', 'no GPU')}; CPU {cpu_line(m)}, {m['cores']} cores",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"Command: `{report['command']}`; tile {s['tile']} px, e2e on a {s['slide_px']} px synthetic slide "
        f"({report['slide']['tiles']} tiles), batch {s['e2e_batch']}, {s['workers']} reader workers",
        "",
        "| backend | device | labels agreement vs CPU fp32 | probs max abs diff | "
        + " | ".join(
            f"tiles/s b{t['batch']}" for t in next(iter(report["backends"].values()), {}).get("throughput", [])
        )
        + " | e2e tiles/s | backend-only | read-only | e2e/min | target |",
        "|---|---|---|---|" + "---|" * len(s["batches"]) + "---|---|---|---|---|",
    ]
    for label, b in report["backends"].items():
        a, e = b["agreement_vs_cpu_fp32"], b["e2e"]
        lines.append(
            f"| {label} | {b['device']} | {a['labels_agreement']:.4f} | {a['probs_max_abs_diff']:.2e} | "
            + " | ".join(str(t["tiles_per_s"]) for t in b["throughput"])
            + f" | {e['tiles_per_s']} | {e['backend_only_tiles_per_s']} | {e['read_only_tiles_per_s']} "
            f"| {e['e2e_over_min']} | {'met' if e['target_met'] else 'MISSED'} |"
        )
    lines += ["", *(f"- skipped {k}: {v}" for k, v in report["skipped"].items())]
    if "gpu_tests" in report:
        t = report["gpu_tests"]
        lines += ["", f"GPU tests: {t}" if "error" in t else
                  f"GPU tests: {t['tests']} run, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped",
                  *(f"- {k}: {v}" for k, v in t.get("not_passed", {}).items())]  # fmt: skip
    return "\n".join(lines) + "\n"


def summary(report: dict) -> str:
    """One line per backend, then the skipped ones: what gpu_check.sh prints."""
    out = []
    for label, b in report["backends"].items():
        e, a = b["e2e"], b["agreement_vs_cpu_fp32"]
        best = max(b["throughput"], key=lambda t: t["tiles_per_s"])
        out.append(
            f"{label:<20} agreement {a['labels_agreement']:.4f}  "
            f"best {best['tiles_per_s']} tiles/s (b{best['batch']})  "
            f"e2e {e['tiles_per_s']} = {e['e2e_over_min']} x min(backend {e['backend_only_tiles_per_s']}, "
            f"read {e['read_only_tiles_per_s']}) {'target met' if e['target_met'] else 'TARGET MISSED'}"
        )
    out += [f"{label:<20} SKIPPED: {why}" for label, why in report["skipped"].items()]
    t = report.get("gpu_tests")
    if t and "error" not in t:
        out.append(f"gpu tests: {t['tests']} run, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped")
        out += [f"  {name}: {why}" for name, why in t["not_passed"].items()]
    elif t:
        out.append(f"gpu tests: {t['error']}")
    return "\n".join(out)


def write_report(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "gpu-check.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    with atomic_path(out_dir / "gpu-check.md") as tmp:
        tmp.write_text(markdown(report))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--device", default="cuda", show_default=True, help="cuda, or cpu to test this script.")
@click.option("--tile", default=1024, show_default=True)
@click.option("--batches", type=int, multiple=True, default=(1, 8, 32), show_default=True)
@click.option("--slide", "slide_px", default=20480, show_default=True, help="Synthetic slide side, px.")
@click.option("--e2e-batch", default=16, show_default=True)
@click.option("--workers", type=int, help="Reader threads [default: the cores, at most 16].")
@click.option("--seconds", default=3.0, show_default=True, help="Time per throughput point.")
@click.option("--junit", type=click.Path(path_type=Path), help="pytest --junitxml report of the gpu tests, to include.")
def main(out_dir: Path, device: str, tile: int, batches: tuple[int, ...], slide_px: int, e2e_batch: int,
         workers: int | None, seconds: float, junit: Path | None) -> None:  # fmt: skip
    """Measure the backends that run here; OUT_DIR gets gpu-check.json and gpu-check.md."""
    report = run_check(out_dir, device, tile, tuple(batches), slide_px, e2e_batch, workers, seconds, junit=junit)
    click.echo(summary(report))
    if not report["backends"]:  # e.g. a CPU-only torch on a GPU machine: nothing was checked
        sys.exit(1)


if __name__ == "__main__":
    main()
