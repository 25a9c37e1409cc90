"""Hash-based procedural noise evaluated at absolute coordinates.

Every value is a pure function of (position, key): any region can be rendered alone, in any tiling, and
gives the same pixels, so tiles never show seams. Lattice values come from an integer hash, not from a
random generator's state.
"""

from __future__ import annotations

import zlib

import numpy as np

_PX = np.uint64(0x9E3779B97F4A7C15)
_PY = np.uint64(0xC2B2AE3D27D4EB4F)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def key(seed: int, name: str) -> int:
    """A 63-bit stream key per (seed, field name): independent fields from one user seed."""
    return ((int(seed) & 0xFFFFFFFF) << 31 ^ zlib.crc32(name.encode())) & 0x7FFFFFFFFFFFFFFF


def hash01(ix: np.ndarray, iy: np.ndarray, k: int) -> np.ndarray:
    """Uniform float32 in [0, 1) for each integer lattice point (splitmix64 finaliser)."""
    ix, iy = np.atleast_1d(ix), np.atleast_1d(iy)
    h = (np.asarray(ix, dtype=np.int64).astype(np.uint64) * _PX) ^ (
        np.asarray(iy, dtype=np.int64).astype(np.uint64) * _PY
    )
    h ^= np.uint64(k)
    h ^= h >> np.uint64(31)
    h *= _M1
    h ^= h >> np.uint64(29)
    h *= _M2
    h ^= h >> np.uint64(32)
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _smooth(t: np.ndarray) -> np.ndarray:
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def value_noise(u: np.ndarray, v: np.ndarray, k: int) -> np.ndarray:
    """Smooth value noise in [0, 1] at lattice coordinates (u, v); u and v broadcast together.

    The lattice values of the bounding box are hashed once and gathered, so the cost per pixel is four
    lookups whatever the pattern; a row vector u with a column vector v (an axis-aligned grid) is cheapest.
    """
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = _smooth(u - iu), _smooth(v - iv)
    iu, iv = iu.astype(np.int64), iv.astype(np.int64)
    u0, v0 = int(iu.min()), int(iv.min())
    nu, nv = int(iu.max()) - u0 + 2, int(iv.max()) - v0 + 2
    lattice = hash01(np.arange(u0, u0 + nu)[None, :], np.arange(v0, v0 + nv)[:, None], k)
    iu -= u0
    iv -= v0
    if iu.ndim == 2 and iv.ndim == 2 and iu.shape[0] == 1 and iv.shape[1] == 1:
        # Separable grid: interpolate the few lattice rows along x, then copy whole rows along y.
        c = iu[0]
        rows = lattice[:, c] + (lattice[:, c + 1] - lattice[:, c]) * fu
        top = rows[iv[:, 0]]
        return top + (rows[iv[:, 0] + 1] - top) * fv
    flat = lattice.ravel()
    idx = iv * nu + iu
    a = flat[idx] + (flat[idx + 1] - flat[idx]) * fu
    b = flat[idx + nu] + (flat[idx + nu + 1] - flat[idx + nu]) * fu
    return a + (b - a) * fv


def fbm(xs: np.ndarray, ys: np.ndarray, scale: float, k: int, *, octaves: int, mpp: float) -> np.ndarray:
    """Fractal noise in about [-1, 1] on the grid xs (row) x ys (column), in microns.

    Octaves finer than about a pixel fade out instead of aliasing, so a region rendered at a coarser mpp
    looks like a blurred version of the same tissue rather than a different one.
    """
    total = np.zeros(np.broadcast_shapes(xs.shape, ys.shape), dtype=np.float32)
    norm = 0.0
    for octave in range(octaves):
        s = scale / 2**octave
        amp = 0.5**octave
        norm += amp
        fade = min(1.0, max(0.0, s / mpp - 0.5))
        if fade > 0:
            total += (amp * fade * 2) * (value_noise(xs / s, ys / s, k + octave) - 0.5)
    return total / norm


def cells(xs: np.ndarray, ys: np.ndarray, cell: float, k: int, n: int) -> tuple:
    """Jittered-grid cells: (dx, dy, attrs) per pixel of the grid xs (row) x ys (column), in microns.

    (dx, dy) is the pixel's offset from its cell's top-left corner; attrs (h, w, n) are n uniform values
    that belong to the cell (its object's position, size, presence, ...), the same in every tiling.
    """
    cx, cy = np.floor(xs / cell), np.floor(ys / cell)
    dx, dy = (xs - cx * cell).astype(np.float32), (ys - cy * cell).astype(np.float32)
    cx, cy = cx.astype(np.int64)[0], cy.astype(np.int64)[:, 0]
    x0, y0 = int(cx.min()), int(cy.min())
    lx = np.arange(x0, int(cx.max()) + 1)[None, :]
    ly = np.arange(y0, int(cy.max()) + 1)[:, None]
    lattice = np.stack([hash01(lx, ly, k + j) for j in range(n)], axis=-1)
    return dx, dy, lattice[cy - y0][:, cx - x0]
