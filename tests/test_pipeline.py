"""infer_slide end to end on in-memory slides: agreement with whole-image inference, seams, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _runtime_models import exported_onnx, tissue_image
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from segcls.core.errors import SegclsError, SlideError
from segcls.runtime.backends import Backend, open_backend
from segcls.runtime.pipeline import InferOptions, infer_slide
from segcls.runtime.plan import detection_side
from segcls.runtime.tiling import TileGrid

PAD = 128  # white margin for whole-image inference: the slide sits on white glass, as tiles see it


class ArraySlide:
    """A one-level slide held in memory (the Slide interface the pipeline uses)."""

    def __init__(self, image: np.ndarray, mpp: float | None = 2.0, path: str = "array.svs") -> None:
        self.image, self.mpp, self.path = image, mpp, Path(path)
        h, w = image.shape[:2]
        self.dimensions = (w, h)
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.level_count = 1

    def read_region(self, location, level, size):
        (x, y), (w, h) = location, size
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = self.image.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self.image[y0:y1, x0:x1]
        return out

    def get_thumbnail(self, max_size):
        f = max(1, int(np.ceil(max(self.dimensions) / max(max_size))))
        return self.image[::f, ::f]

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = open_backend(exported_onnx(tmp_path_factory))
    yield b
    b.close()


@pytest.fixture(scope="module")
def image():
    return tissue_image(480, 624, seed=3)


@pytest.fixture(scope="module")
def whole(backend, image):
    """Whole-image inference on the image on white glass: labels and probs at stride 8."""
    padded = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)), constant_values=255)
    out = backend.infer(padded[None])
    h, w = -(-image.shape[0] // 8), -(-image.shape[1] // 8)
    p = PAD // 8
    return out.labels[0, p : p + h, p : p + w], out.probs[0, :, p : p + h, p : p + w]


def run(backend, image, tmp_path, **kw):
    opts = InferOptions(tissue=kw.pop("tissue", "none"), progress=False, **kw)
    probs = tmp_path / "probs.npy"
    opts.probs = probs
    result = infer_slide(ArraySlide(image), backend, tmp_path / "mask.tif", opts)
    return result, result.labels, np.load(probs).astype(np.float32)


def seam_jump(probs: np.ndarray, grid: TileGrid) -> float:
    """Mean |difference| of probs across the borders of tile cores (where crop mode switches tile)."""
    step = grid.step // 8
    xs = [x for x in range(step, probs.shape[2], step)]
    ys = [y for y in range(step, probs.shape[1], step)]
    cols = np.abs(probs[:, :, xs] - probs[:, :, [x - 1 for x in xs]]).mean()
    rows = np.abs(probs[:, ys, :] - probs[:, [y - 1 for y in ys], :]).mean()
    return float((cols + rows) / 2)


def test_crop_agrees_with_whole_image(backend, image, whole, tmp_path):
    result, labels, _ = run(backend, image, tmp_path, tile=384, overlap=128, stitch="crop")
    expected = whole[0]
    assert labels.shape == expected.shape
    assert len(np.unique(expected)) >= 2  # a model that says one thing everywhere would prove nothing
    agreement = (labels == expected).mean()
    assert agreement >= 0.995, agreement
    assert result.summary["tiles"]["run"] == result.summary["tiles"]["total"] == 20


def test_too_little_context_is_detected(backend, image, whole, tmp_path):
    """The agreement criterion can fail: tiles with no context disagree with whole-image inference."""
    _, labels, _ = run(backend, image, tmp_path, tile=128, overlap=0, stitch="crop")
    assert (labels == whole[0]).mean() < 0.995


def test_blend_is_seamless(backend, image, whole, tmp_path):
    """Seam criterion: the jump in probs across tile-core borders is at most 10% (+0.005) above the jump
    whole-image inference has at the same places. Tiles without overlap (control) exceed it."""
    grid = TileGrid((image.shape[1], image.shape[0]), 384, 128)
    reference = seam_jump(whole[1], grid)
    _, labels, probs = run(backend, image, tmp_path, tile=384, overlap=128, stitch="blend")
    assert seam_jump(probs, grid) <= 1.1 * reference + 0.005
    assert (labels == whole[0]).mean() >= 0.98  # blending mixes in tile margins, which have less context
    control = TileGrid(grid.size, 128, 0)
    _, _, hard = run(backend, image, tmp_path, tile=128, overlap=0, stitch="crop")
    assert seam_jump(hard, control) > 1.1 * seam_jump(whole[1], control) + 0.005


class ReadAheadBackend(Backend):
    """Wraps a backend like a GPU backend that overlaps copies: takes batch k+1 before it returns batch k,
    and reuses one output buffer, so outputs handed back earlier are overwritten."""

    name = "read-ahead"

    def __init__(self, inner: Backend) -> None:
        super().__init__()
        self.inner, self.most_in_flight = inner, 0

    def load(self) -> None:
        self.description = self.inner.description

    def infer(self, batch):
        return self.inner.infer(batch)

    def infer_stream(self, batches):
        queue, buffer = [], None
        for batch in batches:
            queue.append(batch)
            self.most_in_flight = max(self.most_in_flight, len(queue))
            if len(queue) == 2:
                buffer = self._into(buffer, queue.pop(0))
                yield buffer
        for batch in queue:
            buffer = self._into(buffer, batch)
            yield buffer

    def _into(self, buffer, batch):
        out = self.inner.infer(batch)
        if buffer is not None and buffer.labels.shape == out.labels.shape:
            for dst, src in zip(buffer, out, strict=True):
                dst[...] = src
            return buffer
        return type(out)(*(np.array(a) for a in out))


def test_a_backend_that_reads_ahead_gets_the_same_result(backend, image, tmp_path):
    """Outputs come back one batch late from a reused buffer; the tiles they belong to must still match."""
    _, expected, _ = run(backend, image, tmp_path, tile=256, overlap=32, batch=3)
    ahead = ReadAheadBackend(backend)
    _, labels, _ = run(ahead, image, tmp_path, tile=256, overlap=32, batch=3)
    assert ahead.most_in_flight == 2
    np.testing.assert_array_equal(labels, expected)


def test_tissue_skips_glass_and_labels_it_255(backend, tmp_path):
    image = np.full((512, 768, 3), 245, np.uint8)
    rng = np.random.default_rng(0)
    image[64:256, 64:320] = np.clip(rng.normal((200, 90, 170), 20, (192, 256, 3)), 0, 255)  # stained tissue
    opts = InferOptions(tile=256, overlap=32, progress=False)
    result = infer_slide(ArraySlide(image), backend, tmp_path / "m.tif", opts)
    tiles = result.summary["tiles"]
    assert 0 < tiles["run"] < tiles["total"]
    mask = tifffile.imread(tmp_path / "m.tif", level=0)
    assert mask.shape == (512, 768)
    assert (mask[300:, 400:] == 255).all()  # glass
    assert (mask[72:248, 72:312] != 255).all()  # tissue


def test_summary_json(backend, image, tmp_path):
    opts = InferOptions(tile=256, overlap=32, tissue="none", summary=tmp_path / "s.json", progress=False)
    infer_slide(ArraySlide(image), backend, tmp_path / "mask.tif", opts)
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["size"] == [624, 480] and s["mpp"] == 2.0 and s["level"] == 0
    assert s["backend"] == "onnxruntime" and s["device"] == "CPUExecutionProvider"
    assert s["precision"] == "fp32" and s["backend_choice"] is None  # a backend opened by name, not by auto
    assert set(s["timings_s"]) >= {"read", "infer", "stitch", "write", "total"}
    assert s["slide_class"]["class"] in ("background", "benign", "tumour")
    # every label-map pixel is one of the classes: areas add up to the slide's area
    total = sum(s["area_mm2"].values())
    assert total == pytest.approx(s["read_size"][0] * s["read_size"][1] * 4e-6, rel=0.05)


def test_slide_without_mpp_needs_slide_mpp_or_level(backend, image, tmp_path):
    slide = ArraySlide(image, mpp=None)
    with pytest.raises(SlideError, match="--slide-mpp"):
        infer_slide(slide, backend, tmp_path / "m.tif", InferOptions(progress=False))
    assert not (tmp_path / "m.tif").exists()
    opts = InferOptions(level=0, tile=256, overlap=32, tissue="none", progress=False)
    result = infer_slide(slide, backend, tmp_path / "m.tif", opts)
    assert result.summary["mpp"] is None and (tmp_path / "m.tif").is_file()


def test_interrupt_leaves_no_outputs(backend, image, tmp_path, monkeypatch):
    calls = []

    def interrupted(batch):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(backend, "infer", interrupted)
    opts = InferOptions(tile=256, overlap=32, tissue="none", probs=tmp_path / "p.npy", progress=False)
    with pytest.raises(KeyboardInterrupt):
        infer_slide(ArraySlide(image), backend, tmp_path / "m.tif", opts)
    assert calls and list(tmp_path.iterdir()) == []


def test_an_error_after_inference_leaves_no_mask(backend, image, tmp_path, monkeypatch):
    """The mask is written while inference runs, but renamed into place only after every other output."""
    import segcls.runtime.geojson

    def broken(*args, **kwargs):
        for thread in threading.enumerate():  # let the mask writer finish everything it can first
            if thread.name == "segcls-mask":
                thread.join()
        raise OSError("disk full")

    monkeypatch.setattr(segcls.runtime.geojson, "write_geojson", broken)
    opts = InferOptions(tile=256, overlap=32, tissue="none", geojson=tmp_path / "m.geojson", progress=False)
    with pytest.raises(OSError, match="disk full"):
        infer_slide(ArraySlide(image), backend, tmp_path / "m.tif", opts)
    assert list(tmp_path.iterdir()) == []


def test_bad_options_are_refused(backend, image, tmp_path):
    with pytest.raises(SegclsError, match="--overlap"):
        infer_slide(ArraySlide(image), backend, tmp_path / "m.tif", InferOptions(overlap=24, progress=False))
    with pytest.raises(SegclsError, match="--stitch"):
        InferOptions(stitch="median")
    with pytest.raises(SegclsError, match="does not exist"):
        infer_slide(ArraySlide(image), backend, tmp_path / "no" / "m.tif", InferOptions(progress=False))


PEAK_SCRIPT = """
import numpy as np
from segcls.core.description import ModelDescription
from segcls.runtime.backends.base import Backend, BackendOutput
from segcls.runtime.pipeline import InferOptions, infer_slide
from segcls.runtime.plan import detection_side


