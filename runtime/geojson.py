"""Class regions as QuPath annotations: a GeoJSON FeatureCollection in level-0 pixel coordinates.

By default each class is one MultiPolygon feature, as QuPath's pixel classifier creates them ("Create
objects" without "Split objects"): a noisy slide gives a handful of annotations instead of tens of
thousands, which QuPath handles far better. `per_region` writes one Polygon feature per region instead.

Each 4-connected region of a class becomes one polygon whose rings run along pixel borders, so its area
is exactly the region's pixel count (times downsample squared); only corners are kept. Where pixels meet
only at a corner, rings touch there but never cross and no ring touches itself: two regions stay two
polygons, and a region touching itself gets a hole that meets its shell at that point, which keeps every
polygon valid for QuPath (JTS; 0.6 rejects invalid polygons). Regions of one class touch each other at
most at a corner point, which a valid MultiPolygon allows. Exterior rings are counter-clockwise
and holes clockwise in (x, y) as written (RFC 7946). The tracing is vectorised with numpy, so a label
map with millions of boundary edges takes seconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from segcls.core.atomic import atomic_path

# Edge directions in image coordinates (x right, y down); d + 1 is a right turn on screen.
_DX = np.array([1, 0, -1, 0])
_DY = np.array([0, 1, 0, -1])


def _boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed unit edges around `mask` with the region on the right (on screen): (x, y, d) of starts."""
    p = np.pad(mask, 1)
    inner = p[1:-1, 1:-1]
    xs, ys, ds = [], [], []
    # (neighbour that must be outside, offset of the edge's start from the pixel's top-left corner)
    for d, (neighbour, (ox, oy)) in enumerate(
        (
            (p[:-2, 1:-1], (0, 0)),  # top edge, heading +x
            (p[1:-1, 2:], (1, 0)),  # right edge, heading +y
            (p[2:, 1:-1], (1, 1)),  # bottom edge, heading -x
            (p[1:-1, :-2], (0, 1)),  # left edge, heading -y
        )
    ):
        r, c = np.nonzero(inner & ~neighbour)
        xs.append(c + ox)
        ys.append(r + oy)
        ds.append(np.full(len(r), d, dtype=np.int64))
    return np.concatenate(xs).astype(np.int64), np.concatenate(ys).astype(np.int64), np.concatenate(ds)


class _Rings(NamedTuple):
    """Rings of one mask, concatenated: corners x[starts[i]:starts[i + 1]] belong to ring i."""

    x: np.ndarray
    y: np.ndarray
    starts: np.ndarray  # len = rings + 1
    area: np.ndarray  # signed: > 0 exterior, < 0 hole
    row: np.ndarray  # a region pixel on each ring
    col: np.ndarray


