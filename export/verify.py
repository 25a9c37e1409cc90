"""Does the exported ONNX model compute what the torch model computes? Part of every export.

ONNX Runtime (CPU) runs the file; the FP32 torch `DeployedModel` is the reference, on random pixels and
on synthetic tissue-like tiles, at two batch sizes and two spatial shapes (one not square, so that a
swapped H/W or a baked-in size fails). Tolerances, after Polygraphy's `CompareFunc.simple`:

- FP32: probs max |diff| <= 1e-4 and labels agreement >= 99.9 %.
- FP16: labels agreement >= 99.5 % and class scores |diff| <= 1e-2 * max(1, |score|). 1e-2 absolute is
  what it means for scores up to 1; beyond that it becomes relative, because FP16 itself cannot do better:
  the spacing of FP16 numbers is |x| * 2^-10 (0.0156 at 16), so an absolute 1e-2 on a score of 16 would
  ask for less than one FP16 ulp. Both figures (absolute and relative) are printed.
- INT8 (`verify_int8`): the reference is the FP32 ONNX model, on data of the dataset it was calibrated
  on: labels agreement >= 99 % on held-out tiles (not the calibration tiles), and the test split's macro
  F1 (whole images, against the ground truth) within 1 point of FP32's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segcls.core.errors import ExportError
from segcls.core.model_info import INPUT_NAME
from segcls.core.verification import (
    FP16_MIN_AGREEMENT,
    FP16_SCORES_TOL,
    FP32_MIN_AGREEMENT,
    FP32_PROBS_ATOL,
    INT8_MAX_F1_DELTA,
    INT8_MIN_AGREEMENT,
    Figure,
    VerificationReport,
    random_images,
    tissue_like_images,
)

__all__ = [
    "FP16_MIN_AGREEMENT", "FP16_SCORES_TOL", "FP32_MIN_AGREEMENT", "FP32_PROBS_ATOL", "INT8_MAX_F1_DELTA",
    "INT8_MIN_AGREEMENT", "Figure", "Fp32Reference", "VerificationReport", "float32_compute", "fp32_reference",
    "predict_labels", "random_images", "tissue_like_images", "verify_int8", "verify_onnx",
]  # fmt: skip


def verify_onnx(
    onnx_path: str | Path,
    reference,
    precision: str,
    size: int = 256,
    batches: tuple[int, int] = (1, 3),
    seed: int = 0,
    progress: bool = False,
) -> VerificationReport:
    """Compare ONNX Runtime on `onnx_path` with `reference` (the FP32 torch `DeployedModel`)."""
    import torch
    from tqdm import tqdm

    session = _cpu_session(onnx_path)
    rng = np.random.default_rng(seed)
    cases = [
        (kind, batch, size, width) for batch in batches for kind, width in (("random", size), ("tissue", size + 64))
    ]
    report = VerificationReport(precision)
    worst = {"probs": 0.0, "scores": 0.0, "scores_rel": 0.0, "agreement": 1.0}
    for kind, batch, height, width in tqdm(cases, desc="verify", leave=False, disable=not progress):
        make = random_images if kind == "random" else tissue_like_images
        images = make(batch, height, width, rng)
        with torch.inference_mode():
            ref = [t.float().numpy() for t in reference(torch.from_numpy(images))]
        got = session.run(["labels", "probs", "class_scores"], {INPUT_NAME: images})
        _check_outputs(got, ref, onnx_path)
        scores_diff = np.abs(got[2].astype(np.float32) - ref[2])
        worst["probs"] = max(worst["probs"], float(np.abs(got[1].astype(np.float32) - ref[1]).max()))
        worst["scores"] = max(worst["scores"], float(scores_diff.max()))
        worst["scores_rel"] = max(worst["scores_rel"], float((scores_diff / np.maximum(1, np.abs(ref[2]))).max()))
        worst["agreement"] = min(worst["agreement"], float((got[0] == ref[0].astype(np.uint8)).mean()))
        report.cases.append(f"{kind} {batch}x{height}x{width}")
    if precision == "fp32":
        report.figures = [
            Figure("probs max|diff|", worst["probs"], FP32_PROBS_ATOL),
            Figure("labels agreement", worst["agreement"], FP32_MIN_AGREEMENT, higher_is_better=True),
        ]
        report.info = {"class_scores max|diff|": worst["scores"]}
    else:
        report.figures = [
            Figure("labels agreement", worst["agreement"], FP16_MIN_AGREEMENT, higher_is_better=True),
            Figure("class_scores max|diff|/max(1,|score|)", worst["scores_rel"], FP16_SCORES_TOL),
        ]
        report.info = {"class_scores max|diff|": worst["scores"], "probs max|diff|": worst["probs"]}
    return report


@dataclass
class Fp32Reference:
    """What the FP32 model gives on the verification data, computed once for every INT8 attempt."""

    labels: list[np.ndarray]  # per batch of held-out tiles
    class_scores: list[np.ndarray]
    test_f1: float  # test-split macro F1 against the ground truth


def fp32_reference(
    fp32_path: str | Path, tiles: np.ndarray, test: list[tuple[np.ndarray, np.ndarray]], num_classes: int,
    batch: int = 4,
) -> Fp32Reference:  # fmt: skip
    from segcls.core.metrics import ConfusionMatrix

    fp32 = _cpu_session(fp32_path)
    labels, scores = [], []
    for start in range(0, len(tiles), batch):
        got = fp32.run(["labels", "class_scores"], {INPUT_NAME: tiles[start : start + batch]})
        labels.append(got[0])
        scores.append(got[1])
    matrix = ConfusionMatrix(num_classes)
    for image, mask in test:
        matrix.update(mask, predict_labels(fp32, image))
    return Fp32Reference(labels, scores, float(matrix.scores().macro_f1))


def verify_int8(
    int8_path: str | Path,
    fp32_path: str | Path,
    tiles: np.ndarray,
    test: list[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    min_agreement: float = INT8_MIN_AGREEMENT,
    max_f1_delta: float = INT8_MAX_F1_DELTA,
    batch: int = 4,
    reference: Fp32Reference | None = None,
    progress: bool = True,
) -> VerificationReport:
    """Compare the INT8 model with the FP32 one: labels on held-out `tiles` (uint8 NHWC), and macro F1 on
    the `test` (image, mask) pairs, whole images as `segcls.evaluate` scores them. `reference`: the FP32
    model's figures on the same data (`fp32_reference`), computed here if not given."""
    from tqdm import tqdm

    from segcls.core.metrics import ConfusionMatrix

    reference = reference or fp32_reference(fp32_path, tiles, test, num_classes, batch)
    int8 = _cpu_session(int8_path, "int8")
    same = total = 0
    scores_diff = 0.0
    starts = tqdm(range(0, len(tiles), batch), desc="verify tiles", leave=False, disable=not progress)
    for i, start in enumerate(starts):
        got = int8.run(["labels", "probs", "class_scores"], {INPUT_NAME: tiles[start : start + batch]})
        ref_labels, ref_scores = reference.labels[i], reference.class_scores[i]
        _check_outputs(got[:1] + got[2:], [ref_labels, ref_scores], int8_path, ("labels", "class_scores"))
        same, total = same + int((got[0] == ref_labels).sum()), total + got[0].size
        scores_diff = max(scores_diff, float(np.abs(got[2] - ref_scores).max()))
    matrix = ConfusionMatrix(num_classes)
    for image, mask in tqdm(test, desc="verify test F1", leave=False, disable=not progress):
        matrix.update(mask, predict_labels(int8, image))
    f1 = {"int8": float(matrix.scores().macro_f1), "fp32": reference.test_f1}
    report = VerificationReport("int8", reference="ONNX FP32")
    report.cases = [f"{len(tiles)} held-out tiles {tiles.shape[1]}x{tiles.shape[2]}", f"{len(test)} test images"]
    report.figures = [
        Figure("labels agreement (held-out tiles)", same / max(total, 1), min_agreement, higher_is_better=True),
        Figure("test macro F1 |int8 - fp32|", abs(f1["int8"] - f1["fp32"]), max_f1_delta),
    ]
    report.info = {"test macro F1 fp32": f1["fp32"], "test macro F1 int8": f1["int8"]}
    report.info["class_scores max|diff|"] = scores_diff
    return report


