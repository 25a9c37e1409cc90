"""segcls-prepare qupath: QuPath GeoJSON in every form QuPath 0.3-0.6 writes, painted into masks as documented,
label-only regions, bad input -> one Error: line, and the round trip through segcls-infer --geojson."""

from __future__ import annotations

import copy
import gzip
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _prepare_fixtures import SLIDE_MPP, write_slide
from click.testing import CliRunner
from PIL import Image

from segcls.cli.prepare import main
from segcls.core.description import ModelDescription
from segcls.data.folder import open_dataset
from segcls.prepare.qupath import class_of, rasterize
from segcls.runtime.backends.base import Backend, BackendOutput

SCALE = 4  # level-0 px per output px in most tests
MPP = SLIDE_MPP * SCALE
TUMOR, STROMA = [200, 0, 0], [150, 200, 150]


def box(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(geometry, cls=None, color=None, object_type="annotation", name=None, **props):
    properties = {"objectType": object_type, **props}
    if cls is not None:
        properties["classification"] = {"name": cls, "color": color or [10, 20, 30]}
    if name is not None:
        properties["name"] = name
    return {
        "type": "Feature",
        "id": "0b6f5a1e-1111-4a4a-9a9a-000000000000",
        "geometry": geometry,
        "properties": properties,
    }


def polygon(*rings):
    return {"type": "Polygon", "coordinates": list(rings)}


# What QuPath 0.4+ exports ("Export objects as GeoJSON", FeatureCollection), level-0 px.
FEATURES = [
    feature(polygon(box(400, 400, 1200, 1000), box(600, 600, 800, 800)[::-1]), "Tumor", TUMOR),  # shell + hole
    feature(polygon(box(900, 440, 1100, 640)), "Stroma", STROMA),  # drawn inside the tumour: paints over it
    feature(  # one annotation of two parts
        {"type": "MultiPolygon", "coordinates": [[box(1300, 300, 1500, 500)], [box(1300, 700, 1500, 900)]]},
        "Stroma",
        STROMA,
    ),
    feature(polygon(box(1000, 800, 1160, 960)), "Ignore*", [180, 180, 180]),  # artefact inside the tumour
    feature(polygon(box(100, 100, 300, 300)), "Tumor", object_type="detection"),
    feature(polygon(box(100, 100, 300, 300)), "Tumor", object_type="cell"),
    feature({"type": "Point", "coordinates": [50, 50]}, "Tumor"),
    feature({"type": "LineString", "coordinates": [[50, 50], [90, 90]]}, "Tumor"),
    feature(polygon(box(1600, 1000, 1800, 1200))),  # unclassified
]


def collection(features=FEATURES):
    return {"type": "FeatureCollection", "features": features}


def at(level0_x, level0_y):
    """(row, col) of the output pixel holding a level-0 point."""
    return level0_y // SCALE, level0_x // SCALE


def assemble(root: Path, size=(2048 // SCALE, 1536 // SCALE)) -> np.ndarray:
    """The pieces' masks put back on one canvas of the output size (255 where no piece)."""
    canvas = np.full(size[::-1], 255, np.uint8)
    for path in sorted((root / "masks").glob("*.png")):
        x, y = (int(v) for v in re.search(r"_x(\d+)_y(\d+)$", path.stem).groups())
        mask = np.asarray(Image.open(path))
        canvas[y : y + mask.shape[0], x : x + mask.shape[1]] = mask
        image = np.asarray(Image.open(root / "images" / path.name))
        assert image.shape == (*mask.shape, 3)
    return canvas


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slides") / "S1.tif"
    write_slide(path)
    return path


def sub(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir()
    return tmp_path / name


def run(*args):
    return CliRunner().invoke(main, ["qupath", *[str(a) for a in args]])


def prepare(tmp_path, slide, doc, *extra, name="S1.geojson", writer=None):
    ann = tmp_path / name
    (writer or (lambda p, d: p.write_text(json.dumps(d))))(ann, doc)
    out = tmp_path / "ds"
    # --tile 1024: larger than the annotations, so one slide stays whole in train (no spatial split; that
    # is tested in test_spatial_split.py) and the pieces can be put back together here
    r = run(slide, "-o", out, "-a", ann, "--mpp", MPP, "--quiet", "--tile", 1024, *extra)
    return r, out


def test_feature_collection_painted_as_documented(tmp_path, slide):
    r, out = prepare(tmp_path, slide, collection())
    assert r.exit_code == 0, r.output
    assert "2 detections" not in r.output and "1 detections" in r.output and "1 cells" in r.output
    assert "1 points" in r.output and "1 lines" in r.output and "1 unclassified" in r.output
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["classes"] == ["Stroma", "Tumor"]  # sorted names; Ignore* is not a class
    assert meta["colors"] == [STROMA, TUMOR]  # QuPath's colours
    assert meta["mpp"] == pytest.approx(MPP)
    ds = open_dataset(out)
    assert ds.classes == ("Stroma", "Tumor")
    m = assemble(out)
    stroma, tumor = 0, 1
    assert m[at(450, 450)] == tumor
    assert m[at(700, 700)] == 255  # the hole shows what is below it: nothing
    assert m[at(1000, 500)] == stroma  # child over parent
    assert m[at(1080, 880)] == 255  # Ignore* inside the tumour
    assert m[at(1400, 400)] == stroma and m[at(1400, 800)] == stroma and m[at(1400, 600)] == 255
    assert m[at(200, 200)] == 255 and m[at(1700, 1100)] == 255  # detection, cell, unclassified left out
    # exact areas: a pixel is in when its centre is (the boxes are on the 4 px grid)
    assert (m == tumor).sum() == (800 * 600 - 200 * 200 - 200 * 200 - 160 * 160) // 16  # - hole, child, Ignore*
    assert (m == stroma).sum() == (200 * 200 * 3) // 16
    # one slide and tiles larger than its annotations: too small to split by blocks, so all train, and said
    split = json.loads((out / "split.json").read_text())
    assert split["val"] == split["test"] == [] and split["train"] and all(n.startswith("S1_x") for n in split["train"])
    assert "1 slide, all train: too small for a spatial split" in r.output


def test_overlap_without_containment_smaller_wins_and_ties_follow_file_order(tmp_path, slide):
    features = [
        feature(polygon(box(400, 400, 800, 800)), "A"),
        feature(polygon(box(600, 600, 900, 900)), "B"),  # smaller, overlapping A
        feature(polygon(box(1000, 400, 1200, 600)), "A"),
        feature(polygon(box(1000, 400, 1200, 600)), "B"),  # same area: the later one wins
    ]
    r, out = prepare(tmp_path, slide, collection(features))
    assert r.exit_code == 0, r.output
    m = assemble(out)
    assert m[at(700, 700)] == 1 and m[at(500, 500)] == 0 and m[at(850, 850)] == 1 and m[at(1100, 500)] == 1


def qupath_03(features):
    """The same objects as QuPath 0.3 wrote them: object_type, colorRGB packed ints, parentClass chains."""
    out = []
    for f in copy.deepcopy(features):
        props = f["properties"]
        props["object_type"] = props.pop("objectType")
        if "classification" in props:
            r, g, b = props["classification"]["color"]
            packed = (0xFF << 24 | r << 16 | g << 8 | b) - (1 << 32)  # Java's signed int
            props["classification"] = {"name": props["classification"]["name"], "colorRGB": packed}
        props["measurements"] = [{"name": "Area px^2", "value": 1.0}]
        f.pop("id")
        out.append(f)
    return {"type": "FeatureCollection", "features": out}


def nested(features):
    """A hierarchy export: the stroma child inside the tumour's childObjects."""
    tumor, child, *rest = copy.deepcopy(features)
    tumor["properties"]["childObjects"] = [child]
    return {"type": "FeatureCollection", "features": [tumor, *rest]}


def write_gz(path, doc):
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))


def write_zip(path, doc):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("S1.geojson", json.dumps(doc))


@pytest.mark.parametrize(
    ("form", "name", "doc", "writer"),
    [
        ("bare array", "S1.geojson", FEATURES, None),
        ("QuPath 0.3", "S1.json", qupath_03(FEATURES), None),
        ("hierarchy", "S1.geojson", nested(FEATURES), None),
        ("gzip", "S1.geojson.gz", collection(), write_gz),
        ("zip", "S1.zip", collection(), write_zip),
    ],
)
def test_every_form_gives_the_same_dataset(tmp_path, slide, form, name, doc, writer):
    r, ref = prepare(sub(tmp_path, "ref"), slide, collection())
    assert r.exit_code == 0, r.output
    r, out = prepare(tmp_path, slide, doc, name=name, writer=writer)
    assert r.exit_code == 0, (form, r.output)
    np.testing.assert_array_equal(assemble(out), assemble(ref))
    assert json.loads((out / "dataset.json").read_text()) == json.loads((ref / "dataset.json").read_text())


def test_classification_forms():
    assert class_of({"names": ["Tumor", "Positive"], "color": [1, 2, 3]}) == ("Tumor: Positive", (1, 2, 3))
    assert class_of({"name": "Positive", "colorRGB": -3670016, "parentClass": {"name": "Tumor"}}) == (
        "Tumor: Positive",
        (200, 0, 0),
    )
    assert class_of("Stroma") == ("Stroma", None)
    assert class_of({"name": "Tumor", "color": [1, 2, 3, 128]}) == ("Tumor", (1, 2, 3))
    assert class_of(None) == (None, None) and class_of({}) == (None, None)


def test_single_feature_file_and_bare_geometry(tmp_path, slide):
    r, out = prepare(tmp_path, slide, FEATURES[0])
    assert r.exit_code == 0, r.output
    m = assemble(out)
    assert set(np.unique(m)) == {0, 255} and m[at(450, 450)] == 0
    # a bare geometry is an unclassified annotation to QuPath: nothing usable
    r, _ = prepare(sub(tmp_path, "g"), slide, polygon(box(400, 400, 800, 800)))
    assert r.exit_code == 2 and "no usable annotation" in r.output and "1 unclassified" in r.output


def test_region_background_and_ignore(tmp_path, slide):
    features = [
        feature(polygon(box(200, 1100, 1800, 1500)), "Region*", [0, 0, 180]),
        feature(polygon(box(300, 1200, 500, 1400)), "Tumor"),
        feature(polygon(box(1400, 1200, 1600, 1400)), "Ignore*"),
        feature(polygon(box(400, 400, 600, 600)), "Tumor"),  # outside the region
    ]
    r, out = prepare(tmp_path, slide, collection(features), "--background", "Stroma")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "dataset.json").read_text())["classes"] == ["Stroma", "Tumor"]
    m = assemble(out)
    assert m[at(1000, 1300)] == 0  # unannotated inside Region* -> background
    assert m[at(400, 1300)] == 1 and m[at(1500, 1300)] == 255 and m[at(500, 500)] == 1
    assert m[at(1000, 800)] == 255 and m[at(1900, 1300)] == 255  # outside the region: unlabelled
    # without --background a Region* marks nothing
    r, out2 = prepare(sub(tmp_path, "nb"), slide, collection(features))
    assert r.exit_code == 0, r.output
    m2 = assemble(out2)
    assert m2[at(1000, 1300)] == 255 and m2[at(400, 1300)] == 0  # classes: Tumor only
    r, _ = prepare(sub(tmp_path, "bad"), slide, collection(features), "--classes", "Tumor", "--background", "Fat")
    assert r.exit_code == 2 and "--background 'Fat'" in r.output


