"""The mask written while the label map is filled: same file as a serial write, no early reads, no leftovers."""

from __future__ import annotations

import threading
import time

import numpy as np
import openslide
import pytest
import tifffile

from segcls.bench.mask_write import SerialMaskWriter, SyntheticSlide
from segcls.core.tiff import pyramid_sizes
from segcls.runtime.mask_writer import MaskWriter, write_mask
from segcls.runtime.stitch import make_stitcher
from segcls.runtime.tiling import TileGrid

COLORS = [(255, 0, 0), (0, 128, 255), (10, 200, 30)]


def label_map(h: int = 90, w: int = 70, seed: int = 0) -> np.ndarray:
    """Glass (255), one-class regions and a noisy band: uniform and mixed tiles at every level."""
    rng = np.random.default_rng(seed)
    lab = np.full((h, w), 255, np.uint8)
    lab[10:60, 5:40] = 1
    lab[30:80, 30:65] = rng.integers(0, 3, (50, 35))
    return lab


@pytest.mark.parametrize("workers", [1, 3])
def test_same_pixels_and_bytes_as_a_serial_write(tmp_path, workers):
    labels = label_map()
    size = (555, 713)  # the 70 x 90 map at 8 px per label px overhangs it (a grid padded to whole tiles)
    new = tmp_path / "new.tif"
    writer = MaskWriter(new, labels, size, COLORS, mpp=0.5, tile=64, classes=list("abc"), downsample=8, workers=workers)
    assert writer.finish() == pyramid_sizes(*size, 64)
    old = tmp_path / "old.tif"  # the writer before streaming, kept in the benchmark that compares the two
    SerialMaskWriter(old, labels, size, COLORS, 0.5, tile=64, classes=list("abc"), downsample=8).finish()
    with tifffile.TiffFile(new) as a, tifffile.TiffFile(old) as b:
        assert len(a.pages) == len(b.pages) == 5
        for pa, pb in zip(a.pages, b.pages, strict=True):
            np.testing.assert_array_equal(pa.asarray(), pb.asarray())
            assert pa.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert new.read_bytes() == old.read_bytes()  # uniform tiles reused, tiles compressed apart: same file


def test_streamed_mask_opens_in_openslide_and_equals_the_serial_one(tmp_path):
    final = label_map(seed=1)
    labels = np.full_like(final, 7)  # garbage in rows not yet final: a tile read too early would show it
    size = (560, 720)
    written = []
    rows_written = threading.Event()

    def progress(n):
        written.append(n)
        if len(written) == 3 * 9:  # level 0 has 12 rows of 9 tiles of 64 px (8 label rows)
            rows_written.set()

    path = tmp_path / "stream.tif"
    with MaskWriter(path, labels, size, COLORS, mpp=0.5, tile=64, progress=progress, downsample=8) as writer:
        for y in range(0, final.shape[0], 10):
            labels[y : y + 10] = final[y : y + 10]
            writer.rows_final(y + 10)
            if y == 20:  # label rows 0..29 final: tile rows 0..2 (label rows 0..23) can be written, no more
                assert rows_written.wait(30), "nothing was written before the label map was complete"
                time.sleep(0.5)
                assert len(written) == 3 * 9, "a tile over rows not yet final was written"
                assert not path.exists()  # renamed into place only by finish()
        writer.finish()
    reference = tmp_path / "reference.tif"
    write_mask(reference, final, size, COLORS, mpp=0.5, tile=64, downsample=8)
    assert path.read_bytes() == reference.read_bytes()
    slide = openslide.OpenSlide(path)
    assert slide.level_count == len(pyramid_sizes(*size, 64)) and slide.dimensions == size
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    palette = np.zeros((256, 3), np.uint8)
    palette[:3] = COLORS
    palette[255] = 255
    region = np.asarray(slide.read_region((0, 0), 0, size))[..., :3]
    np.testing.assert_array_equal(region, palette[np.repeat(np.repeat(final, 8, 0), 8, 1)[: size[1], : size[0]]])
    slide.close()


def test_leaving_without_finish_stops_the_writer_and_leaves_no_file(tmp_path):
    labels = label_map()
    writer = MaskWriter(tmp_path / "m.tif", labels, (560, 720), COLORS, None, tile=64, downsample=8)
    with pytest.raises(KeyboardInterrupt), writer:
        writer.rows_final(40)
        raise KeyboardInterrupt
    assert not writer._thread.is_alive()
    assert list(tmp_path.iterdir()) == []


