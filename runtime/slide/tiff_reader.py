"""Slides tifffile reads (OME-TIFF, strip TIFFs, pyramids stored as SubIFDs), decoding only the stored tiles a
region touches, kept in a bounded cache; damaged tiles raise `DamagedTileError`."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import numpy as np

from segcls.core.errors import SlideError
from segcls.runtime.slide import strict_jpeg
from segcls.runtime.slide.base import Slide, composite_white, one_line

# Decoded TIFF tiles kept per TiffSlide: tiles with context overlap their neighbours, so the pipeline asks
# for the same stored tile 2-4 times, along a row and then from the next row down. 64 MB holds a row of
# 512 px tiles across a 40k px read frame (Aperio's 240 px tiles: 90k px).
_DECODED_CACHE_BYTES = 64 << 20


# min-is-white, min-is-black, RGB, palette, YCbCr (JPEG-compressed: decoded to RGB by tifffile)
_PHOTOMETRICS = (0, 1, 2, 3, 6)


class TiffSlide(Slide):
    """A TIFF read with tifffile: the first series and its levels (OME SubIFDs, reduced IFDs).

    Regions decode only the tiles or strips they touch; a page stored as one strip (or uncompressed
    with huge strips) is decoded whole for each read that touches it. Leading axes other than Y, X and
    samples (channels stored as pages, Z, T) are not supported beyond their first plane. A tile whose
    data is cut short, that its codec refuses or that makes libjpeg warn raises `DamagedTileError`.
    """

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        import tifffile

        super().__init__(path, mpp)
        try:
            self._tif = tifffile.TiffFile(str(path))
            if not self._tif.series:
                self._tif.close()
                raise SlideError(f"cannot open TIFF {path}: no readable image (truncated or corrupt file)")
            series = self._tif.series[0]
            self._pages = [level.keyframe for level in series.levels]
        except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as e:
            raise SlideError(f"cannot open TIFF {path}: {one_line(e)}") from None
        for page in self._pages:
            photometric = int(page.photometric)
            if (
                page.imagedepth != 1
                or page.dtype not in (np.uint8, np.uint16)
                or page.samplesperpixel > 4
                or photometric not in _PHOTOMETRICS
            ):
                self._tif.close()
                raise SlideError(
                    f"{path}: expected 8- or 16-bit gray/RGB(A)/palette TIFF levels, found {page.dtype}, "
                    f"{page.samplesperpixel} samples, photometric {photometric}"
                )
        self.level_dimensions = tuple((p.imagewidth, p.imagelength) for p in self._pages)
        self._lock = threading.Lock()  # the file handle's position
        self._decoded = _DecodedTiles(_DECODED_CACHE_BYTES)
        self._strict = [strict_jpeg.for_page(page, self._samples(page)) for page in self._pages]

    @property
    def jpeg_checks(self) -> tuple[str | None, ...]:
        """Per level, how libjpeg's warnings are heard (`strict_jpeg`): "decode" (the strict decoder gives
        the pixels, no extra cost), "check" (tifffile decodes, the tile is decoded again at 1/8 scale to be
        checked) or None (not JPEG, or JPEG of more than 8 bits: not checked)."""
        return tuple(None if s is None else ("decode" if s.decodes else "check") for s in self._strict)

    def _samples(self, page) -> Iterator[tuple[bytes, np.ndarray]]:
        """(bytes, tifffile's decoded tile) of a few stored tiles of `page`: first, middle and last."""
        stored = [i for i, count in enumerate(page.databytecounts) if count]
        for index in dict.fromkeys(stored[len(stored) * k // 3] for k in range(3) if stored):
            data = self._read_segment(page, index)
            try:
                segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            except Exception:  # a damaged sample: its error surfaces where a region reads it
                continue
            yield data, segment[0]

    def _read_segment(self, page, index: int) -> bytes | None:
        """The stored bytes of one tile or strip (None for a tile that was never written)."""
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if not count:
            return None
        with self._lock:
            self._tif.filehandle.seek(offset)
            return self._tif.filehandle.read(count)

    def _decode(self, level: int, index: int):
        """(decoded segment (length, width, samples) or None, sample plane, segment y, segment x), cached.

        A segment that is cut short by the end of the file, that its decoder refuses, or that makes libjpeg
        warn (`strict_jpeg`) raises DamagedTileError with its position; it is not cached.
        """
        key = (level, index)
        hit = self._decoded.get(key)
        if hit is not None:
            return hit
        page = self._pages[level]
        data = self._read_segment(page, index)
        count = page.databytecounts[index]
        if data is not None and len(data) < count:
            reason = f"its {count} bytes run past the end of the file ({len(data)} there)"
            raise self._damaged(level, _segment_box(page, index)[1:], reason)
        strict = self._strict[level]
        try:
            if data is not None and strict is not None and strict.decodes:
                (s, sx, sy, _, _), segment = _segment_box(page, index), strict.decode(data)
            else:
                segment, (s, _, sy, sx, _), _ = page.decode(data, index, jpegtables=page.jpegtables)
                segment = None if segment is None else segment[0]
                if data is not None and strict is not None:
                    strict.check(data)
        except NotImplementedError:
            raise
        except Exception as e:
            if not _is_damage(e):
                raise
            raise self._damaged(level, _segment_box(page, index)[1:], one_line(e)) from None
        decoded = (segment, s, sy, sx)
        self._decoded.put(key, decoded, 0 if segment is None else segment.nbytes)
        return decoded

    @property
    def properties(self) -> MappingProxyType:
        page = self._pages[0]
        props = {"segcls.reader": "tifffile"}
        for tag in page.tags.values():
            if isinstance(tag.value, str | int | float) and len(str(tag.value)) < 10_000:
                props[f"tiff.{tag.name}"] = str(tag.value)
        return MappingProxyType(props)

    def _native_mpp(self) -> float | None:
        if self._tif.is_ome:
            mpp = _ome_mpp(self._tif.ome_metadata or "")
            if mpp:
                return mpp
        page = self._pages[0]
        microns_per_unit = {2: 25_400.0, 3: 10_000.0, 4: 1_000.0, 5: 1.0}.get(int(page.resolutionunit))
        xres = page.resolution[0]
        if microns_per_unit and xres > 0:
            return microns_per_unit / xres
        return None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        return self._padded(
            location, level, size, lambda x, y, w, h: _to_rgb(self._samples_of(level, x, y, w, h), self._pages[level])
        )

    def read_samples(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The stored samples (h, w, samples) of window (x, y, w, h) inside `level`, in that level's own pixel
        frame, before any colour conversion: the class indices of a palette label mask, not their colours."""
        self._check_request(level, (w, h))
        lw, lh = self.level_dimensions[level]
        if x < 0 or y < 0 or x + w > lw or y + h > lh:
            raise SlideError(f"window {w} x {h} at ({x}, {y}) is outside level {level} ({lw} x {lh}) of {self.path}")
        return self._samples_of(level, x, y, w, h)

    def _samples_of(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        import tifffile

        page = self._pages[level]
        samples = page.samplesperpixel
        out = np.zeros((samples, h, w), dtype=page.dtype) if page.planarconfig == 2 else None
        contig = None if out is not None else np.zeros((h, w, samples), dtype=page.dtype)
        try:
            for index in _segments(page, x, y, w, h):
                segment, s, sy, sx = self._decode(level, index)  # (length, width, contig samples)
                if segment is None:
                    continue
                ys, xs = max(y, sy), max(x, sx)
                ye, xe = min(y + h, sy + segment.shape[0]), min(x + w, sx + segment.shape[1])
                if ye <= ys or xe <= xs:
                    continue
                part = segment[ys - sy : ye - sy, xs - sx : xe - sx]
                if out is not None:
                    out[s, ys - y : ye - y, xs - x : xe - x] = part[..., 0]
                else:
                    contig[ys - y : ye - y, xs - x : xe - x] = part
        except (tifffile.TiffFileError, ValueError, NotImplementedError, RuntimeError, OSError) as e:
            raise SlideError(f"cannot read {w} x {h} at ({x}, {y}) from {self.path}: {one_line(e)}") from None
        except Exception as e:  # imagecodecs raises its own error types per codec
            if type(e).__module__.startswith("imagecodecs"):
                raise SlideError(f"cannot decode {self.path}: {one_line(e)}") from None
            raise
        return np.moveaxis(out, 0, -1) if out is not None else contig

    def close(self) -> None:
        self._tif.close()


class _DecodedTiles:
    """A thread-safe least-recently-used store of decoded TIFF segments, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return None if item is None else item[0]

    def put(self, key, value, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (value, nbytes)
            self.bytes += nbytes
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped


def _segments(page, x: int, y: int, w: int, h: int) -> list[int]:
    """Indices into the page's offsets of the tiles/strips overlapping the window."""
    planes = page.samplesperpixel if page.planarconfig == 2 else 1
    if page.is_tiled:
        tw, tl = page.tilewidth, page.tilelength
        across, down = -(-page.imagewidth // tw), -(-page.imagelength // tl)
        cells = [
            ty * across + tx
            for ty in range(y // tl, (y + h - 1) // tl + 1)
            for tx in range(x // tw, (x + w - 1) // tw + 1)
        ]
        per_plane = across * down
    else:
        rows = page.rowsperstrip or page.imagelength
        cells = list(range(y // rows, (y + h - 1) // rows + 1))
        per_plane = -(-page.imagelength // rows)
    return [p * per_plane + c for p in range(planes) for c in cells]


def _segment_box(page, index: int) -> tuple[int, int, int, int, int]:
    """(sample plane, x, y, width, height) in `page`'s pixels of the tile or strip at `index`, clipped to
    the page (the inverse of `_segments`)."""
    if page.is_tiled:
        tw, tl = page.tilewidth, page.tilelength
        across, down = -(-page.imagewidth // tw), -(-page.imagelength // tl)
    else:
        tw, tl = page.imagewidth, page.rowsperstrip or page.imagelength
        across, down = 1, -(-page.imagelength // tl)
    plane, cell = divmod(index, across * down)
    row, col = divmod(cell, across)
    x, y = col * tw, row * tl
    return plane, x, y, min(tw, page.imagewidth - x), min(tl, page.imagelength - y)


def _is_damage(e: Exception) -> bool:
    """Whether a segment decoder's exception means bad data (imagecodecs' codec errors, libjpeg's words
    from the strict decoder, tifffile's complaint about a segment of the wrong size)."""
    import tifffile

    return isinstance(e, ValueError | tifffile.TiffFileError) or type(e).__module__.startswith("imagecodecs")


def _to_rgb(pixels: np.ndarray, page) -> np.ndarray:
    """Decoded samples (h, w, s) of any supported photometric -> RGB uint8 over white."""
    photometric = int(page.photometric)
    if photometric == 3:  # palette
        lut = (np.asarray(page.colormap).T >> 8).astype(np.uint8)
        return lut[pixels[..., 0]]
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    if photometric == 0:  # min-is-white
        pixels = 255 - pixels
    samples = pixels.shape[-1]
    if samples in (1, 2):
        gray = np.repeat(pixels[..., :1], 3, axis=-1)
        return composite_white(np.concatenate([gray, pixels[..., 1:2]], -1)) if samples == 2 else gray
    if samples == 4:
        return composite_white(pixels)
    return np.ascontiguousarray(pixels)


_UNIT_MICRONS = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


def _ome_mpp(xml: str) -> float | None:
    """PhysicalSizeX of the first OME Pixels element, in microns."""
    import xml.etree.ElementTree as ET

    try:
        pixels = ET.fromstring(xml).find(".//{*}Pixels")
    except ET.ParseError:
        return None
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    scale = _UNIT_MICRONS.get(pixels.attrib.get("PhysicalSizeXUnit", "µm"))
    try:
        size = float(pixels.attrib["PhysicalSizeX"])
    except ValueError:
        return None
    return size * scale if scale and size > 0 else None
