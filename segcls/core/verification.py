"""How a precision or a runtime is judged against FP32: the figures, their limits, and the tiles they are
measured on. Shared by the export's verification (`segcls.export.verify`) and the runtime's check of a
backend before it is used (`segcls.runtime.backends.check`), so both apply the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segcls.core.errors import ExportError, SegclsError

FP32_PROBS_ATOL = 1e-4
FP32_MIN_AGREEMENT = 0.999
FP16_MIN_AGREEMENT = 0.995
FP16_SCORES_TOL = 1e-2
BF16_MIN_AGREEMENT = 0.995  # BF16 without calibration: FP16's bar (labels), the issue's target too
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
    runner: str = "ONNX Runtime CPU"  # what ran the model under test
    figures: list[Figure] = field(default_factory=list)
    info: dict[str, float] = field(default_factory=dict)  # reported, not judged
    cases: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.figures)

    def summary(self) -> str:
        judged = "; ".join(str(f) for f in self.figures)
        shown = ", ".join(f"{k} {v:.3g}" for k, v in self.info.items())
        cases = f"{self.precision}, {self.runner} vs {self.reference}, {len(self.cases)} cases"
        return f"verification ({cases}): {judged}; {shown}"

    def raise_if_failed(self, path: str | Path, error: type[SegclsError] = ExportError) -> None:
        if not self.passed:
            failed = "; ".join(str(f) for f in self.figures if not f.passed)
            raise error(f"{path} failed verification: {failed}")
