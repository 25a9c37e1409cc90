import json

import numpy as np
import openslide
import pytest
import tifffile

from segcls.core.errors import SegclsError
from segcls.synth.appearance import CLASSES, COLORS, label_region, render_region
from segcls.synth.slide import make_slide

W, H, TILE = 1300, 900, 256


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("slide")
    make_slide(root / "s.tif", W, H, mpp=0.5, seed=4, mask_path=root / "s_mask.tif", tile=TILE, progress=False)
    return root / "s.tif", root / "s_mask.tif"


def test_slide_opens_in_openslide(slide):
    with openslide.OpenSlide(slide[0]) as s:
        assert s.dimensions == (W, H)
        assert s.level_count > 1
        assert s.level_dimensions[1] == (650, 450)
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        region = np.asarray(s.read_region((0, 0), 0, (W, H)).convert("RGB"))
    with tifffile.TiffFile(slide[0]) as tif:
        assert tif.is_bigtiff
        assert all(page.compression == tifffile.COMPRESSION.JPEG for page in tif.pages)
        assert all(page.is_tiled and page.tilewidth == TILE for page in tif.pages)
    # JPEG of exactly what the model renders at level 0.
    expected, labels = render_region(0, 0, W, H, 0.5, seed=4)
    assert np.abs(region.astype(int) - expected).mean() < 6
    assert (labels == 255).any() or len(np.unique(labels)) > 1


def test_lower_level_is_rendered_at_its_own_mpp(slide):
    """Level 2 of a 0.5 um/px slide is the tissue at 2.0 um/px, as in a dataset made at 2.0 um/px."""
    with tifffile.TiffFile(slide[0]) as tif:
        level2 = tif.pages[2].asarray()
    expected, _ = render_region(0, 0, level2.shape[1], level2.shape[0], 2.0, seed=4)
    assert np.abs(level2.astype(int) - expected).mean() < 6


def test_mask_matches_slide_and_has_palette(slide):
    with openslide.OpenSlide(slide[1]) as m:
        assert m.dimensions == (W, H)
        assert float(m.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        meta = json.loads(m.properties["tiff.ImageDescription"])
        rgb0 = np.asarray(m.read_region((0, 0), 0, (W, H)).convert("RGB"))
    assert meta["classes"] == list(CLASSES) and meta["colors"] == [list(c) for c in COLORS]
    with tifffile.TiffFile(slide[1]) as tif:
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        labels0, labels1 = page.asarray(), tif.pages[1].asarray()
        for k, color in enumerate(COLORS):
            assert tuple(page.colormap[:, k] // 257) == color
    assert np.array_equal(labels0, label_region(0, 0, W, H, 0.5, seed=4))
    palette = np.array([*COLORS, *[(0, 0, 0)] * 251, (255, 255, 255)], np.uint8)
    assert np.array_equal(rgb0, palette[labels0])  # OpenSlide shows the classes in their colours
    # Level 1 is the same map at half resolution: nearest downsampling up to the region borders.
    assert labels1.shape == (450, 650)
    assert np.mean(labels1 == labels0[::2, ::2]) > 0.97


def test_seamless_tiles():
    """Any split of a region renders the same pixels: tiles never show seams."""
    whole, labels = render_region(37, 11, 300, 200, 0.5, seed=2)
    left, _ = render_region(37, 11, 150, 200, 0.5, seed=2)
    right, _ = render_region(187, 11, 150, 200, 0.5, seed=2)
    top, _ = render_region(37, 11, 300, 77, 0.5, seed=2)
    bottom, bottom_labels = render_region(37, 88, 300, 123, 0.5, seed=2)
    assert np.array_equal(whole, np.hstack([left, right]))
    assert np.array_equal(whole, np.vstack([top, bottom]))
    assert np.array_equal(labels[77:], bottom_labels)


def test_seamless_far_from_origin():
    x, y = 180_000, 95_000  # a 100k-class slide's far corner
    whole, _ = render_region(x, y, 256, 128, 0.5, seed=9)
    left, _ = render_region(x, y, 128, 128, 0.5, seed=9)
    right, _ = render_region(x + 128, y, 128, 128, 0.5, seed=9)
    assert np.array_equal(whole, np.hstack([left, right]))


def test_seed_changes_slide():
    a, _ = render_region(0, 0, 64, 64, 1.0, seed=1)
    b, _ = render_region(0, 0, 64, 64, 1.0, seed=2)
    assert not np.array_equal(a, b)


def test_single_process_writes_the_same(tmp_path, slide):
    make_slide(tmp_path / "one.tif", W, H, mpp=0.5, seed=4, tile=TILE, workers=1, progress=False)
    with tifffile.TiffFile(tmp_path / "one.tif") as a, tifffile.TiffFile(slide[0]) as b:
        assert len(a.pages) == len(b.pages)
        assert np.array_equal(a.pages[0].asarray(), b.pages[0].asarray())


@pytest.mark.parametrize(
    "args, match",
    [((0, 100), "positive"), ((100, 100, 0.5, 0, None, 100), "multiple of 16"), ((100, 100, -1.0), "mpp")],
)
def test_bad_arguments(tmp_path, args, match):
    with pytest.raises(SegclsError, match=match):
        make_slide(tmp_path / "s.tif", *args, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_leaves_no_mask(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SegclsError, match="does not exist"):
        make_slide(tmp_path / "file" / "s.tif", 64, 64, mask_path=tmp_path / "m.tif", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_interrupted_slide_removes_its_mask(tmp_path, monkeypatch):
    from segcls.synth import slide as synth_slide

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth_slide, "_rgb_tile", broken)
    with pytest.raises(KeyboardInterrupt):
        make_slide(tmp_path / "s.tif", 64, 64, mask_path=tmp_path / "m.tif", workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []
