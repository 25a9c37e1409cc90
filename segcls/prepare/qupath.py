"""QuPath annotations (its GeoJSON export) + their slides -> dataset folder.

What QuPath writes, read from its source (qupath-core `qupath.lib.io`: `PathIO.readObjects` /
`exportObjectsAsGeoJSON`, `GsonTools.parseObjectsFromGeoJSON`, `QuPathTypeAdapters.PathObjectTypeAdapter`,
`GsonTools.PathClassTypeAdapter`, `ROITypeAdapters`; v0.3.2 `PathObjectTypeAdapters` for 0.3):

- Files: `.geojson` / `.json`, `.geojson.gz` (gzip) and `.zip` (every GeoJSON entry inside), 0.5+.
- Top level: a FeatureCollection (the default), a bare array of features, a single Feature or a bare
  geometry (an unclassified annotation). Coordinates are level-0 pixels, x right, y down.
- Feature properties: `objectType` (0.4+: annotation, detection, cell, tile, tmaCore) or `object_type`
  (0.3; tma_core) or `type`; missing = annotation. `name`, `color`, `isLocked`, `measurements`, `metadata`,
  and `childObjects` / `children` (nested objects in a hierarchy export, read recursively).
  `classification` is `{"name", "color": [r, g, b(, a)]}`, `{"names": [...]}` for a derived class,
  a plain string, or (0.3) `{"name", "colorRGB": packed ARGB int, "parentClass": {...}}`.
- Geometry: Polygon (shell + holes, any ring orientation), MultiPolygon, GeometryCollection, and the
  non-area types LineString / MultiLineString / Point / MultiPoint.

What is imported, and how (the conventions are in docs/tutorials/qupath.md):

- Annotations with an area only; detections, cells, tiles, TMA cores, points and lines are skipped and
  counted; unclassified annotations are counted and left out.
- A class name ending in `*` is QuPath's "ignored" class: `Region*` marks an area whose unannotated
  pixels are `background` (or 255 when no background class is given); every other `*` class
  (`Ignore*` for glass and artefacts) is painted 255. Derived classes are named as QuPath prints them
  (`Tumor: Positive`).
- Paint order: the export is flat, so nesting is rebuilt by containment. Annotations are painted from
  the largest area to the smallest (ties: file order), so an annotation drawn inside another paints over
  it, and where two overlap without one containing the other the smaller one wins. Holes are respected:
  a hole shows whatever is below it. A pixel belongs to a polygon when its centre is inside.
- Image-level labels: an annotation whose *name* is `label` (any case) with a class is a label-only
  region. It goes to `labeled/CLASS/` (pixels of its bounding box outside the polygon are white) instead
  of the masks. labeled/ is training data only, so label regions on val/test slides are left out (counted).
- Invalid polygons (self-intersections, a bow-tie) are repaired with shapely's `make_valid` (the
  OGC/JTS repair) and counted; a polygon that has no area left after repair is refused.

Pixels are read at `mpp` (default: the first slide's level-0 mpp) in pieces of at most `piece_size` px,
each piece cropped to its annotated pixels and named NAME_xX_yY (top left in output px). Memory holds the
geometries and one piece at a time. The split is by slide (seeded 50/25/25 unless given). With fewer than
three slides and none named for val or test, it is spatial instead (segcls.data.blocks): blocks of 4
training tiles of the pieces go to val (and test, with `test_blocks`), with a one-tile margin unlabelled
around them; label regions that come within that margin of a held-out block are left out (counted).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segcls.core.constants import SLIDE_SUFFIXES, UNLABELLED
from segcls.core.description import default_colors
from segcls.core.errors import DatasetError
from segcls.data.folder import default_split
from segcls.prepare.common import Summary, dataset_writer, norm

LABEL_NAME = "label"  # annotation name that marks an image-level label region
REGION_CLASS = "region*"  # compared case-insensitively
ANNOTATION_SUFFIXES = (".geojson.gz", ".json.gz", ".geojson", ".json", ".zip")
OUTSIDE_TOLERANCE = 1.0  # level-0 px an annotation may overshoot the slide border (float rounding)
AREA_TYPES = ("Polygon", "MultiPolygon")
SKIPPED_GEOMETRY = {
    "Point": "points",
    "MultiPoint": "points",
    "LineString": "lines",
    "MultiLineString": "lines",
    "LinearRing": "lines",
}
OBJECT_TYPES = {  # objectType / object_type / 0.2 legacy id -> what it is
    "annotation": "annotation",
    "pathannotationobject": "annotation",
    "unknown": "annotation",
    "detection": "detections",
    "pathdetectionobject": "detections",
    "cell": "cells",
    "pathcellobject": "cells",
    "tile": "tiles",
    "pathtileobject": "tiles",
    "tmacore": "TMA cores",
    "tma_core": "TMA cores",
    "tmacoreobject": "TMA cores",
}


@dataclass
class Annotation:
    """One usable QuPath annotation, in level-0 pixels."""

    cls: str  # class name as QuPath prints it
    geometry: object  # shapely Polygon | MultiPolygon, valid
    where: str  # "FILE: feature N" for messages
    color: tuple[int, int, int] | None = None
    label_only: bool = False

    @property
    def kind(self) -> str:
        """ "region" (Region*), "ignore" (any other class ending in *) or "class"."""
        if self.cls.casefold() == REGION_CLASS:
            return "region"
        return "ignore" if self.cls.endswith("*") else "class"


@dataclass
class AnnotationFile:
    path: Path
    annotations: list[Annotation] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # kind -> count
    repaired: int = 0


# -- reading the files -------------------------------------------------------------------------------------


def load_json(path: Path) -> list[tuple[str, object]]:
    """The JSON documents in `path`: (where, parsed) pairs; a .zip gives one per GeoJSON entry."""

    def parse(data: bytes, where: str):
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetError(f"{where}: not a GeoJSON file ({e})") from None

    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            docs = []
            with zipfile.ZipFile(path) as archive:
                for entry in archive.namelist():
                    lower = entry.lower()
                    if entry.endswith("/") or not lower.endswith(ANNOTATION_SUFFIXES[:4]):
                        continue
                    data = archive.read(entry)
                    if lower.endswith(".gz"):
                        data = gzip.decompress(data)
                    docs.append((f"{path}!{entry}", parse(data, f"{path}!{entry}")))
            if not docs:
                raise DatasetError(f"{path}: no .geojson or .json entry in the zip archive")
            return docs
        data = path.read_bytes()
        if name.endswith(".gz"):
            data = gzip.GzipFile(fileobj=io.BytesIO(data)).read()
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"cannot read annotation file {path}: {e}") from None
    return [(str(path), parse(data, str(path)))]


def iter_features(doc: object) -> Iterator[dict]:
    """Every feature of a QuPath GeoJSON document, nested child objects included, in file order; a bare
    geometry becomes a feature without properties (as QuPath reads it)."""
    if isinstance(doc, list):
        for item in doc:
            yield from iter_features(item)
        return
    if not isinstance(doc, dict):
        return
    kind = doc.get("type")
    if kind == "FeatureCollection":
        yield from iter_features(doc.get("features") or [])
    elif kind == "Feature":
        yield doc
        props = doc.get("properties") or {}
        children = props.get("childObjects", props.get("children"))
        if isinstance(children, list):
            yield from iter_features(children)
    elif (isinstance(kind, str) and "coordinates" in doc) or kind == "GeometryCollection":
        yield {"type": "Feature", "geometry": doc, "properties": {}}


def class_of(classification: object) -> tuple[str | None, tuple[int, int, int] | None]:
    """(name, colour) of a QuPath classification in any version's form; (None, None) if unclassified."""
    if classification is None:
        return None, None
    if isinstance(classification, str):
        return classification.strip() or None, None
    if not isinstance(classification, dict):
        return None, None
    names = classification.get("names")
    if isinstance(names, list) and names:
        name = ": ".join(str(n) for n in names)
    elif classification.get("name"):
        name = str(classification["name"])
        parent = classification.get("parentClass")
        if isinstance(parent, dict):  # 0.3: derived classes as a parent chain
            parent_name, _ = class_of(parent)
            if parent_name:
                name = f"{parent_name}: {name}"
    else:
        return None, None
    color = None
    value = classification.get("color", classification.get("colorRGB"))
    if isinstance(value, list) and len(value) >= 3:
        color = tuple(int(v) & 255 for v in value[:3])
    elif isinstance(value, int):  # packed (A)RGB, as Java's signed int
        color = ((value >> 16) & 255, (value >> 8) & 255, value & 255)
    return name.strip() or None, color


