import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from segcls.runtime.geojson import label_polygons, write_geojson
from segcls.runtime.overlay import write_overlay

CLASSES = ["normal", "benign", "in situ", "invasive"]
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]


def ring_area(ring) -> float:
    xy = np.asarray(ring, dtype=float)
    assert (xy[0] == xy[-1]).all(), "ring not closed"
    x, y = xy[:-1, 0], xy[:-1, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def polygon_area(rings) -> float:
    return sum(ring_area(r) for r in rings)


def test_l_shape_and_shape_with_hole(tmp_path):
    labels = np.full((12, 14), 255, np.uint8)
    labels[1:8, 1:3] = 0  # L: a vertical bar ...
    labels[6:8, 3:7] = 0  # ... and its foot
    labels[2:11, 8:13] = 3  # a block ...
    labels[4:7, 10:12] = 255  # ... with a hole
    n = write_geojson(tmp_path / "out.geojson", labels, CLASSES, COLORS, downsample=16, per_region=True)
    data = json.loads((tmp_path / "out.geojson").read_text())
    assert n == 2 and data["type"] == "FeatureCollection" and len(data["features"]) == 2
    by_class = {f["properties"]["classification"]["name"]: f for f in data["features"]}
    assert set(by_class) == {"normal", "invasive"}  # 255 gives no feature

    l_shape = by_class["normal"]
    assert l_shape["type"] == "Feature" and l_shape["properties"]["objectType"] == "annotation"
    assert l_shape["properties"]["classification"]["color"] == list(COLORS[0])
    (exterior,) = l_shape["geometry"]["coordinates"]
    assert len(exterior) == 6 + 1  # six corners, collinear points dropped, closed
    assert polygon_area([exterior]) == (labels == 0).sum() * 16**2
    assert {tuple(p) for p in exterior} == {(16, 16), (48, 16), (48, 96), (112, 96), (112, 128), (16, 128)}

    holed = by_class["invasive"]["geometry"]
    assert holed["type"] == "Polygon" and len(holed["coordinates"]) == 2
    outer, hole = holed["coordinates"]
    assert ring_area(outer) > 0 > ring_area(hole)  # RFC 7946 orientation in (x, y)
    assert ring_area(hole) == -3 * 2 * 16**2
    assert polygon_area(holed["coordinates"]) == (labels == 3).sum() * 16**2
    assert all(isinstance(v, int) for p in outer for v in p)


def assert_simple(rings) -> None:
    """No ring visits a corner twice: rings may touch each other at a point, never themselves."""
    for ring in rings:
        corners = [tuple(p) for p in ring[:-1]]
        assert len(set(corners)) == len(corners), "self-touching ring"


def test_diagonal_contacts_give_valid_polygons_and_areas_match_everywhere():
    labels = np.array(
        [
            [0, 1, 1, 1],
            [1, 0, 1, 1],
            [1, 1, 1, 0],
            [1, 1, 0, 0],
        ],
        dtype=np.uint8,
    )
    polygons = label_polygons(labels, 2)
    assert sum(c == 0 for c, _ in polygons) == 3  # 4-connected: pixels meeting at a corner are separate
    (ones,) = [rings for c, rings in polygons if c == 1]
    # (1, 1) is enclosed by class 1 except at its top-left corner: a hole touching the shell there.
    assert len(ones) == 2 and ring_area(ones[1]) == -1
    assert polygon_area(ones) == (labels == 1).sum()
    for _, rings in polygons:
        assert_simple(rings)

    rng = np.random.default_rng(0)
    for _ in range(30):
        lab = ndimage.median_filter(rng.integers(0, 3, (25, 31)), 3).astype(np.uint8)
        lab[rng.random(lab.shape) < 0.08] = 255
        for ds in (1, 2.5):
            polys = label_polygons(lab, 3, ds)
            for cls in range(3):
                regions, count = ndimage.label(lab == cls)
                areas = sorted(polygon_area(r) for c, r in polys if c == cls)
                expected = sorted(np.bincount(regions.ravel())[1:] * ds * ds)
                assert len(areas) == count
                np.testing.assert_allclose(areas, expected)
            for _, rings in polys:
                assert_simple(rings)
                assert ring_area(rings[0]) > 0 and all(ring_area(r) < 0 for r in rings[1:])


def test_empty_label_map_writes_an_empty_collection(tmp_path):
    path = tmp_path / "empty.geojson"
    assert write_geojson(path, np.full((5, 5), 255, np.uint8), CLASSES, COLORS, 8.0) == 0
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}


def test_overlay_png_blends_classes_and_keeps_unlabelled(tmp_path):
    thumbnail = np.full((120, 90, 3), 200, np.uint8)
    labels = np.full((30, 45), 255, np.uint8)  # another size than the thumbnail: resized nearest
    labels[:15, :] = 3
    path = tmp_path / "overlay.png"
    size = write_overlay(path, thumbnail, labels, CLASSES, COLORS, alpha=0.5)
    image = Image.open(path)
    assert image.format == "PNG" and image.size == size
    assert image.width > 90 and image.height >= 120  # thumbnail plus a legend panel on the right
    pixels = np.asarray(image.convert("RGB"))
    expected = np.round(0.5 * 200 + 0.5 * np.array(COLORS[3]))
    np.testing.assert_array_equal(pixels[:60, :90], np.broadcast_to(expected, (60, 90, 3)))
    np.testing.assert_array_equal(pixels[60:120, :90], 200)
    legend = pixels[:, 90:]
    assert (legend == COLORS[3]).all(axis=-1).any() and (legend == COLORS[0]).all(axis=-1).any()
    with pytest.raises(ValueError, match="alpha"):
        write_overlay(path, thumbnail, labels, CLASSES, COLORS, alpha=2)