def test_label_regions_go_to_labeled_and_only_for_train_slides(tmp_path, slide):
    tri = polygon([[1200, 1100], [1800, 1100], [1200, 1500], [1200, 1100]])
    features = [
        *FEATURES[:2],
        feature(tri, "Tumor", name="label"),
        feature(polygon(box(260, 1040, 380, 1240)), "Fat", name="Label"),  # on tissue
    ]
    r, out = prepare(tmp_path, slide, collection(features), "--piece-size", 64)
    assert r.exit_code == 0, r.output
    ds = open_dataset(out)
    assert ds.classes == ("Fat", "Stroma", "Tumor")
    assert len(ds.labeled["Fat"]) == 1 and len(ds.labeled["Tumor"]) >= 4  # 150 x 100 px cut in 64 px pieces
    fat = np.asarray(Image.open(ds.labeled["Fat"][0]))
    assert fat.shape == (50, 30, 3) and not (fat == 255).all(axis=-1).any()  # a box: no white
    tumor = [np.asarray(Image.open(p)) for p in ds.labeled["Tumor"]]
    assert any((t == 255).all(axis=-1).any() for t in tumor)  # the triangle's box outside it is white
    m = assemble(out)
    assert (m != 255).sum() > 0 and m[at(1300, 1150)] == 255  # label regions are not in the masks
    # labeled/ is training data only: on a test slide the label regions are left out
    r, out = prepare(sub(tmp_path, "t"), slide, collection(features), "--test-slides", "S1")
    assert r.exit_code == 0, r.output
    assert not (out / "labeled").exists() and "2 label regions on val/test slides" in r.output
    assert json.loads((out / "split.json").read_text())["test"]


