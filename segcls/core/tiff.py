"""Pyramidal tiled BigTIFF writing in bounded memory, for slides and label masks.

Levels are sequential top-level IFDs (reduced ones with subfiletype=1): the layout OpenSlide reads as a
pyramid (written as SubIFDs it sees only level 0). Each tile is produced on demand by a callback, so
memory does not grow with the image size. A callback may return a tile already compressed (bytes from
`tile_encoder`): a caller that compresses on several threads, or reuses the bytes of identical tiles,
hands them to tifffile as they are.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

from segcls.core.atomic import atomic_path
from segcls.core.constants import check_multiple

# read_tile(level, x, y, width, height) -> (height, width[, samples]) array in that level's pixel frame,
# or the bytes of the whole (tile, tile) tile, padding included, compressed as `write_pyramid` was told.
TileFn = Callable[[int, int, int, int, int], "np.ndarray | bytes"]


def pyramid_sizes(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    """Level sizes, halving until the whole level fits in one tile."""
    sizes = [(width, height)]
    while max(sizes[-1]) > tile:
        w, h = sizes[-1]
        sizes.append((max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))))
    return sizes


def palette_colormap(colors: Sequence[Sequence[int]]) -> np.ndarray:
    """A (3, 256) uint16 TIFF colormap: class i gets colors[i], 255 (unlabelled) white, the rest black."""
    cmap = np.zeros((3, 256), dtype=np.uint16)
    cmap[:, 255] = 65535
    for i, rgb in enumerate(colors):
        cmap[:, i] = np.asarray(rgb, dtype=np.uint16) * 257
    return cmap


def tile_encoder(compression: str, level: int | None = None) -> Callable[[np.ndarray], bytes]:
    """The function tifffile itself compresses a tile with for `compression` ("zlib", "zstd", ...):
    bytes it returns are what `write_pyramid` would have written for that tile."""
    name = compression.upper()
    tag = tifffile.COMPRESSION.ADOBE_DEFLATE if name == "ZLIB" else tifffile.COMPRESSION[name]
    codec = tifffile.TIFF.COMPRESSORS[tag]
    if level is None:
        return codec
    return lambda data: codec(data, level=level)


def _tiles(read_tile: TileFn, level: int, size: tuple[int, int], tile: int, samples: int, dtype) -> Iterator:
    width, height = size
    shape = (tile, tile, samples) if samples > 1 else (tile, tile)
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            w, h = min(tile, width - x), min(tile, height - y)
            data = read_tile(level, x, y, w, h)
            if isinstance(data, bytes):  # compressed by the caller: tifffile writes it unchanged
                yield data
                continue
            data = np.asarray(data, dtype=dtype)
            if data.shape[:2] != (h, w):
                raise ValueError(f"tile callback returned {data.shape[:2]} for a {(h, w)} tile")
            if (h, w) != (tile, tile):
                padded = np.zeros(shape, dtype=dtype)
                padded[:h, :w] = data
                data = padded
            yield data


def write_pyramid(
    path: str | Path,
    size: tuple[int, int],
    read_tile: TileFn,
    *,
    samples: int = 1,
    dtype=np.uint8,
    tile: int = 512,
    compression: str = "zlib",
    compression_level: int | None = None,
    colormap: np.ndarray | None = None,
    mpp: float | None = None,
    description: str | None = None,
    progress: Callable[[int], None] | None = None,
    atomic: bool = True,
) -> list[tuple[int, int]]:
    """Write a tiled pyramid to `path` atomically; returns the level sizes (width, height).

    `atomic=False` writes `path` itself, for a caller that already writes to a temporary file of its own.

    `samples` 3 writes RGB (compression "jpeg" gives a slide like a scanner's); 1 with `colormap` writes a
    palette image (class indices that viewers show in colour). `progress(n)` is called per tile written.
    Within one level the callback returns either arrays or compressed bytes (`tile_encoder`), not both:
    tifffile decides from a level's first tile.
    """
    check_multiple("TIFF tile size", tile)
    sizes = pyramid_sizes(*size, tile)
    photometric = "palette" if colormap is not None else ("rgb" if samples == 3 else "minisblack")
    # metadata=None: tifffile's own shape JSON would be a second ImageDescription tag, the one libtiff
    # and OpenSlide read, hiding `description`.
    kwargs: dict = {
        "photometric": photometric,
        "compression": compression,
        "tile": (tile, tile),
        "metadata": None,
    }
    if compression_level is not None:
        kwargs["compressionargs"] = {"level": compression_level}
    if colormap is not None:
        kwargs["colormap"] = colormap
    if mpp:
        kwargs["resolution"] = (1e4 / mpp, 1e4 / mpp)
        kwargs["resolutionunit"] = "CENTIMETER"

    def counted(it: Iterator) -> Iterator:
        for t in it:
            if progress is not None:  # before the yield: the writer never resumes after a level's last tile
                progress(1)
            yield t

    target = atomic_path(path) if atomic else contextlib.nullcontext(Path(path))
    with target as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level, (w, h) in enumerate(sizes):
            shape = (h, w, samples) if samples > 1 else (h, w)
            extra = {"subfiletype": 1} if level else {}
            if level == 0 and description:
                extra["description"] = description
            if mpp and level:
                scale = size[0] / w
                extra["resolution"] = (1e4 / (mpp * scale), 1e4 / (mpp * scale))
            tif.write(
                counted(_tiles(read_tile, level, (w, h), tile, samples, dtype)),
                shape=shape,
                dtype=dtype,
                **{**kwargs, **extra},
            )
    return sizes
