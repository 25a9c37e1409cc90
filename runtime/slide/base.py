"""The one interface every slide reader implements (after openslide-python's `AbstractSlide`), and what the
readers share: the level frame, white padding, thumbnails and the error for a damaged stored tile."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import numpy as np

from segcls.core.errors import DamagedTileError, SlideError
from segcls.runtime.slide.damage import read_around_damage

# Regions whose level-frame window is larger than this are refused rather than exhausting memory.
_MAX_REGION_PIXELS = 1 << 30
# get_thumbnail reads level windows of at most this many pixels per side.
_THUMBNAIL_CHUNK = 4096


def one_line(e: BaseException) -> str:
    """An exception as one short line for a SlideError message."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


def composite_white(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) RGBA (straight alpha) -> (h, w, 3) RGB over white."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


class Slide(ABC):
    """A pyramidal image. Coordinates are level-0 pixels; sizes are (width, height)."""

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        self.path = Path(path)
        self._mpp_override = mpp
        self.level_dimensions: tuple[tuple[int, int], ...] = ()

    # -- what each reader provides ------------------------------------------------------------------
    @property
    @abstractmethod
    def properties(self) -> MappingProxyType:
        """Metadata as strings (OpenSlide's property names where OpenSlide read the file)."""

    @abstractmethod
    def _native_mpp(self) -> float | None:
        """Microns per level-0 pixel according to the file, or None."""

    @abstractmethod
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) of `size` (w, h) at `level`; `location` is the (x, y) of the top left
        pixel in the level 0 reference frame. Pixels outside the slide are white."""

    def close(self) -> None:  # noqa: B027 - readers without handles need no close
        """Release the file."""

    # -- shared ---------------------------------------------------------------------------------------
    @property
    def mpp(self) -> float | None:
        """Microns per level-0 pixel: the `mpp` given to `open_slide`, else the file's, else None."""
        return self._mpp_override if self._mpp_override else self._native_mpp()

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        w0, h0 = self.dimensions
        return tuple((w0 / w + h0 / h) / 2 for w, h in self.level_dimensions)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The most reduced level whose downsample does not exceed `downsample` (OpenSlide's rule)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = level
        return best

    def get_thumbnail(
        self, max_size: tuple[int, int], on_damaged: Callable[[DamagedTileError], None] | None = None
    ) -> np.ndarray:
        """RGB uint8 image of the whole slide fitting in `max_size` (w, h), aspect ratio kept.

        Reads the best level in windows of bounded size and box-filters each, so a slide without a
        pyramid does not have to fit in memory. A damaged stored tile raises `DamagedTileError`, or, with
        `on_damaged`, reads white and is passed to it (`read_around_damage`).
        """
        from PIL import Image

        w0, h0 = self.dimensions
        factor = max(w0 / max_size[0], h0 / max_size[1], 1.0)
        out_w, out_h = max(1, round(w0 / factor)), max(1, round(h0 / factor))
        level = self.best_level_for_downsample(factor)
        lw, lh = self.level_dimensions[level]
        rx, ry = lw / out_w, lh / out_h  # level pixels per thumbnail pixel
        step_x = max(1, int(_THUMBNAIL_CHUNK / rx))
        step_y = max(1, int(_THUMBNAIL_CHUNK / ry))
        ds_x, ds_y = w0 / lw, h0 / lh
        thumb = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for oy in range(0, out_h, step_y):
            for ox in range(0, out_w, step_x):
                bw, bh = min(step_x, out_w - ox), min(step_y, out_h - oy)
                x0, y0 = round(ox * rx), round(oy * ry)
                x1, y1 = min(lw, round((ox + bw) * rx)), min(lh, round((oy + bh) * ry))
                location = (round(x0 * ds_x), round(y0 * ds_y))
                size = (max(1, x1 - x0), max(1, y1 - y0))
                if on_damaged is None:
                    block = self.read_region(location, level, size)
                else:
                    block, damaged = read_around_damage(self, location, level, size)
                    for error in damaged:
                        on_damaged(error)
                if block.shape[:2] != (bh, bw):
                    block = np.asarray(Image.fromarray(block).resize((bw, bh), Image.Resampling.BOX))
                thumb[oy : oy + bh, ox : ox + bw] = block
        return thumb

    def _check_request(self, level: int, size: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= level < self.level_count:
            raise SlideError(f"{self.path} has levels 0..{self.level_count - 1}, got level {level}")
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0 or w * h > _MAX_REGION_PIXELS:
            raise SlideError(f"cannot read a {w} x {h} region from {self.path}")
        return w, h

    def _padded(
        self,
        location: tuple[int, int],
        level: int,
        size: tuple[int, int],
        read: Callable[[int, int, int, int], np.ndarray],
    ) -> np.ndarray:
        """Map `location` to `level`'s frame (floor(x / downsample)), read the part inside the level with
        `read(x, y, w, h)` and pad the rest with white."""
        w, h = self._check_request(level, size)
        ds = self.level_downsamples[level]
        lx, ly = math.floor(location[0] / ds), math.floor(location[1] / ds)
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if (x0, y0, x1, y1) == (lx, ly, lx + w, ly + h):
            return read(lx, ly, w, h)
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = read(x0, y0, x1 - x0, y1 - y0)
        return out

    def _damaged(self, level: int, box: tuple[int, int, int, int], reason: str) -> DamagedTileError:
        """The error for a damaged stored tile at `box` (x, y, w, h in `level`'s pixels), its box mapped to
        level 0 so that it covers every level-0 location `read_region` maps into the tile."""
        x, y, w, h = box
        ds = self.level_downsamples[level]
        w0, h0 = self.dimensions
        x0, y0 = max(0, math.floor(x * ds)), max(0, math.floor(y * ds))
        x1, y1 = min(w0, math.ceil((x + w) * ds)), min(h0, math.ceil((y + h) * ds))
        return DamagedTileError(self.path, level, (x0, y0, x1 - x0, y1 - y0), reason, level_box=box)

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"
