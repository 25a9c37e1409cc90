"""Pixel metrics as in the paper, numpy only (the runtime scores masks with it too).

Pixel F1 per class from a confusion matrix; macro = mean over classes; micro = pooled over pixels
(equal to pixel accuracy when each pixel has one label). Label 255 (UNLABELLED) marks unlabelled pixels: ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segcls.core.constants import UNLABELLED


class ConfusionMatrix:
    """Accumulates a (C, C) matrix: rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, target: np.ndarray, prediction: np.ndarray) -> None:
        target = np.asarray(target).ravel()
        prediction = np.asarray(prediction).ravel()
        if target.shape != prediction.shape:
            raise ValueError(f"target has {target.size} pixels, prediction {prediction.size}")
        keep = (target != UNLABELLED) & (prediction != UNLABELLED)
        t, p = target[keep].astype(np.int64), prediction[keep].astype(np.int64)
        if t.size and (t.max() >= self.num_classes or p.max() >= self.num_classes):
            raise ValueError(f"labels must be < {self.num_classes} (or {UNLABELLED} for unlabelled)")
        self.matrix += np.bincount(t * self.num_classes + p, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.matrix += other.matrix
        return self

    def scores(self) -> Scores:
        return scores_from_confusion(self.matrix)


@dataclass
class Scores:
    per_class_f1: list[float]  # NaN for a class absent from both target and prediction
    macro_f1: float  # mean over classes present in target or prediction
    micro_f1: float
    pixels: int

    def to_dict(self, classes: list[str] | tuple[str, ...] | None = None) -> dict:
        names = classes or [str(i) for i in range(len(self.per_class_f1))]
        return {
            "macro_f1": self.macro_f1,
            "micro_f1": self.micro_f1,
            "per_class_f1": {n: (None if np.isnan(f) else f) for n, f in zip(names, self.per_class_f1, strict=True)},
            "pixels": self.pixels,
        }


def scores_from_confusion(matrix: np.ndarray) -> Scores:
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    support = matrix.sum(axis=1) + matrix.sum(axis=0)  # = 2TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(support > 0, 2 * tp / support, np.nan)
    total = matrix.sum()
    present = ~np.isnan(f1)
    macro = float(f1[present].mean()) if present.any() else float("nan")
    micro = float(tp.sum() / total) if total else float("nan")
    return Scores([float(v) for v in f1], macro, micro, int(total))


def pixel_scores(target: np.ndarray, prediction: np.ndarray, num_classes: int) -> Scores:
    cm = ConfusionMatrix(num_classes)
    cm.update(target, prediction)
    return cm.scores()


def bach_score(target: np.ndarray, prediction: np.ndarray) -> float:
    """BACH part B challenge score (labels 0 normal, 1 benign, 2 in situ, 3 invasive).

    s = 1 - sum|p - g| / sum(max(|g - 0|, |g - 3|) * [1 - (1 - [p > 0])(1 - [g > 0])]).
    """
    g = np.asarray(target).astype(np.int64).ravel()
    p = np.asarray(prediction).astype(np.int64).ravel()
    keep = (g != UNLABELLED) & (p != UNLABELLED)
    g, p = g[keep], p[keep]
    either_positive = 1 - (1 - (p > 0)) * (1 - (g > 0))
    denominator = (np.maximum(np.abs(g - 0), np.abs(g - 3)) * either_positive).sum()
    if denominator == 0:
        return 1.0
    return float(1.0 - np.abs(p - g).sum() / denominator)