def peak_mb():  # VmHWM: peak resident set of this process (ru_maxrss would include the parent's)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


class Tiny(Backend):
    name = "tiny"

    def load(self):
        self.description = ModelDescription(classes=("a", "b", "c", "d"), mpp=1.0)

    def infer(self, batch):
        small = batch[:, ::8, ::8].astype(np.float32) / 255
        probs = np.stack([small[..., 0], small[..., 1], small[..., 2], 1 - small[..., 0]], 1)
        return BackendOutput(probs.argmax(1).astype(np.uint8), probs, probs.max((2, 3)))


class Procedural:
    mpp, path, level_count, level_downsamples = 1.0, "big.svs", 1, (1.0,)

    def __init__(self, w, h):
        self.dimensions = (w, h)
        self.level_dimensions = ((w, h),)

    def read_region(self, location, level, size):
        (x, y), (w, h) = location, size
        colour = ((x // 3000) * 50 % 256, (y // 2000) * 70 % 256, (x + y) // 5000 * 30 % 256)
        return np.full((h, w, 3), colour, np.uint8)


backend = Tiny()
backend.load()
opts = InferOptions(tile=1024, overlap=64, batch=4, stitch={stitch!r}, tissue="none", out_mpp=4.0, progress=False)
import PIL.Image, tifffile, tqdm, segcls.runtime.mask_writer, segcls.runtime.slide  # noqa: E401 - lazy imports
before = peak_mb()
infer_slide(Procedural({w}, {h}), backend, {out!r}, opts)
print(before, peak_mb())
"""


@pytest.mark.parametrize("stitch", ["crop", "blend"])
def test_peak_memory_is_bounded(tmp_path, stitch):
    """A 20k x 20k slide: 1.2 GB of RGB, a 6 MB label map. Expected growth: label map 6 MB + ready batches
    (4 x 4 x 1024^2 x 3 = 50 MB) + blend band (5 x 128 x 2500 x 4 = 6 MB) + 1024^2 mask tiles; a float
    accumulator of the whole map alone would be 5 x 6.25M x 4 B = 125 MB."""
    script = PEAK_SCRIPT.format(stitch=stitch, w=20_000, h=20_000, out=str(tmp_path / "big.tif"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = (float(v) for v in done.stdout.split())
    print(f"{stitch}: peak RSS {before:.0f} MB -> {after:.0f} MB")
    batches = 4 * 4 * 1024 * 1024 * 3 / 2**20  # (workers + prefetch + 1) x batch x tile^2 x 3
    label_map = 2500 * 2500 / 2**20
    band = 5 * 128 * 2500 * 4 / 2**20 if stitch == "blend" else 0
    # 60 MB slack: network outputs, allocator, thread stacks, mask tiles (measured growth: 78-95 MB).
    # A float accumulator of the whole map would add 125 MB on top of the batches: this bound fails it.
    assert after - before < batches + label_map + band + 60


def test_user_tissue_mask_and_out_mpp(backend, image, tmp_path):
    """A mask image (nonzero = tissue, any size) limits the tiles; --out-mpp sets the mask's resolution."""
    from PIL import Image

    user = np.zeros((48, 62), np.uint8)
    user[:, :20] = 255  # left third of the slide
    Image.fromarray(user).save(tmp_path / "tissue.png")
    opts = InferOptions(tile=256, overlap=32, tissue=tmp_path / "tissue.png", out_mpp=4.0, progress=False)
    result = infer_slide(ArraySlide(image), backend, tmp_path / "m.tif", opts)
    assert 0 < result.summary["tiles"]["run"] < result.summary["tiles"]["total"]
    assert (result.labels[:, 40:] == 255).all() and (result.labels[:, :18] != 255).all()
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        page = tif.pages[0]
        assert (page.imagewidth, page.imagelength) == (312, 240)  # 624 x 480 at 2 um/px -> 4 um/px
        assert page.tags["XResolution"].value[0] / page.tags["XResolution"].value[1] == pytest.approx(2500)


class ColourBackend(Backend):
    """Labels from the pixels themselves (numpy only, instant), recording where each input batch lives."""

    name = "colour"

    def __init__(self) -> None:
        super().__init__()
        self.buffers: set[int] = set()
        self.kept: list[np.ndarray] = []  # kept alive, so a fresh array per batch would get a fresh address

    def load(self) -> None:
        from segcls.core.description import ModelDescription

        self.description = ModelDescription(classes=("a", "b", "c"), mpp=2.0)

    def infer(self, batch):
        from segcls.runtime.backends.base import BackendOutput

        self.buffers.add(batch.__array_interface__["data"][0])
        self.kept.append(batch)
        small = batch[:, 4::8, 4::8].astype(np.float32) / 255
        probs = np.moveaxis(small, -1, 1)
        return BackendOutput(probs.argmax(1).astype(np.uint8), probs, probs.max((2, 3)))


@pytest.mark.parametrize("ahead", [False, True])
def test_batch_buffers_are_reused_not_grown(image, tmp_path, ahead):
    """Many readers fill a fixed ring of (3 + prefetch) batch buffers whatever the number of batches or
    readers, and a backend that holds a batch while taking the next still gets intact pixels."""
    reference = ColourBackend()
    reference.load()
    _, expected, _ = run(reference, image, tmp_path, tile=64, overlap=16, batch=2, workers=1)
    colour = ColourBackend()
    colour.load()
    backend = ReadAheadBackend(colour) if ahead else colour
    backend.load()
    result, labels, _ = run(backend, image, tmp_path, tile=64, overlap=16, batch=2, workers=4, prefetch=1)
    assert result.summary["tiles"]["run"] == 300 and result.summary["readers"] == 4  # 150 batches
    np.testing.assert_array_equal(labels, expected)
    assert 2 <= len(colour.buffers) <= 4


def test_workers_auto_budget():
    from segcls.runtime.cores import reader_budget

    assert reader_budget("auto", True, cores=2) == 1  # the backend keeps both cores
    assert reader_budget("auto", True, cores=16) == 2
    assert reader_budget("auto", False, cores=16) == 15  # a GPU box: readers on every core
    assert reader_budget("auto", False, cores=2) == 2
    assert reader_budget(3, True, cores=2) == 3
    assert InferOptions(workers="auto").workers == "auto" and InferOptions(workers="2").workers == 2
    for bad in ("many", 0):
        with pytest.raises(SegclsError, match="--workers"):
            InferOptions(workers=bad)


def test_trimmed_tiles_cost_less_and_agree_with_whole_image_inference(backend, tmp_path):
    """Tiles cut down to their cores' tissue run less network input, and every tissue pixel still agrees
    with whole-image inference as well as whole tiles do."""
    image = tissue_image(704, 832, seed=5)  # white glass with blobs: many cores are mostly glass
    padded = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)), constant_values=255)
    p = PAD // 8
    expected = backend.infer(padded[None]).labels[0, p : p + 88, p : p + 104]
    runs = {}
    for trim in (False, True):
        opts = InferOptions(tile=384, overlap=128, trim=trim, progress=False)
        runs[trim] = infer_slide(ArraySlide(image), backend, tmp_path / f"{trim}.tif", opts)
    whole, trimmed = runs[False], runs[True]
    tissue = whole.labels != 255
    assert 0.1 < tissue.mean() < 0.9
    np.testing.assert_array_equal(trimmed.labels != 255, tissue)  # trimming loses no tissue pixel
    assert (whole.labels[tissue] == expected[tissue]).mean() >= 0.995
    assert (trimmed.labels[tissue] == expected[tissue]).mean() >= 0.995
    cost = {k: r.summary["tiles"]["input_mpx"] for k, r in runs.items()}
    assert cost[True] < 0.8 * cost[False]
    assert cost[False] == pytest.approx(whole.summary["tiles"]["run"] * 384**2 / 1e6, abs=1e-3)


