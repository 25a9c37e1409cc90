"""Reading a region around damaged stored tiles, for runs that go on past them (`--skip-damaged`).

A reader raises `DamagedTileError` for a region that touches a damaged tile; `read_around_damage` reads the
rest of the region and leaves the tile's pixels white, and says which tiles it met, so a caller can mark
exactly their boxes unlabelled instead of losing the whole region.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from segcls.core.errors import DamagedTileError, SlideError


def read_around_damage(
    slide, location: tuple[int, int], level: int, size: tuple[int, int]
) -> tuple[np.ndarray, list[DamagedTileError]]:
    """`slide.read_region`, with damaged stored tiles read as white instead of raising: the region and the
    errors of the damaged tiles in it (their `box`es are what a caller marks unlabelled).

    After an error the parts of the region around the tile are read again, so each damaged tile costs a
    few reads more; sound regions cost one read, the same as `read_region`.
    """
    w, h = (int(v) for v in size)
    try:
        return slide.read_region(location, level, (w, h)), []
    except DamagedTileError as e:
        first = e
    ds = slide.level_downsamples[level]
    lx, ly = math.floor(location[0] / ds), math.floor(location[1] / ds)
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    errors: list[DamagedTileError] = []
    pending: list[tuple[tuple[int, int, int, int], DamagedTileError]] = [((lx, ly, w, h), first)]
    while pending:
        window, error = pending.pop()
        errors.append(error)
        for x, y, rw, rh in _around(window, error.level_box):
            try:
                pixels = slide.read_region((math.ceil(x * ds), math.ceil(y * ds)), level, (rw, rh))
            except DamagedTileError as e:
                pending.append(((x, y, rw, rh), e))
                continue
            out[y - ly : y - ly + rh, x - lx : x - lx + rw] = pixels
    return out, errors


def _around(window: tuple[int, int, int, int], hole: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    """The parts of `window` (x, y, w, h) outside `hole`: bands above and below, then left and right."""
    x, y, w, h = window
    hx0, hy0 = max(x, hole[0]), max(y, hole[1])
    hx1, hy1 = min(x + w, hole[0] + hole[2]), min(y + h, hole[1] + hole[3])
    if hx1 <= hx0 or hy1 <= hy0:
        raise SlideError(f"a damaged tile at {hole} is outside the window {window} whose read it broke")
    parts = [
        (x, y, w, hy0 - y),
        (x, hy1, w, y + h - hy1),
        (x, hy0, hx0 - x, hy1 - hy0),
        (hx1, hy0, x + w - hx1, hy1 - hy0),
    ]
    return [p for p in parts if p[2] > 0 and p[3] > 0]


class SkippingDamage:
    """`slide` with its damaged stored tiles read as white glass (`--skip-damaged`): every other attribute is
    the slide's; each damaged tile met, by a region or the thumbnail, is kept once in `damaged`."""

    def __init__(self, slide) -> None:
        self.slide = slide
        self._met: dict[tuple, DamagedTileError] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self.slide, name)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        pixels, errors = read_around_damage(self.slide, location, level, size)
        self._record(errors)
        return pixels

    def get_thumbnail(self, max_size: tuple[int, int]) -> np.ndarray:
        return self.slide.get_thumbnail(max_size, on_damaged=lambda error: self._record([error]))

    @property
    def damaged(self) -> list[DamagedTileError]:
        with self._lock:
            return list(self._met.values())

    def _record(self, errors: list[DamagedTileError]) -> None:
        with self._lock:
            for e in errors:
                self._met.setdefault((e.level, e.level_box), e)