def _object_type(feature: dict, props: dict) -> str:
    for key in ("objectType", "object_type", "type"):
        value = props.get(key)
        if isinstance(value, str):
            return OBJECT_TYPES.get(value.lower(), "annotation")  # QuPath reads unknown types as annotations
    legacy = feature.get("id")
    return OBJECT_TYPES.get(legacy.lower(), "annotation") if isinstance(legacy, str) else "annotation"


def _area_geometry(geometry: dict, where: str) -> tuple[object | None, str | None, bool]:
    """(valid shapely polygon(s) | None, skip kind | None, repaired) of a GeoJSON geometry."""
    import shapely
    from shapely.geometry import shape

    if not isinstance(geometry, dict) or "type" not in geometry:
        raise DatasetError(f"{where}: no geometry")
    kind = geometry["type"]
    if kind in SKIPPED_GEOMETRY:
        return None, SKIPPED_GEOMETRY[kind], False
    if kind not in (*AREA_TYPES, "GeometryCollection"):
        raise DatasetError(f"{where}: unknown geometry type {kind!r}")
    try:
        geom = shape(geometry)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, shapely.errors.ShapelyError) as e:
        raise DatasetError(f"{where}: malformed {kind} coordinates ({e})") from None
    coords = shapely.get_coordinates(geom)
    if len(coords) and not np.isfinite(coords).all():
        raise DatasetError(f"{where}: non-finite coordinates")
    geom = _polygonal(geom, min_area=None)  # a bow-tie has zero signed area until repaired
    if geom is None:
        return None, "lines" if kind == "GeometryCollection" else "empty polygons", False
    repaired = False
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        geom = _polygonal(shapely.make_valid(geom))
        repaired = True
        if geom is None:
            raise DatasetError(f"{where}: invalid polygon ({reason}) with no area left after repair")
    return geom, None, repaired