class FixedTileColourBackend(ColourBackend):
    """ColourBackend that runs on the CPU or not, and wants a fixed tile or not; records its input sizes."""

    def __init__(self, on_cpu: bool, fixed_tile: bool) -> None:
        super().__init__()
        self.cpu, self.fixed, self.sizes = on_cpu, fixed_tile, set()

    def infer(self, batch):
        self.sizes.add(batch.shape[1:3])
        return super().infer(batch)

    @property
    def on_cpu(self) -> bool:
        return self.cpu

    @property
    def fixed_tile(self) -> bool:
        return self.fixed


@pytest.mark.parametrize(
    ("on_cpu", "fixed_tile", "trim", "stitch", "trimmed"),
    [
        (True, False, True, "crop", True),
        (False, False, True, "crop", True),  # a device that runs any input size in proportion to its area
        (True, False, False, "crop", False),  # --no-trim
        (True, False, True, "blend", False),  # blending weighs whole tiles
        (False, True, True, "crop", False),  # one input shape for engines, autotuning, batches
        (True, True, True, "crop", False),
    ],
)
def test_only_backends_without_a_fixed_tile_in_crop_mode_trim_tiles(
    image, tmp_path, on_cpu, fixed_tile, trim, stitch, trimmed
):
    colour = FixedTileColourBackend(on_cpu, fixed_tile)
    colour.load()
    opts = InferOptions(tile=128, overlap=32, batch=3, trim=trim, stitch=stitch, tissue="none", progress=False)
    result = infer_slide(ArraySlide(image), colour, tmp_path / "m.tif", opts)
    assert (colour.sizes != {(128, 128)}) == trimmed
    assert all(h % 16 == 0 and w % 16 == 0 and h <= 128 and w <= 128 for h, w in colour.sizes)
    assert (result.labels != 255).all()  # no tissue mask: every pixel labelled either way


