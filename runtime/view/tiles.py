"""Deep Zoom tiles of a slide and of its mask, on one tile grid.

The grid is openslide's `DeepZoomGenerator` (254 px tiles, 1 px overlap: 256 px images), the one
openslide-python's deep-zoom server and OpenSeadragon use. It is computed over any segcls `Slide` (OpenSlide
or the fallback readers), and the slide's pixels come from that `Slide`'s `read_region`: the very reads
`segcls-infer` makes, including OpenSlide's pixels decoded by tifffile where they are bit-identical. Tiles of
reduced levels are read from the best slide level and shrunk as `DeepZoomGenerator.get_tile` shrinks them,
so slides whose levels are not powers of two of each other are handled as OpenSlide handles them.

Mask tiles are label tiles on the slide's own grid (`MaskTiles`): each display pixel takes the class under its
centre, so slide and mask stay aligned at every zoom level whatever the mask's resolution.
"""

from __future__ import annotations

import io
import re
from types import MappingProxyType

import numpy as np
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from segcls.core.constants import UNLABELLED
from segcls.core.errors import SegclsError
from segcls.runtime.slide import Slide
from segcls.runtime.view.masks import LabelMask, MaskClasses, centres

TILE_SIZE = 254  # + 2 x OVERLAP = 256 px images
OVERLAP = 1
JPEG_QUALITY = 80


class TileNotFound(SegclsError):
    """A tile address outside the pyramid (an HTTP 404)."""


class _AsOpenSlide:
    """The few attributes of an openslide `AbstractSlide` that `DeepZoomGenerator` reads, over a segcls Slide:
    the grid depends only on level sizes and downsamples."""

    def __init__(self, slide: Slide) -> None:
        self.dimensions = slide.dimensions
        self.level_dimensions = slide.level_dimensions
        self.level_downsamples = slide.level_downsamples
        self.level_count = slide.level_count
        self.properties = MappingProxyType({"openslide.background-color": "ffffff"})
        self.get_best_level_for_downsample = slide.best_level_for_downsample


class DeepZoomGrid:
    """The Deep Zoom pyramid of a slide: levels 0 (1 x 1 px) .. level_count - 1 (the slide's level 0)."""

    def __init__(self, slide: Slide) -> None:
        self._dz = DeepZoomGenerator(_AsOpenSlide(slide), tile_size=TILE_SIZE, overlap=OVERLAP)
        self.size = slide.dimensions
        self.tile_size, self.overlap = TILE_SIZE, OVERLAP
        self.level_count = self._dz.level_count
        self.level_tiles = self._dz.level_tiles
        self.level_dimensions = self._dz.level_dimensions
        self.tile_count = self._dz.tile_count

    def check(self, level: int, col: int, row: int) -> None:
        if not 0 <= level < self.level_count:
            raise TileNotFound(f"no Deep Zoom level {level} (levels 0..{self.level_count - 1})")
        cols, rows = self.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileNotFound(f"no tile {col}_{row} at level {level} ({cols} x {rows} tiles)")

    def downsample(self, level: int) -> int:
        """Slide level-0 pixels per pixel of Deep Zoom `level`."""
        return 2 ** (self.level_count - 1 - level)

    def read_args(self, level: int, col: int, row: int) -> tuple[tuple[int, int], int, tuple[int, int]]:
        """`read_region` arguments (level-0 location, slide level, size) of a tile's pixels."""
        self.check(level, col, row)
        return self._dz.get_tile_coordinates(level, (col, row))

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) of a tile, overlap included, in Deep Zoom `level`'s pixels."""
        self.check(level, col, row)
        w, h = self._dz.get_tile_dimensions(level, (col, row))
        x = col * TILE_SIZE - (OVERLAP if col else 0)
        y = row * TILE_SIZE - (OVERLAP if row else 0)
        return x, y, w, h

    def dzi(self, fmt: str) -> str:
        """The .dzi XML of this pyramid with tiles in `fmt` ("jpeg" or "png")."""
        return self._dz.get_dzi(fmt)


class SlideTiles:
    """RGB tiles of a slide on its Deep Zoom grid."""

    def __init__(self, slide: Slide) -> None:
        self.slide = slide
        self.grid = DeepZoomGrid(slide)

    def tile(self, level: int, col: int, row: int) -> Image.Image:
        location, slide_level, size = self.grid.read_args(level, col, row)
        _, _, w, h = self.grid.tile_box(level, col, row)
        image = Image.fromarray(self.slide.read_region(location, slide_level, size))
        if image.size != (w, h):
            image.thumbnail((w, h), Image.Resampling.LANCZOS)  # as DeepZoomGenerator.get_tile scales
        return image


class MaskTiles:
    """Class-index tiles of a mask on its slide's Deep Zoom grid (255 = unlabelled)."""

    def __init__(self, mask: LabelMask, grid: DeepZoomGrid, slide_mpp: float | None, slide_name: str) -> None:
        mask.check_fits(grid.size, slide_mpp, slide_name)
        self.mask, self.grid = mask, grid

    @property
    def classes(self) -> MaskClasses:
        return self.mask.classes

    def labels(self, level: int, col: int, row: int) -> np.ndarray:
        x, y, w, h = self.grid.tile_box(level, col, row)
        ds = self.grid.downsample(level)
        return self.mask.sample(centres(x, w, ds), centres(y, h, ds), self.grid.size, ds)

    def class_at(self, x: float, y: float) -> int | None:
        """The class index under slide level-0 point (x, y), None where unlabelled or outside the slide."""
        w0, h0 = self.grid.size
        if not (0 <= x < w0 and 0 <= y < h0):
            return None
        value = int(self.mask.sample(np.array([x]), np.array([y]), self.grid.size, 1.0)[0, 0])
        return None if value == UNLABELLED or value >= len(self.classes.names) else value


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def encode_labels(labels: np.ndarray, classes: MaskClasses, hidden: frozenset[int] = frozenset()) -> bytes:
    """A palette PNG of class indices in the class colours; unlabelled pixels and `hidden` classes are
    transparent (the viewer's per-class toggles)."""
    image = Image.fromarray(np.ascontiguousarray(labels), "P")
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(classes.colors)] = classes.colors
    image.putpalette(palette.tobytes())
    alpha = bytes(0 if (i >= len(classes.colors) or i in hidden) else 255 for i in range(256))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=alpha, compress_level=1)
    return buffer.getvalue()


_HIDDEN = re.compile(r"^(?:\d{1,3}(?:,\d{1,3})*)?$")


def parse_hidden(text: str, classes: int) -> frozenset[int]:
    """The `hide` parameter of a mask tile URL ("0,3": classes 0 and 3 hidden) -> a set of class indices;
    ValueError for anything else."""
    if not _HIDDEN.match(text):
        raise ValueError(f"hide must be comma-separated class indices, got {text[:40]!r}")
    hidden = frozenset(int(v) for v in text.split(",") if v)
    if any(v >= classes for v in hidden):
        raise ValueError(f"hide names a class outside 0..{classes - 1}")
    return hidden
