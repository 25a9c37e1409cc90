"""A spatial split for datasets too small to split by image: blocks of the images go to validation (and test),
with a margin between them and the training pixels.

One annotated slide, or two, is how most projects start; a split by image (or by slide) then leaves validation
empty. The rule, deterministic for a seed:

- Each image is cut into a grid of square blocks from its top-left corner, 4 training tiles a side (2, or 1,
  when that leaves fewer than 8 blocks with labelled pixels). Only blocks with labelled pixels take part.
- The blocks are shuffled (seeded). For each class in turn, rarest first, that is in at least two blocks still
  in training, the first block holding it goes to validation, so validation shows every class it can without
  taking a class's last block from training. Then blocks go to validation in shuffled order until it holds
  `val` (25 %) of the labelled pixels. Test, when asked for (`test` > 0), is drawn the same way after
  validation. At least one block stays in training; fewer labelled blocks than splits is an error.
- A training image keeps its training blocks. Its held-out blocks are painted white and unlabelled, and every
  labelled pixel within `margin` px (default: one training tile) of a held-out block becomes unlabelled, so no
  training tile reaches into a held-out block: a training tile needs >= 50 % labelled pixels
  (segcls.data.tiles), which a tile narrower than 2 x margin that crosses the margin cannot have.
- Each held-out block becomes an image of its own, cropped to the block (`NAME_val_yY_xX`): the network sees
  no training pixel when it is scored on a held-out block either.

`segcls-prepare qupath` writes this split into the dataset when it has fewer slides than splits;
`segcls-train` and `segcls-eval` derive it (`spatial_dataset`) for a dataset without validation images, in
DATASET/.segcls_cache/blocks-<fingerprint>/, a dataset folder of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from segcls.core.errors import DatasetError
from segcls.data.folder import UNLABELLED, DatasetFolder, load_pair, open_dataset, read_mask

BLOCKS_VERSION = 1  # bump when the rule above changes: derived datasets are rebuilt
BLOCK_TILES = 4  # block side, in training tiles (2 or 1 for small annotations: choose_block_tiles)
MIN_BLOCKS = 8
HELD_OUT = {1: "val", 2: "test"}


@dataclass(frozen=True)
class BlockPlan:
    block: int  # px
    margin: int  # px
    grids: dict[str, np.ndarray]  # image name -> (rows, cols) int8: -1 nothing labelled, 0 train, 1 val, 2 test


def block_counts(mask: np.ndarray, block: int, num_classes: int) -> np.ndarray:
    """(rows, cols, C) labelled pixels of each class in each block of a mask (partial blocks included)."""
    rows, cols = -(-mask.shape[0] // block), -(-mask.shape[1] // block)
    r = np.arange(mask.shape[0]) // block
    c = np.arange(mask.shape[1]) // block
    cell = (r[:, None] * cols + c[None, :]).ravel()
    values = mask.ravel().astype(np.int64)
    keep = values < num_classes
    counts = np.bincount(cell[keep] * num_classes + values[keep], minlength=rows * cols * num_classes)
    return counts.reshape(rows, cols, num_classes)


def coarsen(counts: np.ndarray, k: int) -> np.ndarray:
    """Per-block counts of blocks k times larger: sums of k x k cells (partial at the right and bottom)."""
    rows, cols, c = counts.shape
    padded = np.zeros((-(-rows // k) * k, -(-cols // k) * k, c), dtype=counts.dtype)
    padded[:rows, :cols] = counts
    return padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k, c).sum(axis=(1, 3))


def plan_blocks(
    counts: dict[str, np.ndarray],
    *,
    block: int,
    margin: int,
    val: float = 0.25,
    test: float = 0.0,
    seed: int = 0,
) -> BlockPlan:
    """Which blocks of which image go where (see the module docstring), from each image's (rows, cols, C)
    `block_counts`."""
    if block < 1 or margin < 0 or not (0 < val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(
            f"need block >= 1, margin >= 0, 0 < val, 0 <= test, val + test < 1; got {block, margin, val, test}"
        )
    grids, cells, per = {}, [], []
    for name, image_counts in counts.items():
        labelled = image_counts.sum(axis=2) > 0
        grids[name] = np.where(labelled, 0, -1).astype(np.int8)
        for r, c in zip(*np.nonzero(labelled), strict=True):
            cells.append((name, int(r), int(c)))
            per.append(image_counts[r, c])
    wanted = [(code, share) for code, share in ((1, val), (2, test)) if share > 0]
    if len(cells) < len(wanted) + 1:
        splits = "train, " + " and ".join(HELD_OUT[code] for code, _ in wanted)
        raise DatasetError(
            f"a spatial split into {splits} needs {len(wanted) + 1} blocks with labelled pixels; the images have "
            f"{len(cells)} of {block} px (annotate more, or train with smaller tiles)"
        )
    num_classes = next(iter(counts.values())).shape[2]
    per_block = np.array(per, dtype=np.int64).reshape(len(cells), num_classes)
    present = per_block > 0
    total = per_block.sum()
    order = np.random.default_rng(seed).permutation(len(cells))
    taken = np.zeros(len(cells), dtype=bool)
    for k, (code, share) in enumerate(wanted):
        reserve = len(wanted) - k  # blocks kept back: one for training, one per split still to draw
        chosen: list[int] = []
        for c in np.argsort(present.sum(axis=0), kind="stable"):
            if any(present[i, c] for i in chosen) or (present[~taken, c]).sum() < 2:
                continue
            pick = next((i for i in order if not taken[i] and present[i, c]), None)
            if pick is not None and (~taken).sum() > reserve:
                taken[pick] = True
                chosen.append(int(pick))
        pixels = per_block[chosen].sum()
        for i in order:
            if pixels >= share * total or (~taken).sum() <= reserve:
                break
            if not taken[i]:
                taken[i] = True
                chosen.append(int(i))
                pixels += per_block[i].sum()
        for i in chosen:
            name, r, c = cells[i]
            grids[name][r, c] = code
    return BlockPlan(block, margin, grids)


def choose_block_tiles(tile_counts: dict[str, np.ndarray]) -> int:
    """Block side in tiles: the largest of BLOCK_TILES, 2, 1 that gives >= MIN_BLOCKS labelled blocks (a
    quarter of them is then a fair validation share), else 1."""
    for k in (BLOCK_TILES, 2, 1):
        if sum(int((coarsen(c, k).sum(axis=2) > 0).sum()) for c in tile_counts.values()) >= MIN_BLOCKS:
            return k
    return 1


def cut(
    name: str, image: np.ndarray, mask: np.ndarray, plan: BlockPlan
) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(split, name, image, mask) pieces of one image under `plan`: its training part (if it keeps labelled
    pixels) and one piece per held-out block."""
    grid, b, m = plan.grids[name], plan.block, plan.margin
    held = np.argwhere(grid > 0)
    if not held.size:
        return [("train", name, image, mask)]
    train_image, train_mask = image.copy(), mask.copy()
    pieces = []
    for r, c in held:
        y0, x0 = int(r) * b, int(c) * b
        y1, x1 = min(y0 + b, mask.shape[0]), min(x0 + b, mask.shape[1])
        split = HELD_OUT[int(grid[r, c])]
        pieces.append((split, f"{name}_{split}_y{y0:06d}_x{x0:06d}", image[y0:y1, x0:x1], mask[y0:y1, x0:x1]))
        train_mask[max(0, y0 - m) : y1 + m, max(0, x0 - m) : x1 + m] = UNLABELLED
        train_image[y0:y1, x0:x1] = 255
    if (train_mask != UNLABELLED).any():
        pieces.insert(0, ("train", name, train_image, train_mask))
    return pieces


