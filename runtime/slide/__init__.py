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
from collections.abc import Iterator
from pathlib import Path

from segcls.core.errors import DamagedTileError, SlideError
from segcls.runtime.slide.base import Slide
from segcls.runtime.slide.image_reader import ImageSlide
from segcls.runtime.slide.openslide_reader import OpenSlideSlide
from segcls.runtime.slide.tiff_reader import TiffSlide

__all__ = ["ImageSlide", "OpenSlideSlide", "Slide", "TiffSlide", "open_slide"]


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


def _tifffile_sees_more(path: Path, openslide_levels: int) -> bool:
    """OME-TIFF, or a pyramid OpenSlide's generic TIFF reader misses (SubIFDs): tifffile reads it better."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            return bool(tif.is_ome) or len(tif.series[0].levels) > openslide_levels
    except Exception:  # tifffile cannot parse it: OpenSlide could, keep that
        return False


def open_slide(path: str | Path, mpp: float | None = None, damaged_ok: bool = False) -> Slide:
    """Open a whole-slide image or a plain image with the first reader that understands it.

    `mpp` (microns per level-0 pixel) overrides what the file says. Opening reads the first and last
    pixel of level 0, so a truncated or corrupt file fails here with a `SlideError`, not mid-run; a damaged
    stored tile under one of those pixels is a `DamagedTileError` too, unless `damaged_ok` (a run that reads
    damaged tiles as glass).
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
            probes = [((0, 0), 0), ((w - 1, h - 1), 0)] + [((0, 0), slide.level_count - 1)] * (slide.level_count > 1)
            for location, level in probes:
                try:
                    slide.read_region(location, level, (1, 1))
                except DamagedTileError:
                    if not damaged_ok:
                        raise
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
