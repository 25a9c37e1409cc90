"""Score a predicted mask against a ground-truth mask (both segcls pyramidal label TIFFs, 255 = ignore).

Compared at the finest pyramid level of at most `max_pixels`: the levels are nearest-neighbour reductions
of the same labels, so a coarser level is a uniform subsample of level 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from segcls.core.errors import SlideError
from segcls.core.metrics import ConfusionMatrix, Scores


def read_mask_level(path: str | Path, max_pixels: int = 64_000_000) -> np.ndarray:
    """The finest level of a label mask pyramid with at most `max_pixels` pixels, as (h, w) uint8."""
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"mask not found: {path}")
    with tifffile.TiffFile(path) as tif:
        pages = [p for p in tif.pages if p.subfiletype in (0, 1) and p.ndim == 2]
        if not pages:
            raise SlideError(f"{path} holds no single-channel label image")
        fitting = [p for p in pages if p.shape[0] * p.shape[1] <= max_pixels] or [pages[-1]]
        return fitting[0].asarray()


def score_masks(prediction: str | Path, truth: str | Path, num_classes: int, max_pixels: int = 64_000_000) -> Scores:
    """Pixel F1 of `prediction` against `truth`, compared at a common pyramid level."""
    pred, gt = read_mask_level(prediction, max_pixels), read_mask_level(truth, max_pixels)
    if pred.shape != gt.shape:  # different level grids: resample the prediction onto the truth's
        ys = np.minimum((np.arange(gt.shape[0]) * pred.shape[0]) // gt.shape[0], pred.shape[0] - 1)
        xs = np.minimum((np.arange(gt.shape[1]) * pred.shape[1]) // gt.shape[1], pred.shape[1] - 1)
        pred = pred[ys[:, None], xs[None, :]]
    cm = ConfusionMatrix(num_classes)
    cm.update(gt, pred)
    return cm.scores()