def _polygonal(geom, min_area: float = 0.0) -> object | None:
    """The non-empty polygon parts of a geometry with more than `min_area` (one Polygon, or a
    MultiPolygon if several), or None."""
    from shapely.geometry import MultiPolygon, Polygon

    parts, stack = [], [geom]
    while stack:
        g = stack.pop()
        if isinstance(g, Polygon):
            if not g.is_empty and (min_area is None or g.area > min_area):
                parts.append(g)
        elif hasattr(g, "geoms"):
            stack.extend(reversed(g.geoms))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def read_annotation_file(path: Path) -> AnnotationFile:
    """The usable annotations of one QuPath GeoJSON export, and what was skipped."""
    result = AnnotationFile(Path(path))
    number = 0
    for where_file, doc in load_json(Path(path)):
        for feature in iter_features(doc):
            number += 1
            props = feature.get("properties") or {}
            if not isinstance(props, dict):
                props = {}
            name, color = class_of(props.get("classification"))
            label = f" ({name})" if name else ""
            ident = f" id {feature['id']}" if isinstance(feature.get("id"), str) else ""
            where = f"{where_file}: feature {number}{ident}{label}"
            kind = _object_type(feature, props)
            if kind != "annotation":
                result.skipped[kind] += 1
                continue
            geom, skip, repaired = _area_geometry(feature.get("geometry"), where)
            if skip is not None:
                result.skipped[skip] += 1
                continue
            if name is None:
                result.skipped["unclassified"] += 1
                continue
            label_only = str(props.get("name") or "").strip().casefold() == LABEL_NAME
            annotation = Annotation(name, geom, where, color, label_only)
            if label_only and annotation.kind != "class":
                raise DatasetError(f"{where}: a '{LABEL_NAME}' region needs a tissue class, not {name}")
            result.annotations.append(annotation)
            result.repaired += repaired
    if not result.annotations:
        found = ", ".join(f"{n} {k}" for k, n in sorted(result.skipped.items())) or "no features"
        raise DatasetError(f"{path}: no usable annotation (classified polygon) found ({found})")
    return result


