"""A segcls label mask read as class indices: the palette pyramid `segcls-infer` writes, sampled on any grid.

The mask's level 0 spans the slide's level 0 exactly, at its own resolution (the slide's, or coarser with
`--out-mpp`): mask pixel (mx, my) of a W x H mask covers slide level-0 pixels [mx * W0 / W, (mx + 1) * W0 / W).
Every reader here samples a slide point at the centre of a display pixel and takes the mask pixel under it
from the coarsest mask level that is still as fine as the display (levels are nearest reductions of the same
label map), so the mask lines up with the slide at any zoom, whatever the two pyramids' level sizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from segcls.core.constants import UNLABELLED
from segcls.core.errors import SlideError
from segcls.runtime.slide import TiffSlide

# The finest mask level of at most this many pixels is counted for class areas when no summary gives them.
_AREA_MAX_PIXELS = 16_000_000


@dataclass(frozen=True)
class MaskClasses:
    """What the mask's classes are called and drawn in (from its ImageDescription, else its colormap)."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]


class LabelMask:
    """A segcls pyramidal palette mask of class indices (255 = unlabelled), read tile by tile."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SlideError(f"mask not found: {self.path}")
        self._tiff = TiffSlide(self.path)
        try:
            self.classes = _classes(self.path, self._tiff)
        except BaseException:
            self._tiff.close()
            raise
        self.level_dimensions = self._tiff.level_dimensions
        self.mpp = self._tiff.mpp

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def check_fits(self, slide_size: tuple[int, int], slide_mpp: float | None, slide_name: str) -> None:
        """Raise SlideError unless this mask covers a slide of `slide_size` px at `slide_mpp`: the same aspect
        ratio to a pixel and, where both know their µm/px, the same width in µm to a pixel of either."""
        (w0, h0), (mw, mh) = slide_size, self.dimensions
        scale = w0 / mw
        if abs(mh * scale - h0) > scale + 1 or mw > w0 or mh > h0:
            raise SlideError(
                f"mask {self.path.name} is {mw} x {mh} px, which does not cover slide {slide_name} "
                f"({w0} x {h0} px) at one scale: is it this slide's mask?"
            )
        if slide_mpp and self.mpp and abs(mw * self.mpp - w0 * slide_mpp) > 2 * (self.mpp + slide_mpp):
            raise SlideError(
                f"mask {self.path.name} is {mw * self.mpp:.0f} um wide ({mw} px at {self.mpp:.4g} um/px) but slide "
                f"{slide_name} is {w0 * slide_mpp:.0f} um ({w0} px at {slide_mpp:.4g} um/px): is it this slide's "
                "mask? (--slide-mpp if the slide's own um/px is wrong)"
            )

    def sample(self, xs: np.ndarray, ys: np.ndarray, slide_size: tuple[int, int], spacing: float) -> np.ndarray:
        """Class indices (len(ys), len(xs)) under slide level-0 points xs (columns) and ys (rows), sorted
        ascending; `spacing` is the level-0 distance between neighbouring points, which picks the level."""
        w0, h0 = slide_size
        level = self._level_for(spacing * self.dimensions[0] / w0)
        lw, lh = self.level_dimensions[level]
        cols = np.clip(np.floor(np.asarray(xs, np.float64) * lw / w0).astype(np.int64), 0, lw - 1)
        rows = np.clip(np.floor(np.asarray(ys, np.float64) * lh / h0).astype(np.int64), 0, lh - 1)
        c0, r0 = int(cols[0]), int(rows[0])
        window = self._tiff.read_samples(level, c0, r0, int(cols[-1]) - c0 + 1, int(rows[-1]) - r0 + 1)[..., 0]
        return window[rows - r0][:, cols - c0]

    def _level_for(self, mask_px: float) -> int:
        """The coarsest level with at most `mask_px` level-0 mask pixels per level pixel (0 if none)."""
        w = self.dimensions[0]
        best = 0
        for level, (lw, _) in enumerate(self.level_dimensions):
            if w / lw <= mask_px * (1 + 1e-9):
                best = level
        return best

    def areas_mm2(self) -> dict[str, float] | None:
        """Area per class in mm², counted on a level of at most 16 Mpx (None without an mpp)."""
        if not self.mpp:
            return None
        fitting = [lv for lv, (w, h) in enumerate(self.level_dimensions) if w * h <= _AREA_MAX_PIXELS]
        level = fitting[0] if fitting else self.level_count - 1
        lw, lh = self.level_dimensions[level]
        labels = self._tiff.read_samples(level, 0, 0, lw, lh)[..., 0]
        counts = np.bincount(labels.ravel(), minlength=256)
        w, h = self.dimensions
        px_mm2 = (w / lw) * (h / lh) * (self.mpp / 1000.0) ** 2
        return {name: round(float(counts[i]) * px_mm2, 6) for i, name in enumerate(self.classes.names)}

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def close(self) -> None:
        self._tiff.close()

    def __enter__(self) -> LabelMask:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _classes(path: Path, tiff: TiffSlide) -> MaskClasses:
    """Names and colours from segcls's JSON description; a palette TIFF without one gets "class k" names for
    the indices its coarsest level holds, in its colormap's colours."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        photometric, samples, dtype = int(page.photometric), page.samplesperpixel, page.dtype
        description, colormap = page.description, page.colormap
    if photometric != 3 or samples != 1 or dtype != np.uint8:
        raise SlideError(
            f"{path}: expected a segcls label mask (8-bit palette TIFF of class indices), found "
            f"{dtype} with {samples} samples, photometric {photometric}"
        )
    try:
        meta = json.loads(description or "{}")
    except ValueError:
        meta = {}
    colors = meta.get("colors") if isinstance(meta, dict) else None
    if isinstance(colors, list) and colors and all(isinstance(c, list) and len(c) == 3 for c in colors):
        names = meta.get("classes") or [f"class {i}" for i in range(len(colors))]
        if len(names) != len(colors):
            raise SlideError(f"{path}: {len(names)} class names but {len(colors)} colours in its description")
        return MaskClasses(tuple(str(n) for n in names), tuple(tuple(int(v) for v in c) for c in colors))
    cmap = (np.asarray(colormap) >> 8).astype(int)
    last = tiff.level_count - 1
    lw, lh = tiff.level_dimensions[last]
    present = np.unique(tiff.read_samples(last, 0, 0, lw, lh))
    count = int(present[present != UNLABELLED].max()) + 1 if (present != UNLABELLED).any() else 0
    return MaskClasses(
        tuple(f"class {i}" for i in range(count)), tuple(tuple(int(v) for v in cmap[:, i]) for i in range(count))
    )


def centres(start: int, count: int, downsample: float) -> np.ndarray:
    """Level-0 coordinates of the centres of display pixels start..start+count of a level `downsample`
    level-0 pixels a pixel."""
    return (np.arange(start, start + count, dtype=np.float64) + 0.5) * downsample


def blend(rgb: np.ndarray, labels: np.ndarray, classes: MaskClasses, opacity: float) -> np.ndarray:
    """`rgb` with each labelled pixel's class colour laid over it at `opacity` (what the viewer shows)."""
    lut = np.zeros((256, 3), np.float32)
    lut[: len(classes.colors)] = classes.colors
    alpha = np.zeros(256, np.float32)
    alpha[: len(classes.colors)] = opacity
    a = alpha[labels][..., None]
    return np.clip(rgb * (1 - a) + lut[labels] * a + 0.5, 0, 255).astype(np.uint8)