def _region_pixel(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the region pixel on the right of the edges starting at (x, y) heading d."""
    return y - (d >= 2), x - ((d == 1) | (d == 2))


def _trace_rings(regions: np.ndarray) -> _Rings:
    """All rings around the regions of a label image (0 = outside), corners only, in walking order."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    x, y, d = _boundary_edges(regions > 0)
    n = len(d)
    stride = regions.shape[1] + 1
    keys = (y * stride + x) * 4 + d
    order = np.argsort(keys)
    x, y, d, keys = x[order], y[order], d[order], keys[order]

    # The next edge starts where this one ends. Only one does, except at a saddle (two region pixels
    # meeting diagonally): there turn left (go round the far pixel too) if both are the same region,
    # which makes a hole that touches the shell at a point, and right (stay with this pixel) if not.
    end_x, end_y = x + _DX[d], y + _DY[d]
    end = (end_y * stride + end_x) * 4
    targets = []
    for turn in (1, 0, 3):  # right, straight, left
        want = end + (d + turn) % 4
        at = np.minimum(np.searchsorted(keys, want), n - 1)
        targets.append((at, keys[at] == want))
    (right, has_right), (straight, has_straight), (left, has_left) = targets
    nxt = np.where(has_right, right, np.where(has_straight, straight, left))
    saddle = np.flatnonzero(has_right & has_left)
    if len(saddle):
        row, col = _region_pixel(x[saddle], y[saddle], d[saddle])
        across_row, across_col = 2 * end_y[saddle] - row - 1, 2 * end_x[saddle] - col - 1
        same = regions[row, col] == regions[across_row, across_col]
        nxt[saddle[same]] = left[saddle[same]]

    # Split the successor permutation into cycles (rings), then rank edges along each ring by pointer
    # jumping from the ring's lowest edge index, cut just before it.
    arange = np.arange(n)
    graph = csr_matrix((np.ones(n, dtype=np.int8), (arange, nxt)), shape=(n, n))
    _, ring = connected_components(graph, directed=True, connection="weak")
    _, head = np.unique(ring, return_index=True)
    pred = np.empty(n, dtype=np.int64)
    pred[nxt] = arange
    succ = nxt.copy()
    succ[pred[head]] = pred[head]
    dist = (succ != arange).astype(np.int64)
    while True:
        jumped = succ[succ]
        if np.array_equal(jumped, succ):
            break
        dist += dist[succ]
        succ = jumped
    walk = np.lexsort((-dist, ring))  # ring by ring, from the head along the ring
    x, y, d, ring = x[walk], y[walk], d[walk], ring[walk]

    # Keep corners only: edges whose direction differs from the edge before them on the same ring.
    first = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    last = np.r_[first[1:], n] - 1
    previous = np.r_[-1, d[:-1]]
    previous[first] = d[last]
    corner = d != previous
    # The region pixel right of each ring's first edge (which is a corner: rings start at their lowest
    # key, a top-left corner) names the region the ring belongs to.
    row, col = _region_pixel(x[first], y[first], d[first])
    cx, cy, cring = x[corner], y[corner], ring[corner]
    starts = np.r_[np.flatnonzero(np.r_[True, cring[1:] != cring[:-1]]), len(cring)]
    after = np.arange(1, len(cx) + 1)
    after[starts[1:] - 1] = starts[:-1]
    cross = cx * cy[after] - cx[after] * cy
    area = 0.5 * np.add.reduceat(cross, starts[:-1]) if len(cx) else np.zeros(0)
    return _Rings(cx, cy, starts, area, row, col)


def _class_rings(
    labels: np.ndarray, cls: int, downsample: float, min_pixels: int, limit: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The rings of one class: (corners (N, 2) in level-0 px, ring starts, region of each ring, ring order
    by region with each exterior first), or None when the class has no region of `min_pixels`."""
    from scipy import ndimage

    mask = labels == cls
    if not mask.any():
        return None
    regions, count = ndimage.label(mask)
    if min_pixels > 1:
        small = np.flatnonzero(np.bincount(regions.ravel(), minlength=count + 1) < min_pixels)
        small = small[small > 0]
        if len(small):
            regions[np.isin(regions, small)] = 0
            if not regions.any():
                return None
    rings = _trace_rings(regions)
    xy = np.stack([rings.x, rings.y], axis=1)
    xy = xy * int(downsample) if float(downsample).is_integer() else np.round(xy * float(downsample), 2)
    if limit is not None:
        xy = np.minimum(xy, np.asarray(limit, dtype=xy.dtype))
    region = regions[rings.row, rings.col]
    return xy, rings.starts, region, np.lexsort((rings.area < 0, region))


def label_polygons(
    labels: np.ndarray,
    num_classes: int,
    downsample: float = 1.0,
    *,
    min_pixels: int = 0,
    limit: tuple[float, float] | None = None,
) -> list[tuple[int, list[list[list[float]]]]]:
    """(class, [exterior, *holes]) per 4-connected region of at least `min_pixels` label pixels; rings are
    closed lists of [x, y] corners of label pixels, multiplied by `downsample` and, with `limit` (w, h),
    clipped to it. Non-integral coordinates are rounded to 0.01 px, QuPath's precision: the rounding is
    monotonic, so it keeps the rectilinear rings valid."""
    polygons = []
    for cls in range(num_classes):
        found = _class_rings(labels, cls, downsample, min_pixels, limit)
        if found is None:
            continue
        xy, starts, region, order = found
        points = xy.tolist()
        by_region: dict[int, list] = {}
        for i in order.tolist():
            s, e = starts[i], starts[i + 1]
            by_region.setdefault(int(region[i]), []).append([*points[s:e], points[s]])
        polygons.extend((cls, by_region[k]) for k in sorted(by_region))
    return polygons


def _polygons_text(xy: np.ndarray, starts: np.ndarray, region: np.ndarray, order: np.ndarray) -> list[str]:
    """The JSON text of each region's polygon coordinates, `[[[x,y],...],...]`, in region order: what
    `json.dumps(label_polygons(...))` would write, built from numpy without a Python list per corner
    (each distinct coordinate value is formatted once)."""
    values, inverse = np.unique(xy, return_inverse=True)
    text = np.array([str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values.tolist()], object)
    t = text[inverse.reshape(xy.shape)]
    points = ("[" + t[:, 0] + "," + t[:, 1] + "]").tolist()
    polygons, rings, current = [], [], None
    for i in order.tolist():
        if region[i] != current and rings:
            polygons.append("[" + ",".join(rings) + "]")
            rings = []
        current = region[i]
        s, e = starts[i], starts[i + 1]
        rings.append("[" + ",".join(points[s:e]) + "," + points[s] + "]")
    if rings:
        polygons.append("[" + ",".join(rings) + "]")
    return polygons


def write_geojson(
    path: str | Path,
    labels: np.ndarray,
    classes: Sequence[str],
    colors: Sequence[Sequence[int]],
    downsample: float,
    *,
    per_region: bool = False,
    min_area: float = 0.0,
    size: tuple[int, int] | None = None,
) -> int:
    """Write `labels` (255 = none) as QuPath annotations and return how many: one MultiPolygon per class
    (what QuPath's pixel classifier creates), or with `per_region` one Polygon per connected region.

    `downsample` is level-0 pixels per label pixel: coordinates are level-0 pixels. Regions under
    `min_area` level-0 px² are left out. `size` (level-0 (w, h)) crops a label map that overhangs the
    slide (whole tiles) to the slide, so every coordinate lies on the image.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label map, got shape {labels.shape}")
    if len(colors) != len(classes):
        raise ValueError(f"{len(classes)} classes but {len(colors)} colours")
    if size is not None:
        # a last row/column that would start within QuPath's 0.01 px of the border is dropped, so no ring
        # collapses to zero width when clipped to the border
        labels = labels[: math.ceil((size[1] - 0.01) / downsample), : math.ceil((size[0] - 0.01) / downsample)]
    min_pixels = math.ceil(min_area / downsample**2 - 1e-9) if min_area > 0 else 0
    features = []
    for cls in range(len(classes)):
        found = _class_rings(labels, cls, downsample, min_pixels, size)
        if found is None:
            continue
        properties = {
            "objectType": "annotation",
            "classification": {"name": str(classes[cls]), "color": [int(v) for v in colors[cls]]},
        }
        tail = ',"properties":' + json.dumps(properties, separators=(",", ":")) + "}"
        polygons = _polygons_text(*found)
        if per_region:
            features += [
                '{"type":"Feature","geometry":{"type":"Polygon","coordinates":' + p + "}" + tail for p in polygons
            ]
        else:
            geometry = '{"type":"MultiPolygon","coordinates":[' + ",".join(polygons) + "]}"
            features.append('{"type":"Feature","geometry":' + geometry + tail)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write('{"type":"FeatureCollection","features":[')
        for i, feature in enumerate(features):
            f.write("," + feature if i else feature)
        f.write("]}")
    return len(features)
