"""Extract the tiles of one split once, into memory-mapped .npy files that training reads every epoch.

A cache folder is named by a fingerprint of everything the tiles depend on (file names, sizes and
mtimes, class list, tile size, tile rules, split); when any input changes, a new folder is built and
the old one is left alone (delete `DATASET/.segcls_cache/` at any time to reclaim the space).
Building is two passes so that tiles never pile up in Python lists: masks are read to count and
classify the tiles, then the arrays are preallocated on disk and filled one image at a time.
The folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from segcls.core.constants import UNLABELLED
from segcls.core.errors import DatasetError
from segcls.data.folder import (
    SPLITS,
    DatasetFolder,
    check_same_size,
    image_size,
    read_image,
    read_mask,
)
from segcls.data.tiles import CLS, IGNORED, RULES_VERSION, SEG, grid_kinds, tile_grid

CACHE_FORMAT = 1
_ARRAYS = ("images", "masks", "kinds", "labels", "sources", "positions")


@dataclass(frozen=True)
class TileSet:
    """The kept tiles of one split. The large arrays are read-only memory maps."""

    images: np.ndarray  # (N, T, T, 3) uint8 RGB
    masks: np.ndarray  # (N, T, T) uint8 class indices, 255 = unlabelled (all 255 for labeled/ tiles)
    kinds: np.ndarray  # (N,) uint8 SEG or CLS
    labels: np.ndarray  # (N,) int16 class of a CLS tile, -1 for SEG
    sources: np.ndarray  # (N,) int32 index into source_names
    positions: np.ndarray  # (N, 2) int32 (y, x) of the tile's top-left pixel in its source
    source_names: tuple[str, ...]  # image names, or "labeled/CLASS/FILE" for labeled/ images
    source_labeled: np.ndarray  # (num_sources,) bool: the source is a labeled/ image
    too_small: tuple[str, ...]  # sources smaller than one tile (they give no tiles)
    classes: tuple[str, ...]
    tile: int
    split: str
    path: Path  # the cache folder

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def from_labeled(self) -> np.ndarray:
        """(N,) bool: the tile comes from a labeled/ image (image-level label only)."""
        return self.source_labeled[self.sources]

    def summary(self) -> str:
        seg = int((self.kinds == SEG).sum())
        labeled = int(self.from_labeled.sum())
        cls = len(self) - seg - labeled
        return (
            f"{self.split}: {len(self)} tiles of {self.tile} px from {len(self.source_names)} images "
            f"({seg} seg, {cls} cls from annotated images, {labeled} cls from labeled/)"
            + (f"; {len(self.too_small)} images smaller than one tile" if self.too_small else "")
        )


@dataclass(frozen=True)
class _Source:
    name: str
    image: Path
    mask: Path | None  # None for labeled/ images
    label: int  # class of a labeled/ image, -1 for annotated ones


def build_tileset(
    ds: DatasetFolder,
    split: str,
    tile: int = 128,
    cache_dir: str | Path | None = None,
    *,
    dominant: float = 0.9,
    min_labelled: float = 0.5,
    progress: bool = True,
) -> TileSet:
    """The SEG and CLS tiles of `split` (labeled/ images join "train" only), extracted on first use.

    Cached under `cache_dir/<fingerprint>/` (default `DATASET/.segcls_cache/`); a later call with the
    same inputs opens the cache without decoding any image.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, got {tile}")
    sources = _sources(ds, split)
    key = _fingerprint(ds, split, sources, tile, dominant, min_labelled)
    cache_root = Path(cache_dir) if cache_dir is not None else ds.root / ".segcls_cache"
    folder = cache_root / key
    if not (folder / "meta.json").is_file():
        _build(folder, ds, split, sources, tile, dominant, min_labelled, progress)
    return _open(folder)


def _sources(ds: DatasetFolder, split: str) -> list[_Source]:
    sources = [_Source(name, *ds.images[name], -1) for name in ds.split[split]]
    if split == "train":
        for cls, paths in ds.labeled.items():
            label = ds.classes.index(cls)
            sources += [_Source(f"labeled/{cls}/{p.name}", p, None, label) for p in paths]
    return sources