def test_classes_option_fixes_order_and_refuses_unknown(tmp_path, slide):
    r, out = prepare(tmp_path, slide, collection(), "--classes", "Tumor,Stroma,Necrosis")
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["classes"] == ["Tumor", "Stroma", "Necrosis"] and meta["colors"][:2] == [TUMOR, STROMA]
    assert assemble(out)[at(450, 450)] == 0
    r, _ = prepare(sub(tmp_path, "u"), slide, collection(), "--classes", "Tumor")
    assert r.exit_code == 2 and "feature 2" in r.output and "'Stroma' is not in --classes" in r.output


def test_self_intersecting_polygon_repaired_and_degenerate_refused(tmp_path, slide):
    bowtie = polygon([[400, 400], [800, 800], [800, 400], [400, 800], [400, 400]])
    r, out = prepare(tmp_path, slide, collection([feature(bowtie, "Tumor")]))
    assert r.exit_code == 0, r.output
    assert "1 repaired polygons" in r.output
    m = assemble(out)
    assert m[at(420, 600)] == 0 and m[at(780, 600)] == 0 and m[at(600, 420)] == 255  # two triangles
    flat = polygon([[400, 400], [800, 400], [600, 400], [400, 400]])
    r, _ = prepare(sub(tmp_path, "f"), slide, collection([FEATURES[0], feature(flat, "Tumor")]))
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert re.search(r"Error: .*S1\.geojson: feature 2 .*\(Tumor\): invalid polygon", r.output)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (collection([feature(polygon(box(1800, 100, 2300, 300)), "Tumor")]), "feature 1 .*outside slide S1.tif"),
        (collection(FEATURES[4:]), r"no usable annotation .*1 cells, 1 detections, 1 lines, 1 points, 1 unclassified"),
        (collection([feature(polygon([[0, 0], [1]]), "Tumor")]), "feature 1 .*malformed Polygon"),
        ({"type": "Topology"}, "no usable annotation"),
    ],
)
def test_bad_geojson_gives_one_error_line_naming_file_and_feature(tmp_path, slide, doc, message):
    r, out = prepare(tmp_path, slide, doc)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1 and "S1.geojson" in r.output
    assert re.search(message, r.output), r.output
    assert not out.exists() and not list(tmp_path.glob(".ds.*"))  # nothing half-written


