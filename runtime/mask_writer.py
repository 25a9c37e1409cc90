"""The slide-sized output mask: a pyramidal palette BigTIFF that OpenSlide, QuPath and ASAP open.

The network's label map is small (stride 8 of the read resolution); the mask has the slide's full size.
Every tile of every level is upsampled (nearest) straight from the label map when tifffile asks for it,
so memory stays at the label map plus one tile whatever the slide size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from segcls.tiff import palette_colormap, pyramid_sizes, write_pyramid

UNLABELLED = 255


def _source_index(start: int, count: int, out_size: int, src_size: int, pixel: float | None) -> np.ndarray:
    """Label-map rows (or columns) under output pixels start..start+count of an axis `out_size` long:
    floor(i * src_size / out_size) in exact integer arithmetic, or floor(i / pixel) when one label
    pixel spans `pixel` output pixels."""
    i = np.arange(start, start + count, dtype=np.int64)
    if pixel is None:
        return i * src_size // out_size
    return np.minimum(np.floor(i / pixel).astype(np.int64), src_size - 1)


def upsample_window(
    labels: np.ndarray,
    size: tuple[int, int],
    x: int,
    y: int,
    w: int,
    h: int,
    pixel: tuple[float, float] | None = None,
) -> np.ndarray:
    """Window (x, y, w, h) of `labels` nearest-upsampled to `size` (W, H): out[Y, X] =
    labels[floor(Y * h_l / H), floor(X * w_l / W)], or labels[floor(Y / py), floor(X / px)] with
    `pixel` = (px, py) output pixels per label pixel."""
    px, py = pixel if pixel is not None else (None, None)
    rows = _source_index(y, h, size[1], labels.shape[0], py)
    cols = _source_index(x, w, size[0], labels.shape[1], px)
    # Gather the few source rows once, then columns, then repeat rows: cheaper than a 2-D fancy index.
    band = labels[rows[0] : rows[-1] + 1][:, cols]
    return band[rows - rows[0]]


def write_mask(
    path: str | Path,
    labels: np.ndarray,
    size: tuple[int, int],
    colors: Sequence[Sequence[int]],
    mpp: float | None,
    tile: int = 512,
    classes: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    compression: str = "zlib",
    compression_level: int | None = 6,
    downsample: float | None = None,
) -> list[tuple[int, int]]:
    """Write `labels` (uint8 (h, w), class index or 255) upsampled to `size` (W, H) as a pyramid.

    By default the label map spans the output exactly; `downsample` (output level-0 pixels per label
    pixel) says instead that it starts at (0, 0) with that pixel size and may overhang the output (a
    label map padded to whole tiles). Class i shows in `colors[i]`, 255 (unlabelled) in white. `mpp` is
    that of the output's level 0 (normally the slide's). Class names and colours go in the
    ImageDescription as JSON. `progress(n)` is called per tile written. Returns the level sizes.

    Deflate (zlib) by default because every TIFF reader opens it; level 6 both compresses better and
    runs faster than level 1 on label maps (long runs). `compression="zstd"` (level None) is ~4x faster
    and smaller but only libtiff-with-zstd/OpenSlide 4 readers open it (not Bio-Formats).
    """
    labels = np.ascontiguousarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty uint8 (h, w) array, got {labels.dtype} {labels.shape}")
    width, height = (int(v) for v in size)
    if width <= 0 or height <= 0:
        raise ValueError(f"mask size must be positive, got {size}")
    if len(colors) > UNLABELLED:
        raise ValueError(f"at most {UNLABELLED} classes fit a uint8 palette mask, got {len(colors)}")
    if classes is not None and len(classes) != len(colors):
        raise ValueError(f"{len(classes)} class names but {len(colors)} colours")

    sizes = pyramid_sizes(width, height, tile)

    if downsample is not None and not downsample > 0:
        raise ValueError(f"downsample must be > 0, got {downsample}")

    def read_tile(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        lw, lh = sizes[level]
        pixel = None if downsample is None else (downsample * lw / width, downsample * lh / height)
        return upsample_window(labels, sizes[level], x, y, w, h, pixel)

    description = json.dumps(
        {
            "segcls": "mask",
            "classes": list(classes) if classes is not None else None,
            "colors": [[int(v) for v in c] for c in colors],
            "unlabelled": UNLABELLED,
            "mpp": mpp,
        }
    )
    return write_pyramid(
        path,
        (width, height),
        read_tile,
        samples=1,
        tile=tile,
        compression=compression,
        compression_level=compression_level,
        colormap=palette_colormap(colors),
        mpp=mpp,
        description=description,
        progress=progress,
    )
