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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segcls.core.errors import ExportError
from segcls.core.model_info import INPUT_NAME

FP32_PROBS_ATOL = 1e-4
FP32_MIN_AGREEMENT = 0.999
FP16_MIN_AGREEMENT = 0.995
FP16_SCORES_TOL = 1e-2
INT8_MIN_AGREEMENT = 0.99
INT8_MAX_F1_DELTA = 0.01  # 1 point of macro F1


def random_images(batch: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def tissue_like_images(batch: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """H&E-looking tiles: white background, smooth pink stroma, purple nuclei, a little noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((batch, height, width, 3), np.uint8)
    for b in range(batch):
        coarse = rng.random((height // 16 + 2, width // 16 + 2)).astype(np.float32)
        smooth = np.kron(coarse, np.ones((16, 16), np.float32))[:height, :width]
        tissue = (smooth > 0.35)[..., None]
        image = np.where(tissue, [236, 160, 200], [242, 242, 240]).astype(np.float32)
        image += (smooth[..., None] - 0.5) * [-30, -50, -20]
        for cy, cx, r in zip(rng.uniform(0, height, 40), rng.uniform(0, width, 40), rng.uniform(2, 6, 40), strict=True):
            nucleus = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None] & tissue
            image = np.where(nucleus, [90, 50, 140], image)
        image += rng.normal(0, 6, image.shape)
        out[b] = np.clip(image, 0, 255).astype(np.uint8)
    return out


@dataclass
class Figure:
    name: str
    value: float
    limit: float
    higher_is_better: bool = False

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def __str__(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        return f"{self.name} {self.value:.3g} ({'ok' if self.passed else 'FAIL'}, needs {op} {self.limit:g})"


@dataclass
class VerificationReport:
    precision: str
    reference: str = "torch FP32"
    figures: list[Figure] = field(default_factory=list)
    info: dict[str, float] = field(default_factory=dict)  # reported, not judged
    cases: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.figures)

    def summary(self) -> str:
        judged = "; ".join(str(f) for f in self.figures)
        shown = ", ".join(f"{k} {v:.3g}" for k, v in self.info.items())
        cases = f"{self.precision}, ONNX Runtime CPU vs {self.reference}, {len(self.cases)} cases"
        return f"verification ({cases}): {judged}; {shown}"

    def raise_if_failed(self, path: str | Path) -> None:
        if not self.passed:
            failed = "; ".join(str(f) for f in self.figures if not f.passed)
            raise ExportError(f"{path} failed verification: {failed}")


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


def verify_int8(
    int8_path: str | Path,
    fp32_path: str | Path,
    tiles: np.ndarray,
    test: list[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    min_agreement: float = INT8_MIN_AGREEMENT,
    max_f1_delta: float = INT8_MAX_F1_DELTA,
    batch: int = 4,
) -> VerificationReport:
    """Compare the INT8 model with the FP32 one: labels on held-out `tiles` (uint8 NHWC), and macro F1 on
    the `test` (image, mask) pairs, whole images as `segcls.evaluate` scores them."""
    from tqdm import tqdm

    from segcls.core.metrics import ConfusionMatrix

    int8, fp32 = _cpu_session(int8_path, "int8"), _cpu_session(fp32_path)
    same = total = 0
    scores_diff = 0.0
    for start in tqdm(range(0, len(tiles), batch), desc="verify tiles", leave=False):
        images = tiles[start : start + batch]
        got = int8.run(["labels", "probs", "class_scores"], {INPUT_NAME: images})
        ref = fp32.run(["labels", "probs", "class_scores"], {INPUT_NAME: images})
        _check_outputs(got, ref, int8_path)
        same, total = same + int((got[0] == ref[0]).sum()), total + got[0].size
        scores_diff = max(scores_diff, float(np.abs(got[2] - ref[2]).max()))
    matrices = {"int8": ConfusionMatrix(num_classes), "fp32": ConfusionMatrix(num_classes)}
    for image, mask in tqdm(test, desc="verify test F1", leave=False):
        for name, session in (("int8", int8), ("fp32", fp32)):
            matrices[name].update(mask, predict_labels(session, image))
    f1 = {name: float(m.scores().macro_f1) for name, m in matrices.items()}
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


def _check_outputs(got: list[np.ndarray], ref: list[np.ndarray], path) -> None:
    for name, g, r in zip(("labels", "probs", "class_scores"), got, ref, strict=True):
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
