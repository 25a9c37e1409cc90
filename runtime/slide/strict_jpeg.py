"""Stored JPEG tiles decoded with libjpeg's warnings as errors, as OpenSlide decodes them.

imagecodecs' JPEG decoder, the one tifffile calls, discards libjpeg's warnings (its `output_message` does
nothing and nothing reads `num_warnings`): a tile with a third of its bytes zeroed decodes to garbage without
a word, where OpenSlide, which turns every libjpeg warning into an error, refuses it ("Corrupt JPEG data:
premature end of data segment"). simplejpeg drives libjpeg-turbo through the TurboJPEG API, which reports
any warning; `strict=True` raises it as a ValueError. libjpeg notices damage while it decodes (the entropy-
coded data must end where the last block ends, a marker must follow, the file must not end first), so where
the strict decoder's pixels are the ones used, the check costs nothing.

Each JPEG page (pyramid level) gets one of two modes, chosen when the slide opens (`for_page`):
- decode: the strict decoder gives the pixels. For 8-bit gray, RGB and YCbCr tiles, when sample tiles
  decode to the very bytes tifffile gives (so pixels stay exactly what they were).
- check: tifffile decodes and the strict decoder decodes the tile again at 1/8 scale (the full entropy
  decode, DC-only inverse DCT) to hear libjpeg's warnings; about half a full decode more. For the other
  8-bit JPEG kinds (separate planes, 4 samples, extra samples) or sample tiles whose pixels differ.
JPEG of more than 8 bits (which simplejpeg does not decode) gets no libjpeg check (`for_page` returns None).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

JPEG = 7  # TIFF compression: JPEG ("new-style", the one tiled slides use)
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
# An APP14 "Adobe" segment with transform 0: libjpeg then takes 3 components as R, G, B, as tifffile tells
# imagecodecs to for RGB tiles without JFIF (Aperio's), instead of guessing YCbCr from component ids 0, 1, 2.
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
_CHECK_SCALE = 8  # the check decodes at 1/8 scale: libjpeg's cheapest, with the full entropy decode


class StrictJpeg:
    """Strict decoding of one TIFF page's JPEG tiles: `decodes` says whether its pixels replace tifffile's."""

    def __init__(self, page, *, decodes: bool) -> None:
        self.decodes = decodes
        self.components = 1 if page.planarconfig == 2 else int(page.samplesperpixel)
        self.colorspace = {1: "GRAY", 3: "RGB", 4: "CMYK"}[self.components]
        tables = bytes(page.jpegtables or b"")
        if tables.startswith(_SOI):
            tables = tables[2:]
        if tables.endswith(_EOI):
            tables = tables[:-2]
        as_rgb = self.components == 3 and int(page.photometric) == 2 and not page.is_jfif
        self._head = _SOI + (_ADOBE_RGB if as_rgb else b"") + tables

    def stream(self, data: bytes) -> bytes:
        """The tile as one JPEG stream: the page's shared tables (JPEGTables) spliced in after SOI."""
        if data[:2] != _SOI:
            raise ValueError(f"tile data does not start with a JPEG SOI marker (starts with {data[:2].hex()})")
        return self._head + data[2:]

    def decode(self, data: bytes) -> np.ndarray:
        """(length, width, components) uint8; ValueError with libjpeg's words on any warning or error."""
        import simplejpeg

        return simplejpeg.decode_jpeg(self.stream(data), colorspace=self.colorspace, strict=True)

    def check(self, data: bytes) -> None:
        """ValueError with libjpeg's words if decoding the tile makes libjpeg warn or fail."""
        import simplejpeg

        simplejpeg.decode_jpeg(
            self.stream(data),
            colorspace=self.colorspace,
            min_height=1,
            min_width=1,
            min_factor=_CHECK_SCALE,
            strict=True,
        )


def for_page(page, samples: Iterable[tuple[bytes, np.ndarray]]) -> StrictJpeg | None:
    """How `page`'s tiles are checked: None for a page that is not 8-bit JPEG.

    `samples` yields (tile bytes, tifffile's decoded tile (length, width, samples)) for a few tiles; the
    first that decodes strictly decides whether the strict decoder's pixels are the same (decode mode) or
    not (check mode). A damaged sample tile proves nothing and is passed over.
    """
    if int(page.compression) != JPEG or int(page.bitspersample) != 8:
        return None
    components = 1 if page.planarconfig == 2 else int(page.samplesperpixel)
    if components not in (1, 3, 4):
        return None
    strict = StrictJpeg(page, decodes=False)
    plain = (
        page.planarconfig == 1
        and not page.extrasamples
        and (components, int(page.photometric)) in ((1, 0), (1, 1), (3, 2), (3, 6))
    )
    if not plain:
        return strict
    for data, pixels in samples:
        try:
            mine = strict.decode(data)
        except ValueError:
            continue
        return StrictJpeg(page, decodes=np.array_equal(mine, pixels))
    return strict