def _fingerprint(
    ds: DatasetFolder, split: str, sources: list[_Source], tile: int, dominant: float, min_labelled: float
) -> str:
    files = []
    for s in sources:
        for path in (s.image, s.mask):
            if path is None:
                continue
            try:
                st = path.stat()
            except OSError as e:
                raise DatasetError(f"cannot read {path}: {e.strerror}") from None
            files.append([str(path.relative_to(ds.root)), st.st_size, st.st_mtime_ns])
    inputs = {
        "format": CACHE_FORMAT,
        "rules": RULES_VERSION,
        "tile": tile,
        "dominant": dominant,
        "min_labelled": min_labelled,
        "split": split,
        "classes": list(ds.classes),
        "sources": [[s.name, s.label] for s in sources],
        "files": files,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return f"{split}-{tile}px-{digest}"


def _plan(
    ds: DatasetFolder, s: _Source, tile: int, dominant: float, min_labelled: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Kinds, labels and positions of the tiles kept from one source (reads a mask, not its image),
    and whether the source is smaller than one tile."""
    width, height = image_size(s.image)
    too_small = width < tile or height < tile
    if s.mask is None:
        positions = tile_grid(height, width, tile)
        n = len(positions)
        return np.full(n, CLS, np.uint8), np.full(n, s.label, np.int16), positions, too_small
    mask = read_mask(s.mask, ds.num_classes)
    check_same_size(s.mask, mask.shape, s.image, (height, width))
    kinds, labels, positions = grid_kinds(mask, tile, ds.num_classes, dominant, min_labelled)
    keep = kinds != IGNORED
    return kinds[keep].astype(np.uint8), labels[keep], positions[keep], too_small


def _build(
    folder: Path,
    ds: DatasetFolder,
    split: str,
    sources: list[_Source],
    tile: int,
    dominant: float,
    min_labelled: float,
    progress: bool,
) -> None:
    plans, too_small = [], []
    for s in tqdm(sources, desc=f"{split}: reading masks", unit="image", disable=not progress):
        *plan, small = _plan(ds, s, tile, dominant, min_labelled)
        plans.append(plan)
        too_small.append(small)
    n = sum(len(kinds) for kinds, _, _ in plans)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    except OSError as e:
        raise DatasetError(f"cannot write the tile cache in {folder.parent}: {e.strerror} (pass cache_dir)") from None
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (n, tile, tile, 3))
        masks = np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, (n, tile, tile))
        start = 0
        bar = tqdm(total=n, desc=f"{split}: extracting tiles", unit="tile", disable=not progress)
        for s, (kinds, _, positions) in zip(sources, plans, strict=True):
            if not len(kinds):
                continue  # nothing kept: do not decode the image
            stop = start + len(kinds)
            image = read_image(s.image)
            images[start:stop] = _cut(image, positions, tile)
            if s.mask is None:
                masks[start:stop] = UNLABELLED
            else:
                mask = read_mask(s.mask, ds.num_classes)
                check_same_size(s.mask, mask.shape, s.image, image.shape)
                masks[start:stop] = _cut(mask, positions, tile)
            bar.update(stop - start)
            start = stop
        bar.close()
        images.flush()
        masks.flush()
        del images, masks
        np.save(tmp / "kinds.npy", np.concatenate([p[0] for p in plans] or [np.empty(0, np.uint8)]))
        np.save(tmp / "labels.npy", np.concatenate([p[1] for p in plans] or [np.empty(0, np.int16)]))
        np.save(tmp / "sources.npy", np.repeat(np.arange(len(sources), dtype=np.int32), [len(p[0]) for p in plans]))
        np.save(tmp / "positions.npy", np.concatenate([p[2] for p in plans] or [np.empty((0, 2), np.int32)]))
        meta = {
            "format": CACHE_FORMAT,
            "split": split,
            "tile": tile,
            "classes": list(ds.classes),
            "sources": [s.name for s in sources],
            "source_labeled": [s.mask is None for s in sources],
            "too_small": [s.name for s, small in zip(sources, too_small, strict=True) if small],
            "dataset": str(ds.root),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not a concurrent build of the same inputs
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cut(array: np.ndarray, positions: np.ndarray, tile: int) -> np.ndarray:
    """The tiles at `positions` (grid-aligned (y, x)) of an (H, W, ...) array, stacked."""
    rows, cols = array.shape[0] // tile, array.shape[1] // tile
    grid = array[: rows * tile, : cols * tile].reshape(rows, tile, cols, tile, *array.shape[2:]).swapaxes(1, 2)
    return grid[positions[:, 0] // tile, positions[:, 1] // tile]


def _open(folder: Path) -> TileSet:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {meta.get('format')}, expected {CACHE_FORMAT}")
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    except (OSError, ValueError) as e:
        raise DatasetError(f"tile cache {folder} is unreadable ({e}); delete the folder to rebuild it") from None
    return TileSet(
        **arrays,
        source_names=tuple(meta["sources"]),
        source_labeled=np.array(meta["source_labeled"], dtype=bool),
        too_small=tuple(meta["too_small"]),
        classes=tuple(meta["classes"]),
        tile=int(meta["tile"]),
        split=meta["split"],
        path=folder,
    )
