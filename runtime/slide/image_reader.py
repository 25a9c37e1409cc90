"""Plain images (PNG, JPEG, ...) as one-level slides, through Pillow."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np

from segcls.core.errors import SlideError
from segcls.runtime.slide.base import Slide, composite_white, one_line


class ImageSlide(Slide):
    """A PNG/JPEG (or other Pillow image) held in memory as one level; meant for small images."""

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        from PIL import Image

        super().__init__(path, mpp)
        try:
            with Image.open(path) as image:
                image.load()
                self._info = {k: str(v) for k, v in image.info.items() if isinstance(v, str | int | float)}
                rgba = image.convert("RGBA")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise SlideError(f"cannot open image {path}: {one_line(e)}") from None
        self._pixels = composite_white(np.asarray(rgba))
        self.level_dimensions = ((rgba.width, rgba.height),)

    @property
    def properties(self) -> MappingProxyType:
        return MappingProxyType({"segcls.reader": "pillow", **self._info})

    def _native_mpp(self) -> float | None:
        return None  # PNG/JPEG resolution fields are display DPI, not the scan's

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        return self._padded(location, level, size, lambda x, y, w, h: self._pixels[y : y + h, x : x + w].copy())
