"""The reader feed: tiles read ahead on reader threads into a fixed ring of batch buffers, handed to the
backend batch by batch, in order.

Readers decode single tiles straight into the ring, so many readers can fill one batch (a GPU wants hundreds
of tiles per second) and memory does not grow with the reader count: (3 + prefetch) x batch x tile^2 x 3
bytes, allocated once. A buffer is refilled only after its batch's outputs came back (`TileFeed.done`):
`Backend.infer_stream` may take batch k+1 before it returns batch k, and the inputs it holds must stay
intact.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from segcls.core.errors import SegclsError, SlideError
from segcls.runtime.tiling import ReadPlan, Tile, read_tile


class TileFeed:
    """Iterate it for the pixel batches of `tiles` (uint8 (B, H, W, 3), consecutive tiles of one size, at most
    `batch` a batch); call `done()` once the outputs of the oldest batch handed out have come back."""

    def __init__(
        self, slide, read: ReadPlan, tiles: list[Tile], batch: int, tile: int, readers: int, prefetch: int = 1
    ) -> None:
        self.slide, self.read = slide, read
        self.read_seconds = 0.0  # reading and decoding, summed over the reader threads
        self.wait_seconds = 0.0  # the consumer waiting for reads
        self._batches = batch_tiles(tiles, batch)
        self._shape = (min(batch, max(len(tiles), 1)), tile, tile, 3)
        self._free = [np.empty(self._shape, dtype=np.uint8) for _ in range(3 + prefetch)]
        self._pool = ThreadPoolExecutor(readers, thread_name_prefix="segcls-read")
        self._pending: deque[tuple[list[Tile], np.ndarray, np.ndarray, list[Future]]] = deque()  # being read
        self._in_flight: deque[tuple[list[Tile], np.ndarray]] = deque()  # handed out, outputs not back yet

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            while self._free and (batch := next(self._batches, None)) is not None:
                self._start(batch, self._free.pop())
            if not self._pending and (batch := next(self._batches, None)) is not None:
                # Only a backend holding more batches than the ring has gets here: one more buffer.
                self._start(batch, np.empty(self._shape, dtype=np.uint8))
            if not self._pending:
                return
            tiles, buffer, pixels, reads = self._pending.popleft()
            t0 = time.perf_counter()
            self.read_seconds += sum(f.result() for f in reads)
            self.wait_seconds += time.perf_counter() - t0
            self._in_flight.append((tiles, buffer))
            yield pixels

    def done(self) -> list[Tile]:
        """The tiles of the oldest batch handed out, whose outputs came back; its buffer is free again."""
        tiles, buffer = self._in_flight.popleft()
        self._free.append(buffer)
        return tiles

    def close(self) -> None:
        """Stop reading: queued reads are cancelled, running ones awaited."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> TileFeed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self, tiles: list[Tile], buffer: np.ndarray) -> None:
        # The batch's pixels: the front of the buffer as one contiguous (B, H, W, 3) array.
        n, h, w = len(tiles), tiles[0].height, tiles[0].width
        pixels = buffer.reshape(-1)[: n * h * w * 3].reshape(n, h, w, 3)
        reads = [self._pool.submit(self._read_into, pixels, i, t) for i, t in enumerate(tiles)]
        self._pending.append((tiles, buffer, pixels, reads))

    def _read_into(self, pixels: np.ndarray, i: int, t: Tile) -> float:
        t0 = time.perf_counter()
        pixels[i] = read_network_tile(self.slide, self.read, t)
        return time.perf_counter() - t0


def batch_tiles(tiles: list[Tile], size: int) -> Iterator[list[Tile]]:
    """Runs of consecutive tiles of one input size, `size` at most: each batch is one array."""
    batch: list[Tile] = []
    for t in tiles:
        if batch and (len(batch) == size or (t.width, t.height) != (batch[0].width, batch[0].height)):
            yield batch
            batch = []
        batch.append(t)
    if batch:
        yield batch


def read_batches(slide, read: ReadPlan, tiles: list[Tile], size: int) -> list[np.ndarray]:
    """`tiles` read into memory as the feed batches them (for timing a backend on its own)."""
    return [np.stack([read_network_tile(slide, read, t) for t in batch]) for batch in batch_tiles(tiles, size)]


def read_network_tile(slide, read: ReadPlan, t: Tile) -> np.ndarray:
    """The pixels of one network input; a reader library's own error becomes one SlideError line."""
    try:
        return read_tile(slide, read, t.x, t.y, t.width, t.height)
    except SegclsError:
        raise
    except Exception as e:  # a reader library's own error for a damaged region
        where = f"tile at read-frame ({t.x}, {t.y}), level {read.level}"
        raise SlideError(f"cannot read {where} of {getattr(slide, 'path', 'the slide')}: {e}") from None
