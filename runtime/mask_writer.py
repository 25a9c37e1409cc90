"""The slide-sized output mask: a pyramidal palette BigTIFF that OpenSlide, QuPath and ASAP open.

The network's label map is small (stride 8 of the read resolution); the mask has the slide's full size.
Every tile of every level is upsampled (nearest) straight from the label map when tifffile asks for it,
so memory stays at the label map plus a few tiles whatever the slide size.

A 60k x 60k mask is ~18k tiles of 512 to compress: written serially after inference it took 20 s of a
42 s run. So `MaskWriter` writes while the label map is still being filled: the stitcher reports rows
that are final, level-0 tiles over them are compressed on a few threads and written at once, and while
level 0 waits for rows, tiles of the reduced levels over final rows are compressed into a spool file
(levels are sequential IFDs, level 0 first, so they cannot be written yet). Tiles of a single value
(glass, or one class) are compressed once per tile size and their bytes reused. The file is byte for
byte the one a plain serial write gives.

Why one file of ~400 lines: the writer thread, the in-order compression window (`_InOrder`) and the spool
share one condition variable and one state (rows final, aborted, error); split into modules they would share
them through arguments, and each half is only correct beside the other.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segcls.core.atomic import atomic_path
from segcls.core.tiff import palette_colormap, pyramid_sizes, tile_encoder, write_pyramid
from segcls.runtime.cores import available_cores

UNLABELLED = 255


def _source_index(start: int, count: int, out_size: int, src_size: int, pixel: float | None) -> np.ndarray:
    """Label-map rows (or columns) under output pixels start..start+count of an axis `out_size` long:
    floor(i * src_size / out_size) in exact integer arithmetic, or floor(i / pixel) when one label
    pixel spans `pixel` output pixels."""
    i = np.arange(start, start + count, dtype=np.int64)
    if pixel is None:
        return i * src_size // out_size
    return np.minimum(np.floor(i / pixel).astype(np.int64), src_size - 1)


def upsample_window(
    labels: np.ndarray,
    size: tuple[int, int],
    x: int,
    y: int,
    w: int,
    h: int,
    pixel: tuple[float, float] | None = None,
) -> np.ndarray:
    """Window (x, y, w, h) of `labels` nearest-upsampled to `size` (W, H): out[Y, X] =
    labels[floor(Y * h_l / H), floor(X * w_l / W)], or labels[floor(Y / py), floor(X / px)] with
    `pixel` = (px, py) output pixels per label pixel."""
    rows, cols = _window_index(labels.shape, size, x, y, w, h, pixel)
    return _gather(labels, rows, cols)


def _window_index(
    shape: tuple[int, int], size: tuple[int, int], x: int, y: int, w: int, h: int, pixel: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Label-map rows and columns under window (x, y, w, h) of an output of `size` (see upsample_window)."""
    px, py = pixel if pixel is not None else (None, None)
    return _source_index(y, h, size[1], shape[0], py), _source_index(x, w, size[0], shape[1], px)


