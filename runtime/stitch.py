"""Merge tile outputs into the slide's stride-8 label map (after MONAI's mergers).

`crop` keeps each tile's core: every map pixel comes from exactly one tile, no seams, no float state.
`blend` averages overlapping softmax probabilities under a smooth window and argmaxes them. It keeps only
a band of accumulator rows one tile high, because tiles arrive row by row: when the first tile of a new
tile row arrives, the rows above it are final, so they are argmaxed into the uint8 map and the band moves
down. Float memory is (C + 1) x tile/8 x map width, never a whole-slide float map.

Both take tiles in row-major order (the order of `TileGrid`, tiles without tissue left out) and call
`on_final(n)` when label-map rows [0, n) will not change any more, so the mask writer can write them while
inference goes on; `finish()` reports every row final.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from segcls.runtime.tiling import Tile, TileGrid

# keep(box) -> bool (y1 - y0, x1 - x0): which map pixels of box (x0, y0, x1, y1) are tissue.
KeepFn = Callable[[tuple[int, int, int, int]], np.ndarray]
# on_final(n): label-map rows [0, n) are final.
FinalFn = Callable[[int], None]

NOT_TISSUE = 255
STITCH_MODES = ("crop", "blend")


def blend_window(size: int, ramp: int) -> np.ndarray:
    """1-D weights: a raised-cosine ramp over `ramp` px at each end, 1 in between, never 0.

    Two tiles overlapping by `ramp` px have ramps that sum to 1, so blending is a partition of unity
    away from the slide's edges.
    """
    w = np.ones(size, dtype=np.float32)
    if ramp:
        up = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        w[:ramp] = up
        w[size - ramp :] = up[::-1]
    return w


def _ignore(rows: int) -> None:
    """No one is waiting for final rows."""


class CropStitcher:
    def __init__(
        self,
        grid: TileGrid,
        labels: np.ndarray,
        probs: np.ndarray | None = None,
        keep: KeepFn | None = None,
        on_final: FinalFn = _ignore,
    ) -> None:
        self.grid, self.labels, self.probs, self.keep, self.on_final = grid, labels, probs, keep, on_final
        self.row = 0  # tile row of the last tile added: map rows above its core are final

    def add(self, tile: Tile, labels: np.ndarray, probs: np.ndarray | None = None) -> None:
        """`labels` (height/8, width/8) uint8 and `probs` (C, height/8, width/8) of one tile.

        A tile owns the part of its core that lies at least `overlap` px inside its input: the whole core
        for a whole tile, the tissue it was trimmed to for a trimmed one (`pipeline.trim_tiles`). The rest
        of the map is left as it is: 255 until a tile owns it.
        """
        cx0, cy0, cx1, cy1 = self.grid.core(tile)
        if tile.row < self.row:
            raise ValueError(f"tile row {tile.row} came after row {self.row}: rows above were reported final")
        if tile.row > self.row:
            self.row = tile.row
            self.on_final(cy0)
        ox, oy = self.grid.origin(tile)
        m, (h, w) = self.grid.overlap // self.grid.stride, labels.shape
        x0, y0, x1, y1 = max(cx0, ox + m), max(cy0, oy + m), min(cx1, ox + w - m), min(cy1, oy + h - m)
        if x1 <= x0 or y1 <= y0:
            return
        sy, sx = slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox)
        out = labels[sy, sx]
        if self.keep is not None:
            out = np.where(self.keep((x0, y0, x1, y1)), out, NOT_TISSUE)
        self.labels[y0:y1, x0:x1] = out
        if self.probs is not None and probs is not None:
            self.probs[:, y0:y1, x0:x1] = probs[:, sy, sx]

    def finish(self) -> None:
        """Nothing is pending in crop mode: every row is final."""
        self.on_final(self.labels.shape[0])


class BlendStitcher:
    def __init__(
        self,
        grid: TileGrid,
        labels: np.ndarray,
        probs: np.ndarray | None = None,
        keep: KeepFn | None = None,
        num_classes: int = 0,
        on_final: FinalFn = _ignore,
    ) -> None:
        self.grid, self.labels, self.probs, self.keep, self.on_final = grid, labels, probs, keep, on_final
        n = grid.tile // grid.stride
        self.band_height = n
        self.shift = grid.step // grid.stride
        w1 = blend_window(n, min(2 * grid.overlap // grid.stride, n // 2))
        self.window = np.outer(w1, w1)
        width = labels.shape[1]
        self.acc = np.zeros((num_classes, n, width), dtype=np.float32) if num_classes else None
        self.weight = np.zeros((n, width), dtype=np.float32)
        self.row = 0  # tile row the band belongs to
        self.top = -grid.overlap // grid.stride  # map row of the band's first row
        self.finished = False

    def add(self, tile: Tile, labels: np.ndarray, probs: np.ndarray) -> None:
        while self.row < tile.row:
            self._advance()
        if self.acc is None:
            self.acc = np.zeros((probs.shape[0], *self.weight.shape), dtype=np.float32)
        ox = self.grid.origin(tile)[0]
        width = self.weight.shape[1]
        x0, x1 = max(ox, 0), min(ox + self.band_height, width)
        win = self.window[:, x0 - ox : x1 - ox]
        self.acc[:, :, x0:x1] += probs[:, :, x0 - ox : x1 - ox] * win
        self.weight[:, x0:x1] += win

    def finish(self) -> None:
        """Finalise the last band (safe to call twice)."""
        if not self.finished:
            self._flush(self.band_height)
        self.finished = True
        self.on_final(self.labels.shape[0])

    def _advance(self) -> None:
        self._flush(self.shift)
        s = self.shift
        self.weight[:-s] = self.weight[s:]
        self.weight[-s:] = 0
        if self.acc is not None:
            self.acc[:, :-s] = self.acc[:, s:]
            self.acc[:, -s:] = 0
        self.row += 1
        self.top += s

    def _flush(self, rows: int) -> None:
        """Argmax the band's first `rows` rows into the label map."""
        height, width = self.labels.shape
        b0, b1 = max(0, -self.top), min(rows, height - self.top)
        if b1 <= b0 or self.acc is None:
            return
        y0, y1 = self.top + b0, self.top + b1
        weight = self.weight[b0:b1]
        acc = self.acc[:, b0:b1]
        done = weight > 0
        out = np.where(done, np.argmax(acc, axis=0).astype(np.uint8), NOT_TISSUE)
        if self.keep is not None:
            out = np.where(self.keep((0, y0, width, y1)), out, NOT_TISSUE)
        self.labels[y0:y1] = out
        if self.probs is not None:
            self.probs[:, y0:y1] = np.where(done, acc / np.maximum(weight, 1e-12), 0)
        self.on_final(y1)


def make_stitcher(
    mode: str,
    grid: TileGrid,
    labels: np.ndarray,
    probs: np.ndarray | None = None,
    keep: KeepFn | None = None,
    num_classes: int = 0,
    on_final: FinalFn = _ignore,
) -> CropStitcher | BlendStitcher:
    if mode == "crop":
        return CropStitcher(grid, labels, probs, keep, on_final)
    if mode == "blend":
        return BlendStitcher(grid, labels, probs, keep, num_classes, on_final)
    raise ValueError(f"stitch mode must be one of {STITCH_MODES}, got {mode!r}")