def test_not_json_and_missing_pairs(tmp_path, slide):
    bad = tmp_path / "S1.geojson"
    bad.write_text("{not json")
    r = run(slide, "-o", tmp_path / "ds", "-a", bad)
    assert r.exit_code == 2 and "not a GeoJSON file" in r.output
    folder = tmp_path / "ann"
    folder.mkdir()
    (folder / "other.geojson").write_text(json.dumps(collection()))
    (folder / "more.geojson").write_text(json.dumps(collection()))
    r = run(slide, "-o", tmp_path / "ds", "-a", folder)
    assert r.exit_code == 2 and "no annotation file for slide" in r.output


def test_several_slides_matched_by_name_and_split_by_slide(tmp_path, slide):
    slides, folder = [], tmp_path / "ann"
    folder.mkdir()
    for name in ("A", "B", "C"):
        path = tmp_path / f"{name}.tif"
        path.write_bytes(slide.read_bytes())
        slides.append(path)
        (folder / f"{name}.tif.geojson").write_text(json.dumps(collection(FEATURES[:2])))  # QuPath's "A.tif" names
    out = tmp_path / "ds"
    r = run(*slides, "-o", out, "-a", folder, "--mpp", MPP * 2, "--val-slides", "B", "--quiet")
    assert r.exit_code == 0, r.output
    split = json.loads((out / "split.json").read_text())
    assert {n[0] for n in split["train"]} == {"A", "C"} and {n[0] for n in split["val"]} == {"B"}
    assert split["test"] == []
    assert json.loads((out / "dataset.json").read_text())["mpp"] == pytest.approx(MPP * 2)


def test_rasterize_is_exact_at_pixel_centres():
    from shapely.geometry import Polygon

    # corners on pixel borders at scale 2.5: pixel (r, c) is in iff its centre is
    p = Polygon([(2.5, 5), (20, 5), (20, 12.5), (2.5, 12.5)], [[(5, 7.5), (10, 7.5), (10, 10), (5, 10)]])
    inside = rasterize(p, (8, 10), 2.5, (0, 0))
    yy, xx = np.mgrid[0:8, 0:10]
    cx, cy = (xx + 0.5) * 2.5, (yy + 0.5) * 2.5
    expected = (cx > 2.5) & (cx < 20) & (cy > 5) & (cy < 12.5) & ~((cx > 5) & (cx < 10) & (cy > 7.5) & (cy < 10))
    np.testing.assert_array_equal(inside, expected)
    assert not rasterize(p, (8, 10), 2.5, (100, 100)).any()  # a piece elsewhere


