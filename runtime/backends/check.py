"""Before a backend other than ONNX Runtime runs an exported model, or runs it in another precision: do its
labels agree with what the export verified?

The export verified the file on ONNX Runtime's CPU provider (`segcls.export.verify`), so ONNX Runtime
running the same file at its exported precision is the reference here, on seeded tissue-like tiles
(`segcls.core.verification.tissue_like_images`). The bar is the export's for the precision that is
compared: the same precision on another runtime needs that precision's own labels agreement (FP32
99.9 %, FP16 99.5 %, INT8 99 %); BF16 computed from an FP32 model needs 99.5 % (BF16_MIN_AGREEMENT, FP16's
bar: no calibration either). Class scores and probabilities are reported, not judged: OpenVINO's FP32
kernels sum in another order, so its FP32 probabilities differ from ONNX Runtime's by more than the
export's 1e-4 without a label changing.

The result is kept per model, backend, precision, CPU and library versions (`cached_check`), so the check
costs one load, not every load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segcls.core.verification import (
    BF16_MIN_AGREEMENT,
    FP16_MIN_AGREEMENT,
    FP32_MIN_AGREEMENT,
    INT8_MIN_AGREEMENT,
    Figure,
    VerificationReport,
    tissue_like_images,
)
from segcls.runtime.backends.base import Backend, BackendOutput
from segcls.runtime.backends.measured import cache_folder, measurement_key, read_entry, write_entry

CHECK_TILES = 8
CHECK_SHAPE = (256, 320)  # (H, W): not square, so a swapped H/W fails
MIN_AGREEMENT = {"fp32": FP32_MIN_AGREEMENT, "fp16": FP16_MIN_AGREEMENT, "int8": INT8_MIN_AGREEMENT,
                 "bf16": BF16_MIN_AGREEMENT}  # fmt: skip


def check_tiles(count: int = CHECK_TILES, shape: tuple[int, int] = CHECK_SHAPE, seed: int = 0) -> np.ndarray:
    """The tiles a backend is checked on: seeded tissue-like uint8 NHWC images."""
    return tissue_like_images(count, *shape, np.random.default_rng(seed))


def reference_outputs(model: Path, tiles: np.ndarray, threads: int | None = None) -> BackendOutput:
    """ONNX Runtime (CPU) on `model` at its exported precision: what the export verified."""
    from segcls.runtime.backends.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend(model, providers=["CPUExecutionProvider"], threads=threads) as reference:
        return reference.infer(tiles)


def compare(
    got: BackendOutput, ref: BackendOutput, precision: str, exported: str, runner: str, cases: int
) -> VerificationReport:
    """Judge `got` (a backend computing in `precision`) against ONNX Runtime's `ref` on the model exported
    in `exported`."""
    labels = np.asarray(got.labels)
    agreement = float((labels == ref.labels).mean()) if labels.shape == ref.labels.shape else 0.0
    scores = np.abs(np.asarray(got.class_scores, np.float32) - np.asarray(ref.class_scores, np.float32))
    probs = np.abs(np.asarray(got.probs, np.float32) - np.asarray(ref.probs, np.float32))
    report = VerificationReport(precision, reference=f"ONNX Runtime {exported}", runner=runner)
    report.cases = [f"tissue-like tile {i} {CHECK_SHAPE[0]}x{CHECK_SHAPE[1]}" for i in range(cases)]
    report.figures = [Figure("labels agreement", agreement, MIN_AGREEMENT[precision], higher_is_better=True)]
    report.info = {
        "class_scores max|diff|/max(1,|score|)": float((scores / np.maximum(1, np.abs(ref.class_scores))).max()),
        "probs max|diff|": float(probs.max()),
    }
    return report


def check_backend(backend: Backend, model: Path, tiles: np.ndarray | None = None) -> VerificationReport:
    """The loaded `backend`'s outputs on `model` against ONNX Runtime's (see the module docstring)."""
    tiles = check_tiles() if tiles is None else tiles
    got = backend.infer(tiles)
    got = BackendOutput(*(np.array(x) for x in got))  # a lazy or reused output, copied before the next call
    ref = reference_outputs(Path(model), tiles, getattr(backend, "threads", None))
    exported = backend.info.precision if getattr(backend, "info", None) is not None else "fp32"
    return compare(got, ref, backend.precision or exported, exported, f"{backend.name} CPU", len(tiles))


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    summary: str  # the verification line
    failed: str  # the figures that missed, "" when it passed
    cached: bool = False


def cached_check(
    backend: Backend, model: Path, cache_dir: Path | None = None, log: Callable[[str], None] = lambda message: None
) -> CheckResult:
    """`check_backend`, once per model, backend, precision, CPU and library versions (`measured.py`): a
    later load reads the result instead of running ONNX Runtime beside the backend again. Logs the line."""
    key = measurement_key(Path(model), backend=backend.name, precision=backend.precision, tiles=CHECK_TILES,
                          shape=CHECK_SHAPE)  # fmt: skip
    path = Path(cache_dir or cache_folder("checks")) / f"{key}.json"
    entry = read_entry(path)
    if entry is not None and {"passed", "summary", "failed"} <= set(entry):
        result = CheckResult(bool(entry["passed"]), str(entry["summary"]), str(entry["failed"]), cached=True)
        log(f"{result.summary} (checked earlier on this machine)")
        return result
    report = check_backend(backend, model)
    failed = "; ".join(str(f) for f in report.figures if not f.passed)
    result = CheckResult(report.passed, report.summary(), failed)
    write_entry(path, {"passed": result.passed, "summary": result.summary, "failed": result.failed})
    log(result.summary)
    return result