def test_batches_hold_tiles_of_one_size():
    from segcls.runtime.feed import batch_tiles
    from segcls.runtime.tiling import Tile

    sizes = [64, 64, 64, 64, 64, 32, 32, 64]
    tiles = [Tile(0, i, 0, 0, s, 64) for i, s in enumerate(sizes)]
    batches = list(batch_tiles(tiles, 3))
    assert [[t.col for t in b] for b in batches] == [[0, 1, 2], [3, 4], [5, 6], [7]]
    assert list(batch_tiles([], 3)) == []


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), splits=st.integers(0, 3), specks=st.integers(0, 6))
def test_trimmed_tiles_own_every_tissue_pixel_with_overlap_context(seed, splits, specks):
    """Whatever the tissue, each tissue pixel of a core lies at least `overlap` px inside one of the
    inputs its tile was trimmed (and split) into, and splitting never costs more than the bounding box."""
    from segcls.runtime.plan import trim_tiles

    grid = TileGrid((700, 500), 256, 32)  # 4 x 3 cores of 24 map px, the last ones cut short
    rng = np.random.default_rng(seed)
    tissue = np.zeros(grid.map_shape, dtype=bool)
    for _ in range(specks):
        y, x = rng.integers(0, grid.map_shape[0]), rng.integers(0, grid.map_shape[1])
        tissue[y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = True

    def keep(box):
        x0, y0, x1, y1 = box
        return tissue[y0:y1, x0:x1]

    tiles = list(grid)
    owned = np.zeros(grid.map_shape, dtype=bool)
    m = grid.overlap // 8
    trimmed = trim_tiles(grid, tiles, keep, splits)
    for w in trimmed:
        ox, oy = grid.origin(w)
        x0, y0, x1, y1 = grid.core(w)
        ys = slice(max(y0, oy + m), min(y1, oy + w.height // 8 - m))
        owned[ys, max(x0, ox + m) : min(x1, ox + w.width // 8 - m)] = True
    assert owned[tissue].all()
    assert [(t.row, t.col) for t in trimmed] == sorted((t.row, t.col) for t in trimmed)  # row-major still
    area = sum(w.width * w.height for w in trimmed)
    assert area <= sum(w.width * w.height for w in trim_tiles(grid, tiles, keep, 0))
    assert area <= len({(t.row, t.col) for t in trimmed}) * 256**2


def test_scattered_tissue_is_split_into_smaller_inputs():
    from segcls.runtime.plan import trim_tiles

    grid = TileGrid((1024, 1024), 1024, 64)  # one core of 896 px = 112 map px
    tissue = np.zeros(grid.map_shape, dtype=bool)
    tissue[2:6, 2:6] = tissue[100:104, 100:104] = True  # two specks in opposite corners

    def keep(box):
        x0, y0, x1, y1 = box
        return tissue[y0:y1, x0:x1]

    one = trim_tiles(grid, list(grid), keep, splits=0)
    two = trim_tiles(grid, list(grid), keep, splits=2)
    assert len(one) == 1 and len(two) == 2
    assert sum(w.width * w.height for w in two) < 0.1 * one[0].width * one[0].height


def test_tissue_detection_thumbnail_and_the_overlay_thumbnail(backend, tmp_path):
    image = np.full((512, 768, 3), 245, np.uint8)
    image[64:256, 64:320] = (200, 90, 170)
    asked = []

    class Recording(ArraySlide):
        def get_thumbnail(self, max_size):
            asked.append(tuple(max_size))
            return super().get_thumbnail(max_size)

    opts = InferOptions(tile=256, overlap=32, overlay=tmp_path / "o.png", progress=False)
    result = infer_slide(Recording(image), backend, tmp_path / "m.tif", opts)
    assert asked == [(1024, 1024), (2048, 2048)]  # detection: 768 / 8 px per label-map px, at least 1024
    assert Image.open(tmp_path / "o.png").size[1] == 512  # drawn on the full thumbnail (plus a legend)
    assert (result.labels[8:32, 8:40] != 255).all() and (result.labels[40:, 48:] == 255).all()


def test_tissue_is_detected_at_the_label_maps_resolution_within_bounds():
    assert detection_side((16384, 12288), 16) == 1024  # 0.5 um/px read at 1.0: 16 level-0 px per map px
    assert detection_side((40000, 30000), 16) == 2048  # capped: a large slide's mask is coarser than its map
    assert detection_side((24000, 18000), 16) == 1500
    assert detection_side((2967, 2220), 32) == 1024  # a small frame keeps enough pixels to find tissue on