def test_an_error_on_the_writer_thread_reaches_the_caller(tmp_path):
    def boom(n):
        raise OSError("disk full")

    labels = label_map()
    writer = MaskWriter(tmp_path / "m.tif", labels, (560, 720), COLORS, None, tile=64, progress=boom, downsample=8)
    with pytest.raises(OSError, match="disk full"), writer:
        writer.rows_final(labels.shape[0])
        writer.finish()
    assert list(tmp_path.iterdir()) == []


def stitch(mode: str, grid: TileGrid, labels: np.ndarray, on_final=None):
    """Stitch seeded random tile outputs into `labels` (tile row 1 skipped, as glass is); not finished."""
    rng = np.random.default_rng(0)
    extra = {} if on_final is None else {"on_final": on_final}
    stitcher = make_stitcher(mode, grid, labels, num_classes=3, **extra)
    n = grid.tile // 8
    for t in grid:
        probs = rng.random((3, n, n)).astype(np.float32)
        if t.row != 1:
            stitcher.add(t, probs.argmax(0).astype(np.uint8), probs)
    return stitcher


@pytest.mark.parametrize("mode", ["crop", "blend"])
def test_stitchers_report_rows_final_only_when_they_are(mode):
    grid = TileGrid((700, 500), 128, 32)
    final = np.full(grid.map_shape, 255, np.uint8)
    stitch(mode, grid, final).finish()
    labels = np.full(grid.map_shape, 255, np.uint8)
    reported = []

    def on_final(rows):  # rows reported final already hold their final values
        np.testing.assert_array_equal(labels[:rows], final[:rows])
        reported.append(rows)

    stitcher = stitch(mode, grid, labels, on_final)
    assert reported and 0 < reported[-1] < grid.map_shape[0]  # rows were final before the last tile
    stitcher.finish()
    assert reported[-1] == grid.map_shape[0] and reported == sorted(reported)
    np.testing.assert_array_equal(labels, final)


def test_crop_refuses_a_tile_row_after_its_rows_were_reported_final():
    grid = TileGrid((400, 400), 128, 32)
    labels = np.full(grid.map_shape, 255, np.uint8)
    stitcher = make_stitcher("crop", grid, labels)
    tiles = list(grid)
    n = grid.tile // 8
    stitcher.add(tiles[-1], np.zeros((n, n), np.uint8))
    with pytest.raises(ValueError, match="came after"):
        stitcher.add(tiles[0], np.zeros((n, n), np.uint8))


def test_bench_slide_has_glass_and_tissue_at_every_level():
    slide = SyntheticSlide(4096)
    assert slide.level_dimensions[-1] == (1024, 1024) and slide.mpp == 0.5
    thumb = slide.get_thumbnail((256, 256))
    glass = (thumb > 240).all(axis=2)
    assert 0.1 < glass.mean() < 0.9
    a = slide.read_region((1024, 1024), 0, (64, 64))
    b = slide.read_region((1024, 1024), 1, (32, 32))
    assert a.shape == (64, 64, 3) and b.shape == (32, 32, 3)


def test_bench_run_has_its_keys_and_both_writers_write_the_same_mask(tmp_path_factory, tmp_path):
    from _runtime_models import exported_onnx

    from segcls.bench.mask_write import run_once, summarise
    from segcls.runtime import mask_writer

    model = exported_onnx(tmp_path_factory)  # reads at 2 um/px: a 2048 px slide is a 512 px read frame
    runs = [run_once(2048, w, model, tmp_path / f"{w}.tif") for w in ("serial", "streamed")]
    assert mask_writer.MaskWriter is MaskWriter  # the serial writer was patched in for one run only
    for run in runs:
        assert {"e2e_s", "write_s", "write_share", "write_cpu_s", "infer_s", "peak_rss_mb", "tiles_run"} <= set(run)
        assert run["tiles_run"] >= 1 and 0 <= run["write_share"] < 1
    assert (tmp_path / "serial.tif").read_bytes() == (tmp_path / "streamed.tif").read_bytes()
    assert [row["writer"] for row in summarise(runs)] == ["serial", "streamed"]
