"""What each step of the GPU check measures (bench/gpu_check.py runs each in its own process, within its
own time budget). A step takes the check's `Settings` and its work folder and returns a JSON-able dict;
`prepare` leaves in the work folder what the others read: a random checkpoint, the tiles and their CPU
FP32 outputs, a synthetic slide.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segcls.runtime.backends import Backend, BackendOutput
from segcls.runtime.pipeline import InferOptions, infer_slide
from segcls.runtime.tiling import DEFAULT_OVERLAP


@dataclass(frozen=True)
class Settings:
    """The sizes of one check: `Settings()` for the GPU machine, `Settings.toy()` to run it on a CPU."""

    device: str = "cuda"
    tile: int = 1024
    batches: tuple[int, ...] = (1, 8, 32)  # tiles/s per batch size, eager and graph
    compile_batch: int = 32  # compiled modes: one batch size (each compiles once, tens of seconds)
    slide_px: int = 16384  # the synthetic slide's side: 17 x 17 tiles of 1024 px
    e2e_batch: int = 16
    workers: int | None = None  # reader threads: the cores, at most 16
    seconds: float = 3.0  # per throughput point
    agreement_tiles: int = 4
    train_tile: int = 128  # the paper's
    train_batch: int = 64
    train_steps: int = 20  # timed, after as many warm-up steps
    train_images: int = 12  # of 4 x 4 training tiles each, 4 of them held out (val, test)
    precision: str = "fp16"  # of the throughput and e2e steps (training: AMP on CUDA)

    @classmethod
    def toy(cls, device: str = "cpu") -> Settings:
        """Sizes a 2-core CPU runs in seconds per step: proves the script runs, measures nothing."""
        return cls(
            device=device, tile=64, batches=(1, 2), compile_batch=2, slide_px=64, e2e_batch=2, workers=1,
            seconds=0.05, agreement_tiles=2, train_tile=32, train_batch=4, train_steps=2, train_images=6,
            precision="fp32",
        )  # fmt: skip

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"


# -- the things measured ------------------------------------------------------------------------------


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


def textured_slide(path: Path, size: int, mpp: float = 0.5, tile: int = 512) -> str:
    """A `size` x `size` synthetic slide made in seconds: one rendered tissue texture of 2 x 2 tiles,
    repeated, JPEG like a scanner's where imagecodecs is installed (else deflate). Every level repeats the
    texture rather than reducing level 0: only level 0 is read here. Returns the compression used."""
    from segcls.core.tiff import write_pyramid
    from segcls.synth.appearance import render_region

    texture = render_region(0, 0, 2 * tile, 2 * tile, mpp, seed=0)[0]
    compression = "jpeg" if importlib.util.find_spec("imagecodecs") else "zlib"

    def read_tile(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        x0, y0 = x % (2 * tile), y % (2 * tile)
        return texture[y0 : y0 + h, x0 : x0 + w]

    write_pyramid(path, (size, size), read_tile, samples=3, tile=tile, compression=compression, mpp=mpp)
    return compression


def agreement(out: BackendOutput, reference: dict) -> dict:
    labels, probs = np.asarray(out.labels), np.asarray(out.probs, dtype=np.float32)
    return {
        "labels_agreement": round(float((labels == reference["labels"]).mean()), 6),
        "probs_max_abs_diff": round(float(np.abs(probs - reference["probs"]).max()), 6),
        "scores_max_abs_diff": round(float(np.abs(np.asarray(out.class_scores) - reference["scores"]).max()), 6),
    }


def throughput(backend: Backend, image: np.ndarray, batch: int, seconds: float, min_batches: int = 3) -> dict:
    """tiles/s through `infer_stream` on in-memory batches (copies and compute overlapped as in a run);
    `first_s`: the two warm-up batches (allocation, cuDNN autotuning, a graph capture, a compilation)."""
    data = np.repeat(image[None], batch, axis=0)
    start = time.perf_counter()
    for _ in backend.infer_stream(iter([data, data])):
        pass
    first = time.perf_counter() - start
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
        "first_s": round(first, 3),
        "tiles_per_s": round(done * batch / elapsed, 2),
    }


class NullBackend(Backend):
    """Zeros at once, for the read-only run: the same pipeline, readers and mask writer, no network.

    `on_cpu` as the backend it stands beside: False beside a GPU backend, so the run plans the same
    whole tiles (`fixed_tile`) and the same reader threads as the GPU run it is the bound of."""

    name = "null"

    def __init__(self, description, num_classes: int, *, on_cpu: bool) -> None:
        super().__init__()
        self._description, self._classes, self._on_cpu = description, num_classes, on_cpu

    def load(self) -> None:
        self.description = self._description

    def infer(self, batch: np.ndarray) -> BackendOutput:
        b, h, w = len(batch), batch.shape[1] // 8, batch.shape[2] // 8
        return BackendOutput(
            np.zeros((b, h, w), np.uint8),
            np.zeros((b, self._classes, h, w), np.float16),
            np.zeros((b, self._classes), np.float32),
        )

    @property
    def on_cpu(self) -> bool:
        return self._on_cpu

    @property
    def device(self) -> str:
        return "none (read-only)"


def slide_options(settings: Settings) -> InferOptions:
    overlap = DEFAULT_OVERLAP if settings.tile >= 512 else 16  # the runtime's default, or what a tiny tile allows
    workers = settings.workers or min(os.cpu_count() or 2, 16)
    return InferOptions(
        batch=settings.e2e_batch, tile=settings.tile, overlap=overlap, tissue="none", workers=workers, progress=False
    )


def slide_run(slide: Path, backend: Backend, out: Path, opts: InferOptions) -> dict:
    result = infer_slide(slide, backend, out, opts)
    s = result.summary
    tiles_run, seconds = s["tiles"]["run"], s["timings_s"]["total"]
    return {
        "tiles": tiles_run,
        "input_mpx": s["tiles"]["input_mpx"],
        "readers": s["readers"],
        "seconds": round(seconds, 3),
        "tiles_per_s": round(tiles_run / seconds, 2),
    }


# -- the steps --------------------------------------------------------------------------------------


def _reference(work: Path) -> tuple[np.ndarray, dict]:
    saved = np.load(work / "reference.npz")
    return saved["tiles"], {k: saved[k] for k in ("labels", "probs", "scores")}


def _torch(work: Path, settings: Settings, precision: str, mode: str = "eager"):
    from segcls.runtime.backends.torch import TorchBackend

    backend = TorchBackend(work / "random.pt", device=settings.device, precision=precision, mode=mode)
    backend.load()
    return backend


def _environment() -> dict:
    import torch

    out = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["cudnn"] = torch.backends.cudnn.version()
    return out | {"torch_threads": torch.get_num_threads()}


def prepare(settings: Settings, work: Path) -> dict:
    """The checkpoint, the agreement tiles with their CPU FP32 outputs, the synthetic slide."""
    from segcls.export.verify import tissue_like_images
    from segcls.runtime.backends.torch import TorchBackend

    start = time.perf_counter()
    checkpoint = random_checkpoint(work)
    images = tissue_like_images(settings.agreement_tiles, settings.tile, settings.tile, np.random.default_rng(0))
    with TorchBackend(checkpoint, device="cpu", precision="fp32") as cpu:
        ref = cpu.infer(images)
    np.savez(work / "reference.npz", tiles=images, labels=ref.labels, probs=ref.probs, scores=ref.class_scores)
    reference_s = time.perf_counter() - start
    compression = textured_slide(work / "slide.tif", settings.slide_px)
    return {
        "environment": _environment(),
        "cpu_reference_s": round(reference_s, 2),
        "slide": {"size_px": settings.slide_px, "mpp": 0.5, "compression": compression},
        "slide_s": round(time.perf_counter() - start - reference_s, 2),
    }


def precision_agreement(settings: Settings, work: Path) -> dict:
    """Labels and probs of torch on the device at fp32 (IEEE), tf32 and fp16 against CPU FP32."""
    images, reference = _reference(work)
    out: dict = {}
    for precision in ("fp32", "tf32", "fp16"):
        with _torch(work, settings, precision) as backend:
            out[precision] = {"device": backend.device} | agreement(backend.infer(images), reference)
    return out


def torch_mode(settings: Settings, work: Path, mode: str) -> dict:
    """Torch `mode` at `settings.precision`: tiles/s per batch size (one for the compiled modes, which
    compile once per shape), the shapes the network ran, its agreement with CPU FP32."""
    if "graph" in mode and settings.on_cpu:
        return {"skipped": "CUDA graphs need a CUDA GPU"}
    images, reference = _reference(work)
    batches = settings.batches if not mode.startswith("compile") else (settings.compile_batch,)
    with _torch(work, settings, settings.precision, mode) as backend:
        points = [throughput(backend, images[0], b, settings.seconds) for b in batches]
        return {
            "device": backend.device,
            "throughput": points,
            "agreement_vs_cpu_fp32": agreement(backend.infer(images), reference),
            "shapes_run": sorted(backend.shapes_run),
        }


def end_to_end(settings: Settings, work: Path) -> dict:
    """Read-only (NullBackend, the GPU run's tiles), then per mode backend-only and e2e on the slide."""
    import torch

    from segcls.core.description import ModelDescription

    images, _ = _reference(work)
    slide, opts = work / "slide.tif", slide_options(settings)
    description = ModelDescription(classes=("a", "b", "c", "d"), mpp=0.5)
    null = NullBackend(description, 4, on_cpu=settings.on_cpu)
    out: dict = {"read_only": slide_run(slide, null, work / "null.mask.tif", opts), "modes": {}}
    read = out["read_only"]["tiles_per_s"]
    for mode in ("eager", "graph"):
        if mode == "graph" and not torch.cuda.is_available():
            continue
        with _torch(work, settings, settings.precision, mode) as backend:
            backend_only = throughput(backend, images[0], settings.e2e_batch, settings.seconds)["tiles_per_s"]
            e2e = slide_run(slide, backend, work / f"{mode}.mask.tif", opts)
            same = e2e["tiles"] == out["read_only"]["tiles"] and e2e["input_mpx"] == out["read_only"]["input_mpx"]
        bound = min(backend_only, read)
        out["modes"][mode] = e2e | {
            "backend_only_tiles_per_s": backend_only,
            "read_only_tiles_per_s": read,
            "same_tiles_as_read_only": same,
            "e2e_over_min": round(e2e["tiles_per_s"] / bound, 3),
            "target_met": e2e["tiles_per_s"] >= TARGET * bound,
        }
    return out


TARGET = 0.8  # e2e >= TARGET x min(backend-only, read-only)


def training(settings: Settings, work: Path) -> dict:
    """Steps/s of segcls-train's loop (AMP on CUDA) on a small synthetic dataset, after a warm-up epoch."""
    from segcls.synth.dataset import make_dataset
    from segcls.train import TrainConfig, Trainer

    dataset = make_dataset(work / "dataset", images=settings.train_images, size=4 * settings.train_tile,
                           labeled=2, labeled_size=2 * settings.train_tile, holdout=2, progress=False)  # fmt: skip
    config = TrainConfig(
        dataset=str(dataset), out_dir=str(work / "run"), tile=settings.train_tile, batch_size=settings.train_batch,
        epochs=2, steps_per_epoch=settings.train_steps, device=settings.device,
    )  # fmt: skip
    trainer = Trainer(config, progress=False)
    trainer.train_epoch()  # warm-up: cuDNN autotuning, the allocator's first blocks
    trainer.epoch += 1
    stats = trainer.train_epoch()
    return {
        "device": str(trainer.device),
        "amp": trainer.use_amp,
        "tile": settings.train_tile,
        "batch": settings.train_batch,
        "steps": settings.train_steps,
        "steps_per_s": round(settings.train_steps / stats["seconds"], 3),
        "tiles_per_s": round(stats["tiles_per_s"], 2),
    }
