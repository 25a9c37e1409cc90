"""What a viewer serves: slides with their masks, GeoJSON and summaries, opened once, before serving.

Each slide gets a URL key made of its name and a hash of its path, size and modification time (and its
mask's): a request can only name a key in this table, never a path, and a file rewritten by a new
`segcls-infer` run gets new URLs, so browsers may cache tiles for good.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segcls.core.errors import SegclsError, SlideError
from segcls.runtime.slide import open_slide
from segcls.runtime.view.masks import LabelMask, blend, centres
from segcls.runtime.view.tiles import MaskTiles, SlideTiles

THUMBNAIL_SIDE = 320  # px, the longer side of a cohort index thumbnail
THUMBNAIL_OPACITY = 0.45


@dataclass
class ViewItem:
    """One slide as the viewer shows it. `tiles` is None when the slide could not be opened (`error` says
    why); `mask_tiles` is None for a slide without a mask (a failed run)."""

    key: str
    name: str
    slide_path: Path
    mask_path: Path | None = None
    geojson_path: Path | None = None
    summary: dict | None = None
    status: str = "done"  # the cohort's: done | skipped | failed
    error: str = ""
    run: dict = field(default_factory=dict)  # seconds, tiles, tiles_per_s of the cohort row
    tiles: SlideTiles | None = None
    mask_tiles: MaskTiles | None = None
    _areas: dict | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def mpp(self) -> float | None:
        return self.tiles.slide.mpp if self.tiles is not None else None

    def areas_mm2(self) -> dict[str, float | None] | None:
        """Area per class: the summary's (counted on the label map), else counted on the mask."""
        if self.mask_tiles is None:
            return None
        names = self.mask_tiles.classes.names
        from_summary = (self.summary or {}).get("area_mm2")
        if isinstance(from_summary, dict) and set(from_summary) >= set(names):
            return {n: from_summary[n] for n in names}
        with self._lock:
            if self._areas is None:
                self._areas = self.mask_tiles.mask.areas_mm2() or {}
            return self._areas or None

    def slide_class(self) -> dict | None:
        value = (self.summary or {}).get("slide_class")
        return value if isinstance(value, dict) and "class" in value else None

    def close(self) -> None:
        if self.mask_tiles is not None:
            self.mask_tiles.mask.close()
        if self.tiles is not None:
            self.tiles.slide.close()


def item_key(*paths: Path | None) -> str:
    """A URL-safe key: the first file's stem and 8 hex of the files' paths, sizes and modification times."""
    digest = hashlib.sha256()
    for path in paths:
        if path is not None and path.exists():
            stat = path.stat()
            digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", paths[0].stem if paths[0] else "slide").strip("-")[:60] or "slide"
    return f"{stem}-{digest.hexdigest()[:8]}"


def open_item(
    slide: str | Path,
    mask: str | Path | None = None,
    geojson: str | Path | None = None,
    summary: str | Path | dict | None = None,
    *,
    slide_mpp: float | None = None,
) -> ViewItem:
    """Open a slide, its mask and the rest for viewing; a file that is missing or cannot be read raises
    SlideError (one line) before anything is served."""
    slide_path = Path(slide)
    mask_path = Path(mask) if mask is not None else None
    geojson_path = Path(geojson) if geojson is not None else None
    if geojson_path is not None and not geojson_path.is_file():
        raise SlideError(f"GeoJSON not found: {geojson_path}")
    if isinstance(summary, str | Path):
        summary = read_summary(Path(summary))
    opened = open_slide(slide_path, mpp=slide_mpp)
    item = ViewItem(
        item_key(slide_path, mask_path), slide_path.name, slide_path, mask_path, geojson_path, summary,
        tiles=SlideTiles(opened),
    )  # fmt: skip
    try:
        if mask_path is not None:
            label_mask = LabelMask(mask_path)
            try:
                item.mask_tiles = MaskTiles(label_mask, item.tiles.grid, opened.mpp, slide_path.name)
            except BaseException:
                label_mask.close()
                raise
    except BaseException:
        item.close()
        raise
    return item


_MASK_SUFFIXES = (".mask.tif", ".mask.tiff", ".tif", ".tiff")


def beside_mask(mask: Path, suffix: str) -> Path | None:
    """NAME{suffix} next to NAME.mask.tif, where segcls-infer puts a bare --summary or --geojson, if it exists."""
    name = mask.name
    for ending in _MASK_SUFFIXES:
        if name.endswith(ending):
            path = mask.with_name(name.removesuffix(ending) + suffix)
            return path if path.is_file() else None
    return None


def read_summary(path: Path) -> dict:
    """A NAME.summary.json of segcls-infer; SlideError if it is not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SlideError(f"summary not found: {path}") from None
    except (OSError, ValueError) as e:
        raise SlideError(f"cannot read summary {path}: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(data, dict):
        raise SlideError(f"{path}: expected a JSON object (a segcls-infer summary), found {type(data).__name__}")
    return data


def thumbnail(item: ViewItem, side: int = THUMBNAIL_SIDE, opacity: float = THUMBNAIL_OPACITY) -> np.ndarray:
    """The slide at `side` px (longer side) with its mask blended over it at `opacity`, RGB uint8."""
    if item.tiles is None:
        raise SegclsError(f"{item.name} could not be opened: {item.error}")
    slide = item.tiles.slide
    rgb = slide.get_thumbnail((side, side))
    if item.mask_tiles is None:
        return rgb
    h, w = rgb.shape[:2]
    w0, h0 = slide.dimensions
    labels = item.mask_tiles.mask.sample(centres(0, w, w0 / w), centres(0, h, h0 / h), (w0, h0), w0 / w)
    return blend(rgb, labels, item.mask_tiles.classes, opacity)