def _gather(labels: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    # Gather the few source rows once, then columns, then repeat rows: cheaper than a 2-D fancy index.
    band = labels[rows[0] : rows[-1] + 1][:, cols]
    return band[rows - rows[0]]


class _Aborted(Exception):
    """The writer was stopped before every row was final."""


class MaskWriter:
    """Write `labels` upsampled to `size` as a pyramid while the caller is still filling `labels`.

    The caller fills the label map from the top down and calls `rows_final(n)` once rows [0, n) will not
    change; `finish()` says every row is final, waits for the file and returns the level sizes. Used as a
    context manager, the writer runs on a background thread from `__enter__`, so most of level 0 is on
    disk, and most reduced-level tiles compressed in the spool, when inference ends. Leaving the block
    without `finish()` (an error, Ctrl-C) stops the writer and leaves no file. An error on the writer
    thread is raised by the next `rows_final` or by `finish`. Without the context manager, `finish()`
    writes in the caller's thread.

    Arguments are those of `write_mask`; `workers` threads compress tiles (default: up to 4 cores).
    """

    def __init__(
        self,
        path: str | Path,
        labels: np.ndarray,
        size: tuple[int, int],
        colors: Sequence[Sequence[int]],
        mpp: float | None,
        tile: int = 512,
        classes: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
        *,
        compression: str = "zlib",
        compression_level: int | None = 6,
        downsample: float | None = None,
        workers: int | None = None,
    ) -> None:
        if labels.ndim != 2 or labels.dtype != np.uint8 or labels.size == 0:
            raise ValueError(f"labels must be a non-empty uint8 (h, w) array, got {labels.dtype} {labels.shape}")
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0:
            raise ValueError(f"mask size must be positive, got {size}")
        if len(colors) > UNLABELLED:
            raise ValueError(f"at most {UNLABELLED} classes fit a uint8 palette mask, got {len(colors)}")
        if classes is not None and len(classes) != len(colors):
            raise ValueError(f"{len(classes)} class names but {len(colors)} colours")
        if downsample is not None and not downsample > 0:
            raise ValueError(f"downsample must be > 0, got {downsample}")
        self.path, self.labels, self.size, self.tile = Path(path), labels, (width, height), tile
        self.sizes = pyramid_sizes(width, height, tile)
        # Output px per label px at each level, or None: the label map spans the output exactly.
        self._pixel = [
            None if downsample is None else (downsample * lw / width, downsample * lh / height) for lw, lh in self.sizes
        ]
        self._encode = tile_encoder(compression, compression_level)
        self._uniform: dict[tuple[int, int, int], bytes] = {}  # (value, h, w) -> bytes of that tile
        self.workers = workers or min(4, available_cores())
        self.cpu_seconds = 0.0  # thread CPU time spent upsampling and compressing
        description = json.dumps(
            {
                "segcls": "mask",
                "classes": list(classes) if classes is not None else None,
                "colors": [[int(v) for v in c] for c in colors],
                "unlabelled": UNLABELLED,
                "mpp": mpp,
            }
        )
        self._write_args = {
            "samples": 1,
            "tile": tile,
            "compression": compression,
            "colormap": palette_colormap(colors),
            "mpp": mpp,
            "description": description,
            "progress": progress,
        }
        self._cond = threading.Condition()
        self._final = 0  # label rows [0, _final) are final
        self._aborted = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._done = False
        # The pyramid is written to a temporary file beside `path`; finish() renames it, abort() removes it.
        self._file = contextlib.ExitStack()
        self._tmp: Path | None = None

    # -- the caller's side ----------------------------------------------------------------------------
    def __enter__(self) -> MaskWriter:
        self._tmp = self._file.enter_context(atomic_path(self.path))
        self._thread = threading.Thread(target=self._run, name="segcls-mask", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self._done:
            self.abort()

    def rows_final(self, rows: int) -> None:
        """Label rows [0, rows) will not change any more. Raises the writer's error, if it has one."""
        with self._cond:
            if rows > self._final:
                self._final = rows
                self._cond.notify_all()
        if self._error is not None:
            raise self._error

    def finish(self) -> list[tuple[int, int]]:
        """Every row is final: write what is left, rename the file into place, return the level sizes."""
        self.rows_final(self.labels.shape[0])
        if self._thread is None:
            with atomic_path(self.path) as self._tmp:
                self._write()
        else:
            self._thread.join()
            if self._error is not None:
                self._discard()
                raise self._error
            self._file.close()  # renames the finished file into place
        self._done = True
        return self.sizes

    def abort(self) -> None:
        """Stop writing and leave no file (safe to call twice, and after finish)."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._discard()
        self._done = True

    def _discard(self) -> None:
        """Remove the temporary file (no-op once it was renamed or removed)."""
        self._file.__exit__(_Aborted, _Aborted(), None)

    # -- the writer's side ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._write()
        except _Aborted:
            pass
        except BaseException as e:  # handed to the caller by rows_final / finish
            self._error = e

    def _write(self) -> None:
        parent = self.path.absolute().parent
        with (
            ThreadPoolExecutor(self.workers, thread_name_prefix="segcls-mask-tile") as pool,
            tempfile.TemporaryFile(prefix=f".{self.path.name}.", suffix=".spool", dir=parent) as spool,
        ):
            tiles = _InOrder(self, pool, 2 * self.workers, spool)
            write_pyramid(self._tmp, self.size, tiles, atomic=False, **self._write_args)  # _tmp is ours

    def _last_row(self, request: Request) -> int:
        """The label row under the last output row of a tile."""
        level, _, y, _, h = request
        pixel = self._pixel[level]
        lh = self.sizes[level][1]
        return int(_source_index(y + h - 1, 1, lh, self.labels.shape[0], None if pixel is None else pixel[1])[0])

    def _ready(self, request: Request) -> bool:
        """Whether the label rows under a tile are final."""
        last = self._last_row(request)
        with self._cond:
            if self._aborted:
                raise _Aborted
            return last < self._final

    def _wait(self, request: Request, idle: Callable[[], bool]) -> None:
        """Block until the rows under `request` are final, calling `idle()` (other work; False when it had
        none) meanwhile and sleeping only when it has nothing to do."""
        last = self._last_row(request)
        while True:
            with self._cond:
                if self._aborted:
                    raise _Aborted
                if last < self._final:
                    return
                final = self._final
            if idle():
                continue
            with self._cond:
                while self._final == final and not self._aborted:
                    self._cond.wait()

    def _tile_bytes(self, level: int, x: int, y: int, w: int, h: int) -> bytes:
        """One whole (tile, tile) tile compressed, zero padding past the level's edge as tifffile pads."""
        t0 = time.thread_time()
        rows, cols = _window_index(self.labels.shape, self.sizes[level], x, y, w, h, self._pixel[level])
        block = self.labels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        value = int(block.flat[0])
        key = (value, h, w)
        uniform = bool((block == value).all())
        data = self._uniform.get(key) if uniform else None
        if data is None:
            pixels = np.zeros((self.tile, self.tile), dtype=np.uint8)
            pixels[:h, :w] = _gather(self.labels, rows, cols)
            data = self._encode(pixels)
            if uniform:
                self._uniform[key] = data
        with self._cond:
            self.cpu_seconds += time.thread_time() - t0
        return data


Request = tuple[int, int, int, int, int]  # (level, x, y, w, h) of a tile, as write_pyramid asks for it


class _InOrder:
    """The tile callback write_pyramid calls (level by level, row-major): compresses up to `window` tiles
    ahead on the pool, but only tiles whose label rows are final.

    While level 0 waits for rows, the writer thread compresses tiles of the reduced levels whose rows are
    final already into `spool` (a temporary file: compressed bytes on disk, not in memory), so that
    little is left to do for them when inference ends."""

    def __init__(self, writer: MaskWriter, pool: ThreadPoolExecutor, window: int, spool) -> None:
        self.writer, self.pool, self.window, self.spool = writer, pool, window, spool
        self.requests = self._requests(range(len(writer.sizes)))
        self.next: Request | None = next(self.requests, None)
        self.pending: deque[tuple[Request, Future | None]] = deque()
        # Per reduced level, its next tile to compress ahead; and what was: bytes (uniform) or spool place.
        self.ahead = {level: self._requests([level]) for level in range(1, len(writer.sizes))}
        self.ahead_next = {level: next(it, None) for level, it in self.ahead.items()}
        self.spooled: dict[Request, bytes | tuple[int, int]] = {}

    def _requests(self, levels) -> Iterator[Request]:
        tile = self.writer.tile
        for level in levels:
            w, h = self.writer.sizes[level]
            for y in range(0, h, tile):
                for x in range(0, w, tile):
                    yield (level, x, y, min(tile, w - x), min(tile, h - y))

    def _fill(self, block: bool) -> None:
        """Submit the next tiles whose rows are final; with `block` and nothing pending, wait for one."""
        while self.next is not None and len(self.pending) < self.window:
            if self.next in self.spooled:
                self.pending.append((self.next, None))
            elif block and not self.pending:
                self.writer._wait(self.next, self._compress_ahead)
                self.pending.append((self.next, self.pool.submit(self.writer._tile_bytes, *self.next)))
            elif self.writer._ready(self.next):
                self.pending.append((self.next, self.pool.submit(self.writer._tile_bytes, *self.next)))
            else:
                return
            self.next = next(self.requests, None)

    def _compress_ahead(self) -> bool:
        """Compress one reduced-level tile whose rows are final into the spool; False if none is."""
        for level, request in self.ahead_next.items():
            if request is not None and self.writer._ready(request):
                data = self.writer._tile_bytes(*request)
                if data in self.writer._uniform.values():
                    self.spooled[request] = data
                else:
                    self.spool.seek(0, os.SEEK_END)
                    self.spooled[request] = (self.spool.tell(), len(data))
                    self.spool.write(data)
                self.ahead_next[level] = next(self.ahead[level], None)
                return True
        return False

    def __call__(self, level: int, x: int, y: int, w: int, h: int) -> bytes:
        self._fill(block=True)
        request, future = self.pending.popleft()
        if request != (level, x, y, w, h):
            raise RuntimeError(f"tile {(level, x, y, w, h)} asked out of order (expected {request})")
        self._fill(block=False)
        if future is not None:
            return future.result()
        place = self.spooled.pop(request)
        if isinstance(place, bytes):
            return place
        offset, length = place
        self.spool.flush()
        return os.pread(self.spool.fileno(), length, offset)


def write_mask(
    path: str | Path,
    labels: np.ndarray,
    size: tuple[int, int],
    colors: Sequence[Sequence[int]],
    mpp: float | None,
    tile: int = 512,
    classes: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    compression: str = "zlib",
    compression_level: int | None = 6,
    downsample: float | None = None,
) -> list[tuple[int, int]]:
    """Write `labels` (uint8 (h, w), class index or 255) upsampled to `size` (W, H) as a pyramid.

    By default the label map spans the output exactly; `downsample` (output level-0 pixels per label
    pixel) says instead that it starts at (0, 0) with that pixel size and may overhang the output (a
    label map padded to whole tiles). Class i shows in `colors[i]`, 255 (unlabelled) in white. `mpp` is
    that of the output's level 0 (normally the slide's). Class names and colours go in the
    ImageDescription as JSON. `progress(n)` is called per tile written. Returns the level sizes.

    Deflate (zlib) by default because every TIFF reader opens it; level 6 both compresses better and
    runs faster than level 1 on label maps (long runs). `compression="zstd"` (level None) is ~4x faster
    and smaller; OpenSlide 4, QuPath (Bio-Formats 6.11+) and libtiff built with zstd open it, older
    readers do not. Tiles are compressed on up to 4 threads; `MaskWriter` writes while labels are filled.
    """
    writer = MaskWriter(
        path,
        np.ascontiguousarray(labels),
        size,
        colors,
        mpp,
        tile,
        classes,
        progress,
        compression=compression,
        compression_level=compression_level,
        downsample=downsample,
    )
    return writer.finish()