@dataclass
class SpatialSplit:
    split: dict[str, list[str]]
    pixels: dict[str, np.ndarray]  # split -> labelled pixels per class
    block: int
    margin: int
    seed: int
    held: dict[str, list[tuple[int, int, int, int]]]  # source image -> its held-out blocks (x0, y0, x1, y1)

    def describe(self, classes: tuple[str, ...] | list[str]) -> str:
        """One line: the rule's parameters and the labelled pixels per class of each split."""
        parts = []
        for key in ("train", "val", "test"):
            if self.split[key]:
                counts = ", ".join(f"{c} {int(n):,}" for c, n in zip(classes, self.pixels[key], strict=True))
                parts.append(f"{key} {len(self.split[key])} pieces ({counts} px)")
        return f"spatial split (blocks of {self.block} px, margin {self.margin} px, seed {self.seed}): " + "; ".join(
            parts
        )


def split_images(
    names: list[str],
    read: Callable[[str], tuple[np.ndarray, np.ndarray]],
    write: Callable[[str, np.ndarray, np.ndarray], None],
    num_classes: int,
    *,
    tile: int,
    seed: int = 0,
    val: float = 0.25,
    test: float = 0.0,
    read_mask_only: Callable[[str], np.ndarray] | None = None,
    progress: bool = False,
) -> SpatialSplit:
    """Plan the blocks of the images `names`, then `write` every piece: one image in memory at a time."""
    read_labels = read_mask_only or (lambda name: read(name)[1])
    tile_counts, whole_tiles = {}, 0
    for name in names:
        mask = read_labels(name)
        tile_counts[name] = block_counts(mask, tile, num_classes)
        whole_tiles += (mask.shape[0] // tile) * (mask.shape[1] // tile)
    if not whole_tiles:
        raise DatasetError(f"no image is as large as one training tile of {tile} px")
    k = choose_block_tiles(tile_counts)
    block, margin = k * tile, tile
    counts = {name: coarsen(c, k) for name, c in tile_counts.items()}
    plan = plan_blocks(counts, block=block, margin=margin, val=val, test=test, seed=seed)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    pixels = {k: np.zeros(num_classes, np.int64) for k in split}
    held: dict[str, list[tuple[int, int, int, int]]] = {}
    for name in tqdm(names, desc="spatial split", unit="image", disable=not progress):
        image, mask = read(name)
        for key, piece, piece_image, piece_mask in cut(name, image, mask, plan):
            write(piece, piece_image, piece_mask)
            split[key].append(piece)
            values = piece_mask[piece_mask < num_classes]
            pixels[key] += np.bincount(values, minlength=num_classes)[:num_classes]
        for r, c in np.argwhere(plan.grids[name] > 0):
            y0, x0 = int(r) * block, int(c) * block
            held.setdefault(name, []).append((x0, y0, min(x0 + block, mask.shape[1]), min(y0 + block, mask.shape[0])))
    return SpatialSplit({k: sorted(v) for k, v in split.items()}, pixels, block, margin, seed, held)


def save_pair(root: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(image)).save(root / "images" / f"{name}.png", compress_level=1)
    Image.fromarray(np.ascontiguousarray(mask), mode="L").save(root / "masks" / f"{name}.png")


def spatial_dataset(
    ds: DatasetFolder, *, tile: int, seed: int = 0, progress: bool = True
) -> tuple[DatasetFolder, str | None]:
    """`ds` itself when it has validation images; otherwise a dataset folder derived from it with the spatial
    split of its training images (its test images stay test), built once in DATASET/.segcls_cache/, and the
    one-line warning that says so."""
    if ds.split.get("val") or not ds.split.get("train"):
        return ds, None
    folder = ds.root / ".segcls_cache" / f"blocks-{_fingerprint(ds, tile, seed)}"
    if not (folder / "split.json").is_file():
        _build(ds, folder, tile, seed, progress)
    derived = open_dataset(folder)
    note = json.loads((folder / "blocks.json").read_text())["note"]
    return derived, f"{ds.root} has no validation images: validating on a {note}"


def _fingerprint(ds: DatasetFolder, tile: int, seed: int) -> str:
    files = []
    for name in sorted({n for names in ds.split.values() for n in names}):
        for path in ds.images[name]:
            st = path.stat()
            files.append([str(path.relative_to(ds.root)), st.st_size, st.st_mtime_ns])
    for cls, paths in sorted(ds.labeled.items()):
        files += [[f"labeled/{cls}/{p.name}", p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    inputs = {"version": BLOCKS_VERSION, "tile": tile, "seed": seed, "split": ds.split, "files": files}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _build(ds: DatasetFolder, folder: Path, tile: int, seed: int, progress: bool) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        result = split_images(
            ds.split["train"],
            lambda name: load_pair(ds, name),
            lambda name, image, mask: save_pair(tmp, name, image, mask),
            ds.num_classes,
            tile=tile,
            seed=seed,
            read_mask_only=lambda name: read_mask(ds.images[name][1], ds.num_classes),
            progress=progress,
        )
        for name in ds.split["test"]:  # an explicit test split stays as it is
            for path, sub in zip(ds.images[name], ("images", "masks"), strict=True):
                _link(path, tmp / sub / path.name)
            result.split["test"].append(name)
        for cls, paths in ds.labeled.items():
            (tmp / "labeled" / cls).mkdir(parents=True)
            for path in paths:
                _link(path, tmp / "labeled" / cls / path.name)
        meta = {"classes": list(ds.classes), "colors": [list(c) for c in ds.colors]}
        if ds.mpp is not None:
            meta["mpp"] = ds.mpp
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "blocks.json").write_text(
            json.dumps({"source": str(ds.root), "note": result.describe(ds.classes)}) + "\n"
        )
        (tmp / "split.json").write_text(json.dumps(result.split, indent=1) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "split.json").is_file():  # not another process that built the same folder first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _link(source: Path, target: Path) -> None:
    """A hard link where the file system allows one (no second copy of the pixels), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