# -- slides and their annotation files ---------------------------------------------------------------------


def _strip(name: str, suffixes: Sequence[str]) -> str:
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def pair_annotations(slides: Sequence[Path], annotations: Sequence[Path]) -> dict[Path, Path]:
    """The annotation file of each slide, matched by name (`A01.geojson`, `A01.svs.geojson`, ...). Folders
    are searched; a single slide with a single file pairs whatever the names."""
    files, explicit = [], []
    for entry in annotations:
        entry = Path(entry)
        if entry.is_dir():
            files += sorted(p for p in entry.iterdir() if p.is_file() and p.name.lower().endswith(ANNOTATION_SUFFIXES))
        elif entry.is_file():
            files.append(entry)
            explicit.append(entry)
        else:
            raise DatasetError(f"annotation file or folder not found: {entry}")
    if not files:
        raise DatasetError(f"no .geojson, .json, .geojson.gz or .zip file in {', '.join(map(str, annotations))}")
    if len(slides) == 1 and len(files) == 1:
        return {slides[0]: files[0]}
    by_key: dict[str, Path] = {}
    for f in files:
        key = norm(_strip(_strip(f.name, ANNOTATION_SUFFIXES), SLIDE_SUFFIXES))
        if key in by_key:
            raise DatasetError(f"two annotation files for one slide: {by_key[key]} and {f}")
        by_key[key] = f
    pairs = {}
    for slide in slides:
        key = norm(_strip(slide.name, SLIDE_SUFFIXES))
        if key not in by_key:
            raise DatasetError(f"no annotation file for slide {slide} (expected {slide.stem}.geojson)")
        pairs[slide] = by_key[key]
    unused = [f for f in explicit if f not in pairs.values()]
    if unused:
        raise DatasetError(f"annotation file {unused[0]} matches no slide given")
    return pairs


def check_inside(annotations: Sequence[Annotation], size: tuple[int, int], slide: Path) -> None:
    w, h = size
    t = OUTSIDE_TOLERANCE
    for a in annotations:
        x0, y0, x1, y1 = a.geometry.bounds
        if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
            raise DatasetError(
                f"{a.where}: coordinates outside slide {slide.name} ({w} x {h} px): bounds "
                f"({x0:.1f}, {y0:.1f}) - ({x1:.1f}, {y1:.1f}); was it exported from another image?"
            )


