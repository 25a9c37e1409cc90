"""Whole-slide images behind one small interface (after openslide-python's `AbstractSlide`).

`open_slide` tries OpenSlide first (Aperio, Hamamatsu, generic tiled TIFF, ...), then tifffile (OME-TIFF,
strip TIFFs, pyramids stored as SubIFDs), then Pillow (PNG/JPEG). Every reader returns the same thing:
RGB uint8 arrays in which transparent and out-of-slide pixels are white, so the pipeline never needs
to know which library read the pixels. A file that cannot be opened or read raises `SlideError`; a region
that touches a damaged stored tile (corrupt or cut-short data: whatever OpenSlide's decoder refuses, found
by whichever reader decodes it) raises its subclass `DamagedTileError`, which names the tile's level and
level-0 box, and the rest of the slide still reads.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import numpy as np

from segcls.core.errors import DamagedTileError, SlideError
from segcls.runtime import strict_jpeg
from segcls.runtime.damage import read_around_damage

# Regions whose level-frame window is larger than this are refused rather than exhausting memory.
_MAX_REGION_PIXELS = 1 << 30
# get_thumbnail reads level windows of at most this many pixels per side.
_THUMBNAIL_CHUNK = 4096
# Decoded TIFF tiles kept per TiffSlide: tiles with context overlap their neighbours, so the pipeline asks
# for the same stored tile 2-4 times, along a row and then from the next row down. 64 MB holds a row of
# 512 px tiles across a 40k px read frame (Aperio's 240 px tiles: 90k px).
_DECODED_CACHE_BYTES = 64 << 20


# min-is-white, min-is-black, RGB, palette, YCbCr (JPEG-compressed: decoded to RGB by tifffile)
_PHOTOMETRICS = (0, 1, 2, 3, 6)


def _one_line(e: BaseException) -> str:
    """An exception as one short line for a SlideError message."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@contextlib.contextmanager
def _tifffile_messages() -> Iterator[list[str]]:
    """Collect what tifffile logs (e.g. `<tifffile.TiffPages @16> invalid page offset ...` on a truncated
    file) instead of letting it reach the console before segcls's own error; `open_slide` turns it into
    that error. Only the tifffile logger is touched, only while a slide is being opened."""
    logger = logging.getLogger("tifffile")
    messages: list[str] = []
    handler = _Collect(messages)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _composite_white(rgba: np.ndarray) -> np.ndarray:
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


