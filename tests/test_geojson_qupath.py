"""--geojson as QuPath takes it: one MultiPolygon per class by default, per region as an option, a minimum
region area, every polygon valid (also after QuPath 0.6 snaps to 0.01 px), every coordinate on the slide."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from scipy import ndimage
from shapely.geometry import shape

from segcls.runtime.geojson import write_geojson

CLASSES = ["a", "b", "c"]
COLORS = [(1, 2, 3), (4, 5, 6), (7, 8, 9)]


def noisy(seed: int, shape_=(40, 50)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = ndimage.median_filter(rng.integers(0, 3, shape_), 3).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.05] = 255
    return labels


def load(path):
    return json.loads(path.read_text())["features"]


def snapped(geometry: dict) -> object:
    """The geometry as QuPath 0.6 stores it: coordinates on a 0.01 px grid."""
    return shapely.set_precision(shape(geometry), 0.01, mode="pointwise")


@pytest.mark.parametrize("downsample", [1, 8, 2.5, 34.28571])
def test_one_valid_multipolygon_per_class_with_exact_areas(tmp_path, downsample):
    for seed in range(8):
        labels = noisy(seed)
        path = tmp_path / "m.geojson"
        n = write_geojson(path, labels, CLASSES, COLORS, downsample)
        features = load(path)
        present = sorted(int(c) for c in np.unique(labels) if c != 255)
        assert n == len(features) == len(present)
        assert [f["properties"]["classification"]["name"] for f in features] == [CLASSES[c] for c in present]
        for f, cls in zip(features, present, strict=True):
            assert f["geometry"]["type"] == "MultiPolygon" and f["properties"]["objectType"] == "annotation"
            geom = shape(f["geometry"])
            assert geom.is_valid, shapely.is_valid_reason(geom)
            assert snapped(f["geometry"]).is_valid
            assert len(geom.geoms) == ndimage.label(labels == cls)[1]
            # exact on integral grids; rounding to 0.01 px moves a non-integral one a little
            assert geom.area == pytest.approx((labels == cls).sum() * downsample**2, rel=1e-4)
            coords = np.asarray(shapely.get_coordinates(geom))
            np.testing.assert_array_equal(coords, np.round(coords, 2))  # already on QuPath's grid


def test_per_region_and_minimum_area(tmp_path):
    labels = np.full((20, 20), 255, np.uint8)
    labels[1:9, 1:9] = 0  # 64 px
    labels[12:14, 12:14] = 0  # 4 px
    labels[15, 1] = 0  # 1 px
    labels[2:6, 12:18] = 1  # 24 px
    path = tmp_path / "r.geojson"
    assert write_geojson(path, labels, CLASSES, COLORS, 2.0, per_region=True) == 4
    assert all(f["geometry"]["type"] == "Polygon" and shape(f["geometry"]).is_valid for f in load(path))
    # min_area is in level-0 px²: 4 label px = 16 level-0 px² at downsample 2
    assert write_geojson(path, labels, CLASSES, COLORS, 2.0, per_region=True, min_area=16) == 3
    assert sorted(shape(f["geometry"]).area for f in load(path)) == [16, 24 * 4, 64 * 4]
    assert write_geojson(path, labels, CLASSES, COLORS, 2.0, min_area=17) == 2
    (a, b) = load(path)
    assert len(a["geometry"]["coordinates"]) == 1 and shape(b["geometry"]).area == 96
    assert write_geojson(path, labels, CLASSES, COLORS, 2.0, min_area=1000) == 0


def test_a_label_map_that_overhangs_the_slide_is_cut_to_it(tmp_path):
    labels = np.zeros((10, 10), np.uint8)  # whole tiles: 10 x 10 cells of 7.5 px cover 75 px; the slide is 70 x 61
    path = tmp_path / "o.geojson"
    write_geojson(path, labels, CLASSES, COLORS, 7.5, size=(70, 61))
    (f,) = load(path)
    geom = shape(f["geometry"])
    assert geom.is_valid and geom.bounds == (0, 0, 70, 61) and geom.area == 70 * 61
    # a last column that would start within 0.01 px of the border is dropped instead of collapsing
    write_geojson(path, labels, CLASSES, COLORS, 7.5, size=(75, 60))
    assert shape(load(path)[0]["geometry"]).bounds == (0, 0, 75, 60)
    write_geojson(path, labels, CLASSES, COLORS, 7.0, size=(63, 63))
    geom = shape(load(path)[0]["geometry"])
    assert geom.is_valid and geom.bounds == (0, 0, 63, 63)


def test_pipeline_options(tmp_path):
    from _runtime_models import tissue_image
    from test_prepare_qupath import ColourBackend

    from segcls.core.errors import SegclsError
    from segcls.core.tiff import write_pyramid
    from segcls.runtime.pipeline import InferOptions, infer_slide

    pixels = tissue_image(600, 800, seed=1)
    slide = tmp_path / "s.tif"
    write_pyramid(slide, (800, 600), lambda lv, x, y, w, h: pixels[y : y + h, x : x + w], samples=3, tile=256, mpp=0.5)
    model = ColourBackend()
    counts = {}
    for name, extra in {
        "class": {},
        "region": {"geojson_per_region": True},
        "big": {"geojson_per_region": True, "geojson_min_area": 1000.0},  # um²: 4000 level-0 px² at 0.5 um/px
    }.items():
        path = tmp_path / f"{name}.geojson"
        infer_slide(
            slide,
            model,
            tmp_path / f"{name}.mask.tif",
            InferOptions(tile=256, overlap=32, mpp=0.5, progress=False, geojson=path, **extra),
        )
        features = load(path)
        counts[name] = len(features)
        areas = [shape(f["geometry"]).area for f in features]
        if name == "big":
            assert min(areas) >= 4000
    assert counts["class"] <= 3 and 0 < counts["big"] < counts["region"]
    with pytest.raises(SegclsError, match="geojson-min-area"):
        InferOptions(geojson_min_area=-1)


def test_bench_geojson_reports_both_outputs():
    from segcls.bench.bench_geojson import bench_geojson, markdown

    result = bench_geojson(size=60, rounds=1)
    per_class, per_region = result["results"]["per class"], result["results"]["per region"]
    assert per_class["features"] == 4 < per_region["features"] and per_class["median_s"] > 0
    assert "| per region |" in markdown(result) and result["machine"]["cores"] >= 1