def choose_classes(
    files: Sequence[AnnotationFile], classes: Sequence[str] | None, background: str | None
) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Classes (given order, else sorted by name) and colours (QuPath's where it has one)."""
    seen: dict[str, tuple[int, int, int] | None] = {}
    for f in files:
        for a in f.annotations:
            if a.kind == "class" and (a.cls not in seen or seen[a.cls] is None):
                seen[a.cls] = a.color
    if classes:
        if len(set(classes)) != len(classes):
            raise DatasetError(f"--classes lists a class twice: {', '.join(classes)}")
        for f in files:
            for a in f.annotations:
                if a.kind == "class" and a.cls not in classes:
                    raise DatasetError(f"{a.where}: class '{a.cls}' is not in --classes ({', '.join(classes)})")
        names = list(classes)
    else:
        names = sorted(set(seen) | ({background} if background else set()), key=str.casefold)
    if background and background not in names:
        raise DatasetError(f"--background '{background}' is not one of the classes ({', '.join(names)})")
    if not names:
        raise DatasetError("no classified tissue annotation in any file (only Region* / Ignore*?)")
    if len(names) > UNLABELLED:
        raise DatasetError(f"{len(names)} classes: at most {UNLABELLED} fit a mask")
    defaults = default_colors(len(names))
    colors = [seen.get(n) or defaults[i] for i, n in enumerate(names)]
    return names, colors


# -- rasterising -------------------------------------------------------------------------------------------


def _edges(geometry, scale: float, origin: tuple[float, float]) -> np.ndarray:
    """(E, 4) x0, y0, x1, y1 of every ring edge of a (multi)polygon, in output px of the piece."""
    parts = []
    for polygon in getattr(geometry, "geoms", [geometry]):
        for ring in (polygon.exterior, *polygon.interiors):
            xy = np.asarray(ring.coords, dtype=float)[:, :2] / scale - np.asarray(origin, dtype=float)
            parts.append(np.concatenate([xy[:-1], xy[1:]], axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, 4))


def rasterize(geometry, shape: tuple[int, int], scale: float, origin: tuple[float, float]) -> np.ndarray:
    """bool (h, w): pixels of the piece whose centre lies inside `geometry` (level-0 px). `scale` is level-0
    px per output px, `origin` the piece's top left in output px. Even-odd scanline fill, exact at pixel
    centres, so a polygon traced along pixel borders (segcls-infer --geojson) comes back pixel for pixel."""
    h, w = shape
    e = _edges(geometry, scale, origin)
    e = e[e[:, 1] != e[:, 3]]
    ylo, yhi = np.minimum(e[:, 1], e[:, 3]), np.maximum(e[:, 1], e[:, 3])
    r0 = np.clip(np.ceil(ylo - 0.5), 0, h).astype(np.int64)  # rows whose centre r + 0.5 is in [ylo, yhi)
    r1 = np.clip(np.ceil(yhi - 0.5), 0, h).astype(np.int64)
    count = np.maximum(r1 - r0, 0)
    inside = np.zeros((h, w), dtype=bool)
    if not count.sum():
        return inside
    which = np.repeat(np.arange(len(e)), count)
    rows = r0[which] + np.arange(len(which)) - np.repeat(np.cumsum(count) - count, count)
    x0, y0, x1, y1 = e[which].T
    xs = x0 + (rows + 0.5 - y0) * (x1 - x0) / (y1 - y0)
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    cols = np.clip(np.ceil(xs - 0.5), 0, w).astype(np.int64)  # first column whose centre is >= x
    diff = np.zeros((h, w + 1), dtype=np.int32)
    np.add.at(diff, (rows[0::2], cols[0::2]), 1)
    np.add.at(diff, (rows[1::2], cols[1::2]), -1)
    return np.cumsum(diff[:, :w], axis=1) > 0


def _piece_bounds(geometry, scale: float, limit: tuple[int, int]) -> tuple[int, int, int, int]:
    """Output-px box (x0, y0, x1, y1) of the pixels whose centres may lie in `geometry`, clipped."""
    gx0, gy0, gx1, gy1 = geometry.bounds
    x0, y0 = max(0, math.floor(gx0 / scale)), max(0, math.floor(gy0 / scale))
    x1, y1 = min(limit[0], math.ceil(gx1 / scale)), min(limit[1], math.ceil(gy1 / scale))
    return x0, y0, x1, y1


def paint_piece(
    annotations: Sequence[tuple[int, Annotation]], box: tuple[int, int, int, int], scale: float, background: int
) -> np.ndarray:
    """uint8 mask of output-px `box`: Region* -> background, then (value, annotation) pairs in the given order
    (value 255 for ignored classes); 255 elsewhere."""
    x0, y0, x1, y1 = box
    mask = np.full((y1 - y0, x1 - x0), UNLABELLED, dtype=np.uint8)
    for value, a in annotations:
        bx0, by0, bx1, by1 = _piece_bounds(a.geometry, scale, (x1, y1))
        bx0, by0 = max(bx0, x0), max(by0, y0)
        if bx1 <= bx0 or by1 <= by0:
            continue
        inside = rasterize(a.geometry, (by1 - by0, bx1 - bx0), scale, (bx0, by0))
        mask[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0][inside] = value if a.kind != "region" else background
    return mask


def read_piece(slide, box: tuple[int, int, int, int], scale: float) -> np.ndarray:
    """RGB uint8 of output-px `box`, read from the finest level not finer than needed and resampled."""
    from PIL import Image

    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    level = slide.best_level_for_downsample(max(scale, 1.0))
    down = slide.level_downsamples[level]
    size = (max(1, math.ceil(w * scale / down)), max(1, math.ceil(h * scale / down)))
    rgb = slide.read_region((round(x0 * scale), round(y0 * scale)), level, size)
    if size != (w, h):
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.LANCZOS))
    return rgb