def predict_labels(session, image: np.ndarray) -> np.ndarray:
    """Whole-image labels (H, W) from an ONNX session, as `segcls.evaluate.predict_labels` makes them:
    edge padding to a multiple of 16, argmax at stride 8, nearest upsampling."""
    from segcls.core.constants import INPUT_MULTIPLE, NETWORK_STRIDE

    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % INPUT_MULTIPLE), (0, -w % INPUT_MULTIPLE), (0, 0)), mode="edge")
    labels = session.run(["labels"], {INPUT_NAME: padded[None]})[0][0]
    return np.repeat(np.repeat(labels, NETWORK_STRIDE, axis=0), NETWORK_STRIDE, axis=1)[:h, :w]


def _cpu_session(path: str | Path, precision: str = "fp32"):
    """A CPU session set up as the runtime's ONNX Runtime backend sets one up for a model of `precision`."""
    import onnxruntime as ort

    from segcls.core.model_info import disabled_optimizers

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        cpu = ["CPUExecutionProvider"]
        extra = {"disabled_optimizers": d} if (d := disabled_optimizers(precision, cpu)) else {}
        return ort.InferenceSession(str(path), options, providers=cpu, **extra)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ExportError(f"ONNX Runtime cannot load the exported model {path}: {e}") from None


def _check_outputs(
    got: list[np.ndarray], ref: list[np.ndarray], path, names: tuple[str, ...] = ("labels", "probs", "class_scores")
) -> None:
    for name, g, r in zip(names, got, ref, strict=True):
        if g.shape != r.shape:
            raise ExportError(f"{path}: output '{name}' has shape {g.shape}; torch gives {r.shape}")
    if got[0].dtype != np.uint8:
        raise ExportError(f"{path}: output 'labels' is {got[0].dtype}, expected uint8")


def float32_compute(model) -> list[str]:
    """Nodes of an ONNX model that compute in float32, apart from the allowed ones.

    Allowed in an FP16 model: `Cast` and `ReduceMax` (torch widens the FP16 logits to float32 before the
    classification layer's max; a max of exactly representable values is exact, so that costs nothing).
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output, *graph.input)}
    return [
        f"{node.op_type}:{node.name or node.output[0]}"
        for node in graph.node
        if node.op_type not in ("Cast", "ReduceMax")
        and any(types.get(out) == onnx.TensorProto.FLOAT for out in node.output)
    ]