class ColourBackend(Backend):
    """A stand-in network (fast, deterministic): the class of each stride-8 cell from its mean colour."""

    name = "colour"

    def load(self) -> None:
        self.description = ModelDescription(classes=("background", "benign", "tumour"), mpp=2.0, tile_size=128)

    def infer(self, batch: np.ndarray) -> BackendOutput:
        b, h, w, _ = batch.shape
        cells = batch.reshape(b, h // 8, 8, w // 8, 8, 3).mean(axis=(2, 4))
        labels = np.digitize(cells[..., 1], [70, 100]).astype(np.uint8)  # green: dark -> 0, mid -> 1, light -> 2
        probs = np.eye(3, dtype=np.float32)[labels].transpose(0, 3, 1, 2)
        return BackendOutput(labels, probs, probs.max(axis=(2, 3)))


def test_round_trip_through_segcls_infer_geojson(tmp_path):
    """segcls-infer --geojson, then segcls-prepare qupath of that slide and GeoJSON: the inferred label map
    comes back (exactly at the label map's resolution; >= 99 % away from region borders at another)."""
    from _runtime_models import tissue_image
    from scipy import ndimage

    from segcls.core.tiff import write_pyramid
    from segcls.runtime.pipeline import InferOptions, infer_slide

    model = ColourBackend()
    model.load()
    pixels = tissue_image(1200, 1600, seed=3)
    slide = tmp_path / "rt.tif"
    write_pyramid(
        slide, (1600, 1200), lambda lv, x, y, w, h: pixels[y : y + h, x : x + w], samples=3, tile=256, mpp=0.5
    )
    geojson = tmp_path / "rt.geojson"  # what `segcls-infer --geojson` runs (tests/test_cli_infer.py: the flag)
    opts = InferOptions(tile=256, overlap=32, progress=False, geojson=geojson)
    labels = infer_slide(slide, model, tmp_path / "rt.mask.tif", opts).labels
    classes = ["background", "benign", "tumour"]
    assert len(json.loads(geojson.read_text())["features"]) <= 3  # one MultiPolygon per class

    for mpp, exact in ((16.0, True), (5.0, False)):  # 16 um/px = the label map (stride 8 of 2 um/px)
        out = tmp_path / f"ds{mpp}"
        r = run(slide, "-o", out, "-a", geojson, "--mpp", mpp, "--classes", ",".join(classes), "--quiet")
        assert r.exit_code == 0, r.output
        scale = mpp / 0.5
        size = (int(1600 / scale), int(1200 / scale))
        got = assemble(out, size)
        # the inferred map at the output pixel centres (nearest), cut to the slide
        rows = ((np.arange(size[1]) + 0.5) * scale / 32).astype(int)
        cols = ((np.arange(size[0]) + 0.5) * scale / 32).astype(int)
        want = labels[np.ix_(rows, cols)]
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            edges = ndimage.morphological_gradient(want, size=3) > 0  # away from region borders
            assert (got == want)[~edges].mean() >= 0.99
            assert (want != 255).mean() > 0.2 and len(np.unique(want[want != 255])) >= 2  # a real test


def test_slides_with_and_without_an_mpp_are_not_mixed(tmp_path):
    """Without --mpp, a slide of unknown scale is cut at 1:1; a later slide with an mpp must not be
    resampled beside it into one dataset that records that mpp."""
    folder = sub(tmp_path, "ann")
    slides = [tmp_path / "A.tif", tmp_path / "B.tif"]
    write_slide(slides[0], mpp=None)
    write_slide(slides[1])
    for path in slides:
        (folder / f"{path.stem}.geojson").write_text(json.dumps(collection(FEATURES[:2])))
    r = run(*slides, "-o", tmp_path / "ds", "-a", folder, "--quiet")
    assert r.exit_code != 0 and "B.tif has a microns-per-pixel but an earlier slide has none" in r.output
    assert not (tmp_path / "ds").exists()
    r = run(*slides[::-1], "-o", tmp_path / "ds", "-a", folder, "--quiet")
    assert r.exit_code != 0 and "A.tif has no microns-per-pixel in its metadata" in r.output
