"""Slides with one damaged stored tile, for tests: a copy of a tiled TIFF/SVS with one tile's bytes patched.

    box = damage_tile(CMU, tmp_path / "bad.svs", how="zeroed")

`how`:
- "zeroed": the middle third of the tile's bytes set to 0 (OpenSlide: "Corrupt JPEG data: premature end
  of data segment");
- "truncated": the tile's byte count (TileByteCounts) cut to two thirds, so its data ends early
  (OpenSlide: "Premature end of JPEG file");
- "past-eof": the tile's data moved to the end of the file and cut there after half of it, its byte count
  unchanged, so the count runs past the end of the file (a file cut short).

The geometry (which bytes, which box) is read with tifffile, independently of segcls's readers.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import tifffile

HOWS = ("zeroed", "truncated", "past-eof")


def damage_tile(
    src: str | Path, dst: str | Path, *, level: int = 0, tile: tuple[int, int] | None = None, how: str = "zeroed"
) -> tuple[int, int, int, int]:
    """Copy `src` to `dst` with the stored tile at grid position `tile` (column, row; default: the middle
    one) of pyramid `level` damaged as `how` says; returns the tile's box (x, y, width, height) in level-0
    pixels, as `DamagedTileError.box` gives it: every level-0 location whose level pixel lies in the tile
    (level x = floor(x0 / downsample), downsample the mean of the width and height ratios), clipped."""
    if how not in HOWS:
        raise ValueError(f"how must be one of {HOWS}, got {how!r}")
    src, dst = Path(src), Path(dst)
    shutil.copyfile(src, dst)
    with tifffile.TiffFile(dst) as tif:
        levels = tif.series[0].levels
        page, (w0, h0) = levels[level].keyframe, (levels[0].keyframe.imagewidth, levels[0].keyframe.imagelength)
        if not page.is_tiled:
            raise ValueError(f"{src} level {level} is not tiled")
        across = -(-page.imagewidth // page.tilewidth)
        down = -(-page.imagelength // page.tilelength)
        col, row = tile if tile is not None else (across // 2, down // 2)
        index = row * across + col
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        count_at, count_dtype = _entry(page.tags["TileByteCounts"], index, tif.byteorder)
        offset_at, offset_dtype = _entry(page.tags["TileOffsets"], index, tif.byteorder)
        x, y = col * page.tilewidth, row * page.tilelength
        w, h = min(page.tilewidth, page.imagewidth - x), min(page.tilelength, page.imagelength - y)
        ds = (w0 / page.imagewidth + h0 / page.imagelength) / 2
    with dst.open("r+b") as f:
        if how == "zeroed":
            f.seek(offset + count // 3)
            f.write(bytes(count // 3))
        elif how == "truncated":
            f.seek(count_at)
            f.write(np.array(count * 2 // 3, count_dtype).tobytes())
        else:
            f.seek(offset)
            data = f.read(count)
            end = f.seek(0, 2)
            f.write(data[: count // 2])
            f.seek(offset_at)
            f.write(np.array(end, offset_dtype).tobytes())
    x0, y0 = math.floor(x * ds), math.floor(y * ds)
    return x0, y0, min(w0, math.ceil((x + w) * ds)) - x0, min(h0, math.ceil((y + h) * ds)) - y0


def _entry(tag, index: int, byteorder: str) -> tuple[int, np.dtype]:
    """Where in the file entry `index` of an array-valued tag is stored, and its dtype."""
    dtype = np.dtype(tifffile.TIFF.DATA_FORMATS[tag.dtype][-1]).newbyteorder(byteorder)
    return tag.valueoffset + index * dtype.itemsize, dtype
