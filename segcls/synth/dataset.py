"""A synthetic dataset in the segcls folder format: masked images plus image-level-labelled images.

Each masked image is a region of its own synthetic slide (own seed: own layout and stain), so images
differ the way sections from different patients do; labeled/ images are single-class regions at the
same mpp, the cheap labels the method learns from.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from segcls.core.atomic import atomic_folder
from segcls.core.constants import check_multiple
from segcls.core.errors import SegclsError
from segcls.data.tiles import CLS, SEG, grid_kinds
from segcls.synth.appearance import BACKGROUND, CLASSES, COLORS, STAINS, label_region, render_region

MIN_TISSUE = 0.75  # a masked image is redrawn elsewhere (up to 20 draws) until this much is tissue
_SPAN = 40_000  # pixels: masked images are drawn from [0, _SPAN)^2 of their slide


def tile_kinds(mask: np.ndarray, tile: int = 128) -> tuple[int, int]:
    """(seg, cls) counts of the grid tiles of `mask` under the training tile rule (segcls.data.tiles)."""
    kinds, _, _ = grid_kinds(mask, tile, len(CLASSES))
    return int((kinds == SEG).sum()), int((kinds == CLS).sum())


def _check(images: int, size: int, mpp: float, labeled: int, labeled_size: int, holdout: int | None) -> None:
    if images < 1:
        raise SegclsError(f"--images must be >= 1, got {images}")
    if holdout is not None and not (holdout >= 1 and 2 * holdout < images):
        raise SegclsError(f"--holdout must be >= 1 and leave training images ({images} in all), got {holdout}")
    if labeled < 0:
        raise SegclsError(f"--labeled must be >= 0, got {labeled}")
    for name, value in (("--size", size), ("--labeled-size", labeled_size)):
        check_multiple(name, value)
    if not mpp > 0:
        raise SegclsError(f"--mpp must be > 0, got {mpp}")


def _save(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, compress_level=3)


def _masked_job(root: Path, name: str, size: int, mpp: float, seed: int, draws: np.ndarray, stain: str) -> None:
    for x, y in draws:
        labels = label_region(int(x), int(y), size, size, mpp, seed)
        if np.mean(labels != BACKGROUND) >= MIN_TISSUE:
            break
    rgb, labels = render_region(int(x), int(y), size, size, mpp, seed, stain=stain)
    _save(root / "images" / f"{name}.png", rgb)
    _save(root / "masks" / f"{name}.png", labels)


def _labeled_job(
    root: Path, name: str, k: int, size: int, mpp: float, seed: int, draws: np.ndarray, stain: str
) -> None:
    x, y = draws[0]
    rgb, _ = render_region(int(x), int(y), size, size, mpp, seed, background=False, tissue_class=k, stain=stain)
    _save(root / "labeled" / CLASSES[k] / f"{name}.png", rgb)


def make_dataset(
    out: str | Path,
    *,
    images: int = 48,
    size: int = 512,
    mpp: float = 2.0,
    seed: int = 0,
    labeled: int = 16,
    labeled_size: int = 256,
    holdout: int | None = None,
    stain: str = "standard",
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a dataset folder at `out` (which must not exist, or be empty, or with `overwrite` is replaced)
    and return its path.

    `images` masked images of `size` px and `labeled` single-class images of `labeled_size` px per class,
    all at `mpp` microns per pixel. With `holdout`, a split.json puts that many images in val and in test
    (seeded) and the rest in train, instead of the folder format's default 50/25/25: more training images
    for the same validation cost. The folder appears complete or not at all.
    """
    _check(images, size, mpp, labeled, labeled_size, holdout)
    if stain not in STAINS:
        raise SegclsError(f"--stain must be one of {', '.join(STAINS)}, got {stain!r}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    masked = [(f"img_{i:03d}", int(rng.integers(2**31)), rng.integers(0, _SPAN, size=(20, 2))) for i in range(images)]
    single = [
        (f"{CLASSES[k]}_{j:03d}", k, int(rng.integers(2**31)), rng.integers(0, _SPAN, size=(1, 2)))
        for k in range(len(CLASSES))
        for j in range(labeled)
    ]
    with atomic_folder(out, overwrite) as tmp:
        for sub in ["images", "masks", *(f"labeled/{c}" for c in CLASSES)]:
            (tmp / sub).mkdir(parents=True)
        workers = workers or min(len(os.sched_getaffinity(0)), 8)
        with ProcessPoolExecutor(workers) as pool:
            jobs = [pool.submit(_masked_job, tmp, n, size, mpp, s, d, stain) for n, s, d in masked]
            jobs += [pool.submit(_labeled_job, tmp, n, k, labeled_size, mpp, s, d, stain) for n, k, s, d in single]
            for job in tqdm(as_completed(jobs), total=len(jobs), desc="images", unit="img", disable=not progress):
                job.result()
        meta = {"classes": list(CLASSES), "colors": [list(c) for c in COLORS], "mpp": mpp}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        if holdout is not None:
            split = holdout_split([name for name, _, _ in masked], holdout, seed)
            (tmp / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    return out


def holdout_split(names: list[str], holdout: int, seed: int) -> dict[str, list[str]]:
    """`holdout` images each in val and test, the rest in train, by a seeded permutation of the names."""
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    return {
        "train": sorted(order[2 * holdout :]),
        "val": sorted(order[:holdout]),
        "test": sorted(order[holdout : 2 * holdout]),
    }


def dataset_tile_kinds(root: str | Path, tile: int = 128) -> tuple[int, int]:
    """(seg, cls) tile counts over all masks of a dataset folder (labeled/ images not included)."""
    seg = cls = 0
    for path in sorted(Path(root, "masks").glob("*.png")):
        s, c = tile_kinds(np.asarray(Image.open(path)), tile)
        seg, cls = seg + s, cls + c
    return seg, cls
