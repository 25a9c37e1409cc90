"""Synthetic whole-slide images: a pyramidal JPEG BigTIFF and its ground-truth palette mask.

Every pyramid level is rendered directly from the appearance model at that level's mpp (not downsampled
from the level below), one tile at a time, so memory stays flat whatever the slide size.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcls.core.atomic import check_overwrite
from segcls.core.constants import check_multiple
from segcls.core.errors import SegclsError
from segcls.core.tiff import palette_colormap, pyramid_sizes, write_pyramid
from segcls.synth.appearance import BACKGROUND, CLASSES, COLORS, label_region, render_region

JPEG_QUALITY = 90


def _rgb_tile(level: int, x: int, y: int, w: int, h: int, *, mpp: float, seed: int) -> np.ndarray:
    return render_region(x, y, w, h, mpp * 2**level, seed)[0]


def _label_tile(level: int, x: int, y: int, w: int, h: int, *, mpp: float, seed: int) -> np.ndarray:
    return label_region(x, y, w, h, mpp * 2**level, seed)


class _Prefetch:
    """Tile callback that renders ahead in worker processes, in the order write_pyramid asks for tiles
    (level by level, row-major); the window bounds how many tiles are held at once."""

    def __init__(self, pool: Executor, window: int, render: Callable, sizes: list[tuple[int, int]], tile: int):
        self.pool, self.render = pool, render
        self.requests = (
            (level, x, y, min(tile, w - x), min(tile, h - y))
            for level, (w, h) in enumerate(sizes)
            for y in range(0, h, tile)
            for x in range(0, w, tile)
        )
        self.pending: deque = deque()
        for _ in range(window):
            self._submit()

    def _submit(self) -> None:
        request = next(self.requests, None)
        if request is not None:
            self.pending.append((request, self.pool.submit(self.render, *request)))

    def __call__(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        request, future = self.pending.popleft()
        if request != (level, x, y, w, h):
            raise RuntimeError(f"tile {(level, x, y, w, h)} asked out of order (expected {request})")
        self._submit()
        return future.result()


def make_slide(
    path: str | Path,
    width: int,
    height: int,
    mpp: float = 0.5,
    seed: int = 0,
    mask_path: str | Path | None = None,
    tile: int = 512,
    *,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> None:
    """Write a synthetic slide (and, with `mask_path`, its ground truth) of `width` x `height` px at `mpp`.

    The slide is a tiled JPEG RGB BigTIFF pyramid that OpenSlide opens; the mask is a palette pyramid of
    class indices (255 = no tissue) of the same size, with the class names and colours as JSON in its
    ImageDescription. Both files appear complete or not at all; existing ones are replaced only with
    `overwrite`.
    """
    if width < 1 or height < 1:
        raise SegclsError(f"slide size must be positive, got {width} x {height}")
    check_multiple("--tile", tile)
    if not mpp > 0:
        raise SegclsError(f"--mpp must be > 0, got {mpp}")
    path = Path(path)
    outputs = [path] if mask_path is None else [path, Path(mask_path)]
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise SegclsError(f"mask and slide are the same file: {path}")
    check_overwrite(*outputs, overwrite=overwrite)
    for out in outputs:
        if not out.absolute().parent.is_dir():
            raise SegclsError(f"output folder does not exist: {out.absolute().parent}")

    sizes = pyramid_sizes(width, height, tile)
    tiles = sum(-(-w // tile) * -(-h // tile) for w, h in sizes)
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    bar = tqdm(total=tiles * (2 if mask_path else 1), unit="tile", desc=path.name, disable=not progress)
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        pool = stack.enter_context(ProcessPoolExecutor(workers)) if workers > 1 else None

        def tiles_of(render: Callable) -> Callable:
            render = functools.partial(render, mpp=mpp, seed=seed)
            return render if pool is None else _Prefetch(pool, 4 * workers, render, sizes, tile)

        if mask_path is not None:
            description = {"classes": CLASSES, "colors": COLORS, "background": BACKGROUND, "mpp": mpp, "seed": seed}
            write_pyramid(
                mask_path,
                (width, height),
                tiles_of(_label_tile),
                samples=1,
                tile=tile,
                colormap=palette_colormap(COLORS),
                mpp=mpp,
                description=json.dumps(description),
                progress=bar.update,
            )
        try:
            write_pyramid(
                path,
                (width, height),
                tiles_of(_rgb_tile),
                samples=3,
                tile=tile,
                compression="jpeg",
                compression_level=JPEG_QUALITY,
                mpp=mpp,
                description=json.dumps({"generator": "segcls-synth", "mpp": mpp, "seed": seed, "classes": CLASSES}),
                progress=bar.update,
            )
        except BaseException:
            if mask_path is not None:
                Path(mask_path).unlink(missing_ok=True)
            raise
