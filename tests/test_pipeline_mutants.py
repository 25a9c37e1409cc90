"""Behaviour of the slide pipeline that mutation testing found unguarded (docs/mutation.md): option checks, the
thread budget, the run summary (timings, areas, slide class), the mask's size and placement, reader errors,
progress output, which thumbnails are read. Through infer_slide, InferOptions, open_model and reader_budget
and what they write, so the tests survive pipeline.py being split into modules.

The backends here are ColourBackend (labels from the pixels' colour, instant) and a slowed-down copy of it.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tifffile
from _runtime_models import exported_onnx, save_checkpoint
from PIL import Image
from test_pipeline import ArraySlide, ColourBackend

from segcls.core.errors import SegclsError, SlideError
from segcls.runtime.cores import available_cores
from segcls.runtime.pipeline import InferOptions, infer_slide, open_model, reader_budget

RED, GREEN, BLUE = (200, 60, 40), (50, 190, 70), (40, 60, 180)


def colour() -> ColourBackend:
    backend = ColourBackend()
    backend.load()
    return backend


def halves(height: int = 480, width: int = 624, split: int = 312) -> np.ndarray:
    """Red left of column `split`, green right of it: ColourBackend calls them classes 0 and 1."""
    image = np.empty((height, width, 3), np.uint8)
    image[:, :split], image[:, split:] = RED, GREEN
    return image


@pytest.mark.parametrize(
    ("field", "bad", "good", "message"),
    [
        ("batch", 0, 1, "--batch must be >= 1, got 0"),
        ("sessions", 0, 1, "--sessions must be >= 1, got 0"),
        ("prefetch", -1, 0, "prefetch must be >= 0, got -1"),
        ("geojson_min_area", -1.0, 0.0, "--geojson-min-area must be >= 0, got -1.0"),
        ("mpp", 0.0, 0.1, "--mpp must be > 0, got 0.0"),
        ("mpp", -2.0, 0.1, "--mpp must be > 0, got -2.0"),
        ("slide_mpp", -0.5, 0.5, "--slide-mpp must be > 0, got -0.5"),
        ("out_mpp", -4.0, 4.0, "--out-mpp must be > 0, got -4.0"),
    ],
)
def test_options_refuse_values_out_of_range_and_take_the_smallest_valid_one(field, bad, good, message):
    with pytest.raises(SegclsError) as error:
        InferOptions(**{field: bad})
    assert str(error.value) == message
    assert getattr(InferOptions(**{field: good}), field) == good


def test_outputs_are_listed_by_kind_with_the_mask_last(tmp_path):
    opts = InferOptions(summary=str(tmp_path / "s.json"), probs=tmp_path / "p.npy")
    outputs = opts.outputs(str(tmp_path / "m.tif"))
    assert list(outputs) == ["probs", "summary", "mask"]
    assert outputs == {"probs": tmp_path / "p.npy", "summary": tmp_path / "s.json", "mask": tmp_path / "m.tif"}


def test_open_model_gives_onnx_runtime_every_core_in_two_sessions_and_torch_neither(tmp_path_factory):
    onnx = exported_onnx(tmp_path_factory)
    with open_model(onnx, "onnxruntime", threads=3) as backend:  # auto may measure OpenVINO faster here
        assert (backend.threads, backend.sessions) == (3, 2)
    with open_model(onnx, "onnxruntime", sessions=1) as backend:
        assert (backend.threads, backend.sessions) == (available_cores(), 1)
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("pt") / "model.pt")
    with open_model(checkpoint, threads=3, sessions=2) as backend:  # a torch model takes no ORT budget
        assert backend.name == "torch"


def test_readers_beside_a_gpu_are_capped_at_32_and_at_least_2():
    assert reader_budget("auto", False, cores=64) == 32
    assert reader_budget("auto", False, cores=33) == 32
    assert reader_budget("auto", False, cores=1) == 2
    assert reader_budget("auto", True, cores=7) == 1 and reader_budget("auto", True, cores=24) == 3


THUMBNAIL_S, READ_S, INFER_S = 1.1, 0.1, 0.05  # reads slower than inference: the backend waits for them


class SlowSlide(ArraySlide):
    """Reading a thumbnail takes THUMBNAIL_S, a region READ_S: the timings must find them where they are."""

    def get_thumbnail(self, max_size):
        time.sleep(THUMBNAIL_S)
        return super().get_thumbnail(max_size)

    def read_region(self, location, level, size):
        time.sleep(READ_S)
        return super().read_region(location, level, size)


class SlowColour(ColourBackend):
    def infer(self, batch):
        time.sleep(INFER_S)
        return super().infer(batch)


def test_timings_measure_what_they_name(tmp_path):
    """tissue: the detection thumbnail; read: every region, summed; infer: the backend, less its waits for the
    readers; write: after inference (the overlay's thumbnail); each within the total, the total within the
    call; the rates are the tiles over those times."""
    backend = SlowColour()
    backend.load()
    opts = InferOptions(tile=128, overlap=16, batch=2, workers=1, trim=False, overlay=tmp_path / "o.png")
    opts.progress = False
    start = time.perf_counter()
    result = infer_slide(SlowSlide(halves(384, 512)), backend, tmp_path / "m.tif", opts)
    wall = time.perf_counter() - start
    s = result.summary
    t, run = s["timings_s"], s["tiles"]["run"]
    batches = -(-run // 2)
    assert run >= 4
    ms = 0.001  # the summary's timings are rounded to ms
    assert t["tissue"] >= THUMBNAIL_S - ms and t["write"] >= THUMBNAIL_S - ms  # detection, then the overlay's own
    assert run * READ_S - ms <= t["read"] <= t["total"]  # one reader: its reads never overlap
    assert batches * INFER_S - ms <= t["infer"] <= t["total"]
    assert 0 <= t["wait"] <= t["total"] and 0 <= t["stitch"] <= t["total"]
    assert t["tissue"] + t["infer"] + t["write"] <= t["total"] + 0.002 <= wall + 0.002
    assert s["tiles_per_s"] == pytest.approx(run / t["total"], rel=0.01)
    assert s["infer_tiles_per_s"] == pytest.approx(run / t["infer"], rel=0.01)


def test_summary_areas_tiles_and_mpp_of_a_slide_read_at_a_quarter_of_its_resolution(tmp_path):
    """A 0.5 um/px slide read at 2 um/px: a label-map pixel is 32 level-0 px = 16 um, 2.56e-4 mm^2. Tissue
    (the top-left 256 x 256 level-0 px, red) lies in one tile core of 64 read px; the other cores are glass."""
    image = np.full((1024, 1024, 3), 245, np.uint8)
    image[:256, :256] = np.clip(np.random.default_rng(0).normal(RED, 12, (256, 256, 3)), 0, 255)
    opts = InferOptions(mpp=2.0, tile=96, overlap=16, trim=False, summary=tmp_path / "s.json", progress=False)
    result = infer_slide(ArraySlide(image, mpp=0.5), colour(), tmp_path / "m.tif", opts)
    s = json.loads((tmp_path / "s.json").read_text())
    assert s == result.summary
    assert s["mpp"] == 2.0 and s["read_size"] == [256, 256] and s["slide_mpp"] == 0.5
    assert s["tiles"] == {"total": 16, "run": 1, "skipped": 15, "input_mpx": round(96 * 96 / 1e6, 3)}
    counts = np.bincount(result.labels.ravel(), minlength=256)
    assert counts[0] == 64  # the tissue's 8 x 8 label-map pixels, all red
    px_mm2 = (32 * 0.5 / 1000) ** 2
    assert s["area_mm2"] == {"a": round(64 * px_mm2, 6), "b": 0.0, "c": 0.0}
    assert s["tissue_mm2"] == round(64 * px_mm2, 6)
    assert s["readers"] == reader_budget("auto", True) and s["device"] == "cpu" and s["backend"] == "colour"
    assert s["options"]["summary"] == str(tmp_path / "s.json") and s["outputs"]["mask"] == str(tmp_path / "m.tif")


def test_the_read_mpp_in_the_summary_has_six_decimals(tmp_path):
    opts = InferOptions(level=0, tile=128, overlap=16, tissue="none", progress=False)
    result = infer_slide(ArraySlide(halves(128, 128, 64), mpp=0.12345678), colour(), tmp_path / "m.tif", opts)
    assert result.summary["mpp"] == 0.123457 and result.summary["slide_mpp"] == 0.12345678


def test_the_slide_class_is_each_class_best_score_over_every_batch(tmp_path):
    """Scores are the maximum over all tiles of all batches, class by class (a blue tile in the last batch,
    a red one in the first)."""
    image = np.empty((128, 640, 3), np.uint8)
    image[:, :128] = (150, 20, 20)  # first tile: red 150
    image[:, 128:512] = (30, 120, 30)  # green 120
    image[:, 512:] = (10, 10, 210)  # last tile: blue 210
    opts = InferOptions(tile=128, overlap=0, batch=2, tissue="none", progress=False)
    s = infer_slide(ArraySlide(image), colour(), tmp_path / "m.tif", opts).summary
    assert s["slide_class"]["class"] == "c"
    assert s["slide_class"]["scores"] == pytest.approx({"a": 150 / 255, "b": 120 / 255, "c": 210 / 255})


def test_an_out_mpp_coarser_than_the_slide_gives_at_least_one_pixel(tmp_path):
    opts = InferOptions(tile=128, overlap=16, tissue="none", out_mpp=5000.0, progress=False)
    infer_slide(ArraySlide(halves()), colour(), tmp_path / "m.tif", opts)
    assert tifffile.imread(tmp_path / "m.tif", level=0).shape == (1, 1)


def test_a_mask_at_a_non_integer_scale_of_the_label_map_keeps_the_boundary_in_place(tmp_path):
    """At 3 um/px a mask pixel is 1.5 slide px and a label-map pixel 5.33 mask px: the red|green boundary at
    slide column 312 must land at mask column 208."""
    opts = InferOptions(tile=128, overlap=16, tissue="none", out_mpp=3.0, progress=False)
    infer_slide(ArraySlide(halves()), colour(), tmp_path / "m.tif", opts)
    mask = tifffile.imread(tmp_path / "m.tif", level=0)
    assert mask.shape == (320, 416)
    assert (mask[:, :207] == 0).all() and (mask[:, 209:] == 1).all()


class BrokenSlide(ArraySlide):
    def __init__(self, image, error: Exception) -> None:
        super().__init__(image, path="broken.svs")
        self.error = error

    def read_region(self, location, level, size):
        if location[0] >= 100:
            raise self.error
        return super().read_region(location, level, size)


def test_a_reader_error_names_the_tile_and_a_segcls_error_passes_as_it_is(tmp_path):
    opts = InferOptions(tile=128, overlap=16, tissue="none", trim=False, progress=False)
    with pytest.raises(SlideError) as error:
        infer_slide(BrokenSlide(halves(), OSError("bad JPEG")), colour(), tmp_path / "m.tif", opts)
    # the first tile read from x >= 100: column 2 of row 0, its context reaching 16 px above the slide
    assert str(error.value) == "cannot read tile at read-frame (176, -16), level 0 of broken.svs: bad JPEG"
    with pytest.raises(SlideError) as error:
        infer_slide(BrokenSlide(halves(), SlideError("tile 3 is damaged")), colour(), tmp_path / "m.tif", opts)
    assert str(error.value) == "tile 3 is damaged"
    assert not (tmp_path / "m.tif").exists()


@pytest.mark.parametrize("progress", [False, True])
def test_a_progress_bar_only_when_asked(tmp_path, capfd, progress):
    opts = InferOptions(tile=128, overlap=16, tissue="none", progress=progress)
    infer_slide(ArraySlide(halves(), path="named.svs"), colour(), tmp_path / "m.tif", opts)
    out, err = capfd.readouterr()
    assert out == ""
    assert ("named.svs" in err) == progress


class Recording(ArraySlide):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[tuple[int, int]] = []

    def get_thumbnail(self, max_size):
        self.asked.append(tuple(max_size))
        return super().get_thumbnail(max_size)


def test_a_tissue_mask_file_needs_no_detection_thumbnail(tmp_path):
    Image.fromarray(np.full((48, 62), 255, np.uint8)).save(tmp_path / "tissue.png")
    slide = Recording(halves())
    opts = InferOptions(tile=128, overlap=16, tissue=tmp_path / "tissue.png", overlay=tmp_path / "o.png")
    opts.progress = False
    infer_slide(slide, colour(), tmp_path / "m.tif", opts)
    assert slide.asked == [(2048, 2048)]  # the overlay's only


def test_geojson_of_a_slide_without_mpp_needs_one_only_for_an_area_threshold(tmp_path):
    slide = ArraySlide(halves(), mpp=None)
    opts = InferOptions(level=0, tile=128, overlap=16, tissue="none", geojson=tmp_path / "m.geojson", progress=False)
    infer_slide(slide, colour(), tmp_path / "m.tif", opts)
    assert json.loads((tmp_path / "m.geojson").read_text())["type"] == "FeatureCollection"
    opts.geojson_min_area = 10.0
    with pytest.raises(SlideError, match=r"--geojson-min-area is in um\^2 but array.svs has no mpp: pass --slide-mpp"):
        infer_slide(slide, colour(), tmp_path / "n.tif", opts)


def test_by_default_a_cpu_backend_runs_tiles_cut_down_to_their_tissue(tmp_path):
    image = np.full((480, 624, 3), 245, np.uint8)
    image[40:120, 40:120] = RED  # a speck in the first tile's core
    opts = InferOptions(tile=256, overlap=32, progress=False)
    s = infer_slide(ArraySlide(image), colour(), tmp_path / "m.tif", opts).summary
    assert s["options"]["trim"] is True and s["tiles"]["run"] == 1
    assert s["tiles"]["input_mpx"] < 0.5 * 256 * 256 / 1e6


class BigSlide:
    """A 16384 x 8192 slide at the model's 2 um/px (no pixels held): glass with one red blob at the top left.
    Its label map is 2048 px wide, so tissue is detected on a full 2048 px thumbnail."""

    mpp, path, level_count, level_downsamples = 2.0, "big.svs", 1, (1.0,)
    dimensions = (16384, 8192)
    level_dimensions = ((16384, 8192),)
    BLOB = 512  # level-0 px

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []

    def get_thumbnail(self, max_size):
        self.asked.append(tuple(max_size))
        f = max(self.dimensions) // max(max_size)
        thumb = np.full((self.dimensions[1] // f, self.dimensions[0] // f, 3), 245, np.uint8)
        thumb[: self.BLOB // f, : self.BLOB // f] = RED
        return thumb

    def read_region(self, location, level, size):
        (x, y), (w, h) = location, size
        out = np.full((h, w, 3), 245, np.uint8)
        out[max(0, -y) : max(0, self.BLOB - y), max(0, -x) : max(0, self.BLOB - x)] = RED
        return out


def test_the_overlay_reuses_a_full_size_detection_thumbnail(tmp_path):
    slide = BigSlide()
    opts = InferOptions(tile=512, overlap=32, out_mpp=64.0, overlay=tmp_path / "o.png", progress=False)
    result = infer_slide(slide, colour(), tmp_path / "m.tif", opts)
    assert slide.asked == [(2048, 2048)]
    assert 0 < result.summary["tiles"]["run"] <= 4 and (result.labels[8:56, 8:56] == 0).all()
    assert Image.open(tmp_path / "o.png").size[1] == 1024  # drawn on that thumbnail (a legend beside it)


def test_tissue_scattered_down_a_column_is_split_too():
    """Two specks one above the other in a 1024 px tile: split into two small inputs, as side by side ones are."""
    from segcls.runtime.plan import trim_tiles
    from segcls.runtime.tiling import TileGrid

    grid = TileGrid((1024, 1024), 1024, 64)  # one core of 112 map px
    tissue = np.zeros(grid.map_shape, dtype=bool)
    tissue[2:6, 50:54] = tissue[100:104, 50:54] = True

    def keep(box):
        x0, y0, x1, y1 = box
        return tissue[y0:y1, x0:x1]

    (whole,) = trim_tiles(grid, list(grid), keep, splits=0)
    parts = trim_tiles(grid, list(grid), keep, splits=2)
    assert all(w.height < whole.height / 2 for w in parts)  # no input spans the gap between the specks
    assert sum(w.width * w.height for w in parts) < whole.width * whole.height
