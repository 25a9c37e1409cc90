"""Slides and masks with known content for the viewer's tests.

The slide is a tiled deflate RGB TIFF (OpenSlide's generic TIFF reader opens it) whose reduced levels are
1/3 and 1/9 of level 0, not powers of two. Its mask is written by segcls's own mask writer at a coarser,
non-integer resolution (as `segcls-infer --out-mpp 1.7` on a 0.5 um/px slide), with three classes in
rectangles given in slide level-0 pixels, so a test knows the class of every point.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import tifffile

from segcls.runtime.cohort import CSV_FIELDS, CSV_NAME
from segcls.runtime.mask_writer import write_mask

SIZE = (3000, 2000)  # slide level 0, px
SLIDE_MPP = 0.5
MASK_MPP = 1.7
DOWNSAMPLES = (1, 3, 9)
CLASSES = ("stroma", "tumour", "necrosis")
COLORS = ((40, 160, 60), (220, 30, 30), (30, 60, 220))
# class index -> (x0, y0, x1, y1) in slide level-0 px
REGIONS = {0: (300, 300, 1400, 1700), 1: (1600, 300, 2700, 1000), 2: (1600, 1200, 2700, 1700)}
TISSUE = (60, 60, 2940, 1940)  # outside: white glass


def tissue_rgb(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The slide's colour at level-0 points (x[None, :], y[:, None]): pink tissue with a gentle texture
    inside TISSUE, white glass outside."""
    xx, yy = np.meshgrid(x, y)
    r = 215 + 18 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    g = 160 + 25 * np.sin((xx + yy) / 47.0)
    b = 195 + 15 * np.cos(xx / 61.0)
    rgb = np.stack([r, g, b], -1)
    x0, y0, x1, y1 = TISSUE
    inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    rgb[~inside] = 250
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def label_at(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The true class (255 = unlabelled) at level-0 points (x[None, :], y[:, None])."""
    xx, yy = np.meshgrid(x, y)
    out = np.full(xx.shape, 255, np.uint8)
    for k, (x0, y0, x1, y1) in REGIONS.items():
        out[(xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)] = k
    return out


def write_slide(path: Path, size: tuple[int, int] = SIZE, downsamples=DOWNSAMPLES, mpp: float = SLIDE_MPP) -> Path:
    w0, h0 = size
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, d in enumerate(downsamples):
            w, h = -(-w0 // d), -(-h0 // d)
            rgb = tissue_rgb((np.arange(w) + 0.5) * w0 / w, (np.arange(h) + 0.5) * h0 / h)
            tif.write(
                rgb, photometric="rgb", compression="zlib", tile=(256, 256), metadata=None,
                resolution=(1e4 / (mpp * d), 1e4 / (mpp * d)), resolutionunit="CENTIMETER",
                **({"subfiletype": 1} if i else {}),
            )  # fmt: skip
    return path


def mask_size(
    size: tuple[int, int] = SIZE, slide_mpp: float = SLIDE_MPP, mask_mpp: float = MASK_MPP
) -> tuple[int, int]:
    return round(size[0] * slide_mpp / mask_mpp), round(size[1] * slide_mpp / mask_mpp)


def write_test_mask(path: Path, size: tuple[int, int] = SIZE, mask_mpp: float = MASK_MPP) -> Path:
    """The mask of REGIONS at `mask_mpp`: each mask pixel holds the class at its centre."""
    mw, mh = mask_size(size, SLIDE_MPP, mask_mpp)
    labels = label_at((np.arange(mw) + 0.5) * size[0] / mw, (np.arange(mh) + 0.5) * size[1] / mh)
    write_mask(path, labels, (mw, mh), COLORS, mask_mpp, tile=128, classes=CLASSES)
    return path


def write_summary(path: Path, slide: Path, areas: dict[str, float], slide_class: str = "tumour") -> Path:
    scores = {c: (0.9 if c == slide_class else 0.1) for c in CLASSES}
    summary = {"slide": str(slide), "area_mm2": areas, "slide_class": {"class": slide_class, "scores": scores},
               "tiles_per_s": 3.5}  # fmt: skip
    path.write_text(json.dumps(summary))
    return path


def write_geojson(path: Path) -> Path:
    """The REGIONS as QuPath-style GeoJSON polygons (level-0 px)."""
    features = []
    for k, (x0, y0, x1, y1) in REGIONS.items():
        ring = [[x0, y0], [x0, y1], [x1, y1], [x1, y0], [x0, y0]]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "annotation",
                                        "classification": {"name": CLASSES[k], "color": list(COLORS[k])}}})  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def write_cohort(folder: Path, files: dict[str, Path]) -> Path:
    """OUT_DIR as segcls-infer leaves it: a done slide (mask, summary, GeoJSON beside it), a failed one, and a
    row whose slide is gone."""
    out = folder / "out"
    out.mkdir()
    other = write_slide(folder / "other.tif", size=(1200, 900))
    write_test_mask(out / "known.mask.tif")
    write_summary(out / "known.summary.json", files["slide"], {"stroma": 1.0, "tumour": 2.0, "necrosis": 3.0})
    write_geojson(out / "known.geojson")
    rows = [
        {"slide": str(files["slide"]), "status": "done", "seconds": 12.5, "tiles": 40, "tiles_per_s": 3.2,
         "mask": str(out / "known.mask.tif"), "worker": "host:1", "error": ""},
        {"slide": str(other), "status": "failed", "seconds": 0.4, "tiles": "", "tiles_per_s": "",
         "mask": str(out / "other.mask.tif"), "worker": "host:1", "error": "SlideError: cannot read tile 3"},
        {"slide": str(folder / "gone.svs"), "status": "done", "seconds": 1, "tiles": 1, "tiles_per_s": 1,
         "mask": str(out / "gone.mask.tif"), "worker": "host:1", "error": ""},
    ]  # fmt: skip
    with open(out / CSV_NAME, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return out


def write_known(folder: Path) -> dict[str, Path]:
    """The known slide, its mask at 1.7 um/px, its GeoJSON and a summary, in `folder`."""
    slide = write_slide(folder / "known.tif")
    areas = {"stroma": 0.39, "tumour": 0.19, "necrosis": 0.14}
    return {
        "folder": folder,
        "slide": slide,
        "mask": write_test_mask(folder / "known.mask.tif"),
        "geojson": write_geojson(folder / "known.geojson"),
        "summary": write_summary(folder / "known.summary.json", slide, areas),
    }