def _crop(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the labelled pixels of `mask` (!= 255), or None."""
    rows, cols = np.flatnonzero((mask != UNLABELLED).any(axis=1)), np.flatnonzero((mask != UNLABELLED).any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def mask_pieces(
    annotations: Sequence[Annotation], classes: Sequence[str], size: tuple[int, int], scale: float,
    piece: int, background: str | None,
) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:  # fmt: skip
    """(box, mask) per piece of the output grid that holds labelled pixels, cropped to them."""
    from shapely import STRtree
    from shapely import box as make_box

    bg = classes.index(background) if background else UNLABELLED
    painted = [a for a in annotations if not a.label_only and (a.kind != "region" or background)]
    # Region* backgrounds first, then largest first (ties: file order): what is drawn inside another
    # annotation paints over it.
    order = sorted(range(len(painted)), key=lambda i: (painted[i].kind != "region", -painted[i].geometry.area, i))
    rank = {i: k for k, i in enumerate(order)}
    if not painted:
        return
    tree = STRtree([a.geometry for a in painted])
    width, height = size
    for y in range(0, height, piece):
        for x in range(0, width, piece):
            box = (x, y, min(x + piece, width), min(y + piece, height))
            hits = tree.query(make_box(box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale))
            if not len(hits):
                continue
            ordered = sorted((int(i) for i in hits), key=rank.__getitem__)
            pairs = [(classes.index(painted[i].cls) if painted[i].kind == "class" else UNLABELLED, painted[i])
                     for i in ordered]  # fmt: skip
            mask = paint_piece(pairs, box, scale, bg)
            crop = _crop(mask)
            if crop is None:
                continue
            cx0, cy0, cx1, cy1 = crop
            yield (x + cx0, y + cy0, x + cx1, y + cy1), mask[cy0:cy1, cx0:cx1]


def label_pieces(
    annotation: Annotation, size: tuple[int, int], scale: float, piece: int
) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
    """(box, inside mask) per piece of a label-only region's bounding box, cropped to the region."""
    x0, y0, x1, y1 = _piece_bounds(annotation.geometry, scale, size)
    for y in range(y0, y1, piece):
        for x in range(x0, x1, piece):
            box = (x, y, min(x + piece, x1), min(y + piece, y1))
            inside = rasterize(annotation.geometry, (box[3] - y, box[2] - x), scale, (x, y))
            crop = _crop(np.where(inside, 0, UNLABELLED))
            if crop is None:
                continue
            cx0, cy0, cx1, cy1 = crop
            yield (x + cx0, y + cy0, x + cx1, y + cy1), inside[cy0:cy1, cx0:cx1]


# -- the importer ------------------------------------------------------------------------------------------


def _split(names: list[str], val: Sequence[str], test: Sequence[str], seed: int) -> dict[str, list[str]] | None:
    """The split by slide; None when there are too few slides for one (fewer than train + val + test)
    and none were named: then blocks of the slides are split (segcls.data.blocks)."""
    for given in (*val, *test):
        if given not in names:
            raise DatasetError(f"--val-slides / --test-slides name '{given}' is not a slide given ({', '.join(names)})")
    if set(val) & set(test):
        raise DatasetError(f"slides in both --val-slides and --test-slides: {', '.join(sorted(set(val) & set(test)))}")
    if not val and not test:
        return default_split(names, seed) if len(names) >= 3 else None
    return {"train": [n for n in names if n not in val and n not in test], "val": list(val), "test": list(test)}


def _spatial_split(writer_root: Path, names: list[str], classes: list[str], tile: int, seed: int, test: bool):
    """Split the pieces already written under `writer_root` by blocks, in place (their held-out blocks become
    pieces of their own)."""
    from segcls.data.blocks import save_pair, split_images
    from segcls.data.folder import read_image, read_mask

    def read(name: str):
        return read_image(writer_root / "images" / f"{name}.png"), read_mask(writer_root / "masks" / f"{name}.png")

    result = split_images(
        names,
        read,
        lambda name, image, mask: save_pair(writer_root, name, image, mask),
        len(classes),
        tile=tile,
        seed=seed,
        test=0.25 if test else 0.0,
        read_mask_only=lambda name: read_mask(writer_root / "masks" / f"{name}.png"),
    )
    for name in set(names) - set(result.split["train"]):  # a piece all of whose labels were held out
        (writer_root / "images" / f"{name}.png").unlink()
        (writer_root / "masks" / f"{name}.png").unlink()
    return result


def _drop_overlapping_labels(writer_root: Path, labeled: list, held: dict, boxes: dict, margin: int) -> Counter:
    """Delete labeled/ images that come within `margin` of a held-out block of their slide (image-level
    training data must not show held-out pixels); how many of each class."""
    rects: dict[str, list[tuple[int, int, int, int]]] = {}
    for piece, blocks in held.items():
        stem, (px, py, _, _) = boxes[piece]
        rects.setdefault(stem, []).extend((px + x0, py + y0, px + x1, py + y1) for x0, y0, x1, y1 in blocks)
    dropped: Counter = Counter()
    for stem, cls, name, (x0, y0, x1, y1) in labeled:
        near = any(
            x0 < bx1 + margin and bx0 - margin < x1 and y0 < by1 + margin and by0 - margin < y1
            for bx0, by0, bx1, by1 in rects.get(stem, [])
        )
        if near:
            (writer_root / "labeled" / cls / f"{name}.png").unlink()
            dropped[cls] += 1
    return dropped


def prepare_qupath(
    slides: Sequence[str | Path],
    annotations: Sequence[str | Path],
    out_dir: str | Path,
    *,
    mpp: float | None = None,
    slide_mpp: float | None = None,
    classes: Sequence[str] | None = None,
    background: str | None = None,
    piece_size: int = 2048,
    val_slides: Sequence[str] = (),
    test_slides: Sequence[str] = (),
    seed: int = 0,
    tile: int = 128,
    test_blocks: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Import QuPath GeoJSON annotations of `slides` into `out_dir`; see the module docstring. With fewer
    slides than splits, blocks of the slides are split instead (segcls.data.blocks: margins of `tile` px;
    test blocks too with `test_blocks`)."""
    from tqdm import tqdm

    from segcls.runtime.slide import open_slide

    if piece_size < 16 or (mpp is not None and not mpp > 0):
        raise ValueError(f"need piece_size >= 16 and mpp > 0, got {piece_size}, {mpp}")
    slides = [Path(s) for s in slides]
    names = [s.stem for s in slides]
    if len(set(names)) != len(names):
        raise DatasetError(f"two slides are named {next(n for n in names if names.count(n) > 1)}")
    pairs = pair_annotations(slides, [Path(a) for a in annotations])
    files = {s: read_annotation_file(pairs[s]) for s in slides}  # every GeoJSON error before any pixel work
    class_names, colors = choose_classes(list(files.values()), classes, background)
    split = _split(names, list(val_slides), list(test_slides), seed)
    spatial = split is None
    if spatial:  # every slide's pieces are written as training pieces, then split by blocks
        split = {"train": list(names), "val": [], "test": []}
    train = set(split["train"])
    piece_boxes: dict[str, tuple[str, tuple[int, int, int, int]]] = {}
    label_boxes: list[tuple[str, str, str, tuple[int, int, int, int]]] = []

    target_mpp = mpp
    read_native = False  # a slide without an mpp was read at its own scale (no --mpp, no --slide-mpp)
    counts: Counter = Counter()
    labeled = dict.fromkeys(class_names, 0)
    split_pieces: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    with dataset_writer(out_dir, overwrite) as writer:
        for slide_path in tqdm(slides, desc="QuPath slides", unit="slide", disable=not progress):
            found = files[slide_path]
            with open_slide(slide_path, mpp=slide_mpp) as slide:
                if target_mpp is None and slide.mpp is not None:
                    if read_native:  # an earlier slide of unknown scale was cut at 1:1: one dataset, one scale
                        raise DatasetError(
                            f"{slide_path} has a microns-per-pixel but an earlier slide has none: "
                            "pass --mpp and --slide-mpp so that every slide is read at one scale"
                        )
                    target_mpp = slide.mpp
                if target_mpp is not None and slide.mpp is None:
                    raise DatasetError(f"{slide_path} has no microns-per-pixel in its metadata; pass --slide-mpp")
                read_native = target_mpp is None
                scale = target_mpp / slide.mpp if target_mpp is not None else 1.0
                check_inside(found.annotations, slide.dimensions, slide_path)
                size = tuple(max(1, math.floor(d / scale + 1e-6)) for d in slide.dimensions)
                key = next(k for k, v in split.items() if slide_path.stem in v)
                for box, mask in mask_pieces(found.annotations, class_names, size, scale, piece_size, background):
                    name = f"{slide_path.stem}_x{box[0]:06d}_y{box[1]:06d}"
                    writer.add(name, read_piece(slide, box, scale), mask, slide_path)
                    split_pieces[key].append(name)
                    piece_boxes[name] = (slide_path.stem, box)
                for i, a in enumerate(x for x in found.annotations if x.label_only):
                    if slide_path.stem not in train:
                        counts["label regions on val/test slides"] += 1
                        continue
                    for box, inside in label_pieces(a, size, scale, piece_size):
                        rgb = read_piece(slide, box, scale).copy()
                        rgb[~inside] = 255
                        name = f"{slide_path.stem}_r{i:04d}_x{box[0]:06d}_y{box[1]:06d}"
                        writer.add_labeled(a.cls, name, rgb)
                        labeled[a.cls] += 1
                        label_boxes.append((slide_path.stem, a.cls, name, box))
            counts.update(found.skipped)
            counts["repaired polygons"] += found.repaired
        if not any(split_pieces.values()) and not any(labeled.values()):
            raise DatasetError("the annotations gave no labelled pixel (only Region* without --background?)")
        plural = "s" if len(names) > 1 else ""
        if spatial:
            try:
                blocks = _spatial_split(writer.root, split_pieces["train"], class_names, tile, seed, test_blocks)
            except DatasetError as e:  # written as training data; segcls-train says the same when it tries
                notes = [f"{len(names)} slide{plural}, all train: too small for a spatial split ({e})"]
            else:
                split_pieces = blocks.split
                dropped = _drop_overlapping_labels(writer.root, label_boxes, blocks.held, piece_boxes, blocks.margin)
                labeled.update({cls: labeled[cls] - n for cls, n in dropped.items()})
                counts["label regions next to held-out blocks"] += sum(dropped.values())
                notes = [f"{len(names)} slide{plural}, too few to split by slide: {blocks.describe(class_names)}"]
        writer.finish(class_names, split_pieces, target_mpp, colors)
    if not spatial:
        notes = [f"slides train {', '.join(split['train']) or '-'} / val {', '.join(split['val']) or '-'} / "
                 f"test {', '.join(split['test']) or '-'}"]  # fmt: skip
    left_out = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()) if n)
    if left_out:
        notes.append(f"left out or fixed: {left_out}")
    labeled = {k: n for k, n in labeled.items() if n}
    return Summary("qupath", Path(out_dir), class_names, split_pieces, labeled, target_mpp, notes)