class OpenSlideSlide(Slide):
    """A slide read by OpenSlide; a read that fails raises `DamagedTileError` with the stored tile that
    fails (OpenSlide's errors at read time are the data's: a corrupt or truncated tile).

    With `direct=True` (the default), regions of a tiled TIFF-based slide (generic TIFF, Aperio) are
    decoded by tifffile + imagecodecs instead (JPEG tiles by libjpeg-turbo with its warnings as errors,
    `strict_jpeg`, so the direct decoder refuses what OpenSlide refuses), when they give the very same
    pixels (`_direct_reader`):
    OpenSlide decodes to premultiplied ARGB that openslide-python converts back to RGBA, and that costs
    0.17-0.18 s per 1024 px region on 2 cores here against 0.04-0.05 s for the direct decode of the
    same tiles (a synthetic JPEG pyramid and the Aperio test slide, bit-identical). Metadata, levels and
    mpp always come from OpenSlide.
    """

    def __init__(self, path: str | Path, mpp: float | None = None, direct: bool = True) -> None:
        import openslide

        super().__init__(path, mpp)
        self._error = openslide.OpenSlideError
        self._open = lambda: openslide.OpenSlide(str(path))
        try:
            self._osr = self._open()
        except (openslide.OpenSlideError, OSError) as e:
            raise SlideError(f"cannot open slide {path}: {_one_line(e)}") from None
        self._handle_lock = threading.Lock()
        self._broken: list = []  # handles a failed read left unusable, closed with the slide
        self._properties = MappingProxyType(dict(self._osr.properties))  # read once: a failed read breaks the handle
        self.level_dimensions = tuple(self._osr.level_dimensions)
        self._direct = _direct_reader(self) if direct else None

    @property
    def decoder(self) -> str:
        """Who decodes the pixels: "tifffile" (same pixels, faster) or "openslide"."""
        return "tifffile" if self._direct is not None else "openslide"

    @property
    def properties(self) -> MappingProxyType:
        return self._properties

    def _native_mpp(self) -> float | None:
        try:
            mpp = float(self._properties["openslide.mpp-x"])
        except (KeyError, ValueError):
            return None
        return mpp if mpp > 0 else None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        w, h = self._check_request(level, size)
        if self._direct is not None:
            return self._direct.read_region(location, level, (w, h))
        return self._openslide_region(location, level, (w, h))

    def _openslide_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        osr, location = self._osr, (int(location[0]), int(location[1]))
        try:
            return _composite_white(np.asarray(osr.read_region(location, level, size)))
        except self._error:
            pass
        # OpenSlide's errors are sticky: the handle now fails every read. The other readers get a fresh one
        # (the broken one stays open until close: another thread may still be inside it).
        with self._handle_lock:
            if self._osr is osr:
                self._osr = self._open()
                self._broken.append(osr)
        return self._read_alone(location, level, size)

    def _read_alone(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """The region read on a private handle: its pixels if another region's damage broke the shared
        handle under this read, else DamagedTileError for the first of its stored tiles that fails alone
        (the region's box where OpenSlide does not say the level's tile size)."""
        with contextlib.closing(self._open()) as osr:
            try:
                return _composite_white(np.asarray(osr.read_region(location, level, size)))
            except self._error as e:
                reason = _one_line(e)
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        x0, y0 = min(lw, max(0, math.floor(location[0] / ds))), min(lh, max(0, math.floor(location[1] / ds)))
        x1, y1 = min(lw, x0 + size[0]), min(lh, y0 + size[1])
        with contextlib.closing(self._open()) as osr:
            for tile in self._stored_tiles(level, x0, y0, x1, y1):
                centre = (round((tile[0] + tile[2] / 2) * ds), round((tile[1] + tile[3] / 2) * ds))
                try:
                    osr.read_region(centre, level, (1, 1))  # decodes that one tile
                except self._error as e:
                    raise self._damaged(level, tile, _one_line(e)) from None
        raise self._damaged(level, (x0, y0, x1 - x0, y1 - y0), reason)

    def _stored_tiles(self, level: int, x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int, int, int]]:
        """(x, y, w, h) of `level`'s stored tiles that meet the window, as OpenSlide reports their size."""
        try:
            tw, th = (int(self._properties[f"openslide.level[{level}].tile-{side}"]) for side in ("width", "height"))
        except (KeyError, ValueError):
            return []
        if tw <= 0 or th <= 0:
            return []
        lw, lh = self.level_dimensions[level]
        return [
            (tx, ty, min(tw, lw - tx), min(th, lh - ty))
            for ty in range(y0 // th * th, y1, th)
            for tx in range(x0 // tw * tw, x1, tw)
        ]

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        for osr in (*self._broken, self._osr):
            osr.close()


# TIFF compressions whose tiles tifffile + imagecodecs decode (none, LZW, JPEG, deflate, Adobe deflate).
_DIRECT_COMPRESSIONS = (1, 5, 7, 8, 32946)
_DIRECT_VENDORS = ("generic-tiff", "aperio")
_PROBE = 64


def _direct_reader(slide: OpenSlideSlide) -> TiffSlide | None:
    """A tifffile reader of `slide`'s levels if it decodes them exactly as OpenSlide does, else None.

    Qualify: generic TIFF and Aperio files whose tiled levels tifffile sees at the same sizes, with a
    compression it decodes, and a probe region of every level (`_probe_agrees`) that decodes to the same
    pixels both ways (so a colour-space or JPEG-table quirk falls back to OpenSlide, not to other pixels).
    """
    if slide.properties.get("openslide.vendor") not in _DIRECT_VENDORS:
        return None
    try:
        direct = TiffSlide(slide.path)
    except SlideError:
        return None
    try:
        pages = direct._pages
        same = direct.level_dimensions == slide.level_dimensions and all(
            p.is_tiled and int(p.compression) in _DIRECT_COMPRESSIONS for p in pages
        )
        for level in range(slide.level_count) if same else ():
            same = _probe_agrees(direct, slide, level)
            if not same:
                break
    except SlideError:
        same = False
    if not same:
        direct.close()
        return None
    return direct


def _probe_agrees(direct: TiffSlide, slide: OpenSlideSlide, level: int) -> bool:
    """Whether a probe region of `level` reads the same pixels both ways: at the slide's centre, or, where a
    damaged tile is there, at a quarter or three quarters across or at the origin, wherever the level-0
    location is a whole multiple of the downsample (elsewhere OpenSlide interpolates between level pixels)."""
    w0, h0 = slide.dimensions
    lw, lh = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    others = [(lw * f // 4 * ds, lh * f // 4 * ds) for f in (1, 3)] + [(0, 0)]
    aligned = [(int(x), int(y)) for x, y in others if float(x).is_integer() and float(y).is_integer()]
    for location in [(w0 // 2, h0 // 2), *aligned]:
        try:
            return np.array_equal(
                direct.read_region(location, level, (_PROBE, _PROBE)),
                slide._openslide_region(location, level, (_PROBE, _PROBE)),
            )
        except DamagedTileError:
            continue
    return False


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
            raise SlideError(f"cannot open TIFF {path}: {_one_line(e)}") from None
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
            raise self._damaged(level, _segment_box(page, index)[1:], _one_line(e)) from None
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
        return self._padded(location, level, size, lambda x, y, w, h: self._read_page(level, x, y, w, h))

    def _read_page(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
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
            raise SlideError(f"cannot read {w} x {h} at ({x}, {y}) from {self.path}: {_one_line(e)}") from None
        except Exception as e:  # imagecodecs raises its own error types per codec
            if type(e).__module__.startswith("imagecodecs"):
                raise SlideError(f"cannot decode {self.path}: {_one_line(e)}") from None
            raise
        pixels = np.moveaxis(out, 0, -1) if out is not None else contig
        return _to_rgb(pixels, page)

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
        return _composite_white(np.concatenate([gray, pixels[..., 1:2]], -1)) if samples == 2 else gray
    if samples == 4:
        return _composite_white(pixels)
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
            raise SlideError(f"cannot open image {path}: {_one_line(e)}") from None
        self._pixels = _composite_white(np.asarray(rgba))
        self.level_dimensions = ((rgba.width, rgba.height),)

    @property
    def properties(self) -> MappingProxyType:
        return MappingProxyType({"segcls.reader": "pillow", **self._info})

    def _native_mpp(self) -> float | None:
        return None  # PNG/JPEG resolution fields are display DPI, not the scan's

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        return self._padded(location, level, size, lambda x, y, w, h: self._pixels[y : y + h, x : x + w].copy())


def _tifffile_sees_more(path: Path, openslide_levels: int) -> bool:
    """OME-TIFF, or a pyramid OpenSlide's generic TIFF reader misses (SubIFDs): tifffile reads it better."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            return bool(tif.is_ome) or len(tif.series[0].levels) > openslide_levels
    except Exception:  # tifffile cannot parse it: OpenSlide could, keep that
        return False


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a whole-slide image or a plain image with the first reader that understands it.

    `mpp` (microns per level-0 pixel) overrides what the file says. Opening reads the first and last
    pixel of level 0, so a truncated or corrupt file fails here with a `SlideError`, not mid-run.
    """
    path = Path(path)
    if not path.exists():
        raise SlideError(f"slide not found: {path}")
    if not path.is_file():
        raise SlideError(f"expected a slide file, got a directory: {path}")
    if mpp is not None and not mpp > 0:
        raise SlideError(f"mpp must be > 0, got {mpp} for {path}")
    with _tifffile_messages() as messages:
        try:
            slide = _open(path, mpp)
        except SlideError as e:
            raise _with_log(e, messages) from None
        try:
            w, h = slide.dimensions
            if w <= 0 or h <= 0:
                raise SlideError(f"{path} has an empty level 0 ({w} x {h})")
            slide.read_region((0, 0), 0, (1, 1))
            slide.read_region((w - 1, h - 1), 0, (1, 1))
            if slide.level_count > 1:
                slide.read_region((0, 0), slide.level_count - 1, (1, 1))
            # tifffile skipped broken pages: levels are missing
            if isinstance(slide, TiffSlide) and any(_broken(m) for m in messages):
                raise SlideError(f"cannot open TIFF {path}: truncated or corrupt file")
        except SlideError as e:
            slide.close()
            raise _with_log(e, messages) from None
        except BaseException:
            slide.close()
            raise
    for message in messages:  # the file opened and reads: tifffile's other remarks are not a user mistake
        if not _broken(message):
            logging.getLogger("tifffile").warning(message)
    return slide


def _broken(message: str) -> bool:
    return "offset" in message or "truncat" in message


def _with_log(error: SlideError, messages: list[str]) -> SlideError:
    """`error` with the first thing tifffile logged about the file, so the one Error: line says it (a damaged
    tile's error already says what is wrong, and keeps its type and position)."""
    if not messages or isinstance(error, DamagedTileError):
        return error
    return SlideError(f"{error} (tifffile: {messages[0][:200]})")


def _open(path: Path, mpp: float | None) -> Slide:
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError):
        vendor = None
    if vendor is not None:
        slide = OpenSlideSlide(path, mpp)
        if vendor != "generic-tiff" or not _tifffile_sees_more(path, slide.level_count):
            return slide
        slide.close()
    with path.open("rb") as f:
        head = f.read(4)
    if head in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return TiffSlide(path, mpp)
    from PIL import Image

    try:
        Image.open(path).close()
    except (OSError, ValueError, Image.DecompressionBombError):
        raise SlideError(
            f"cannot open {path}: not a slide or image that OpenSlide, tifffile or Pillow can read"
        ) from None
    return ImageSlide(path, mpp)
