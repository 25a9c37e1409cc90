"""The numpy region tools give what scipy.ndimage gives (scipy is the reference here, not a runtime need)."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from segcls.runtime import regions

CROSS = ndimage.generate_binary_structure(2, 1)


def _masks():
    shapes = st.tuples(st.integers(1, 40), st.integers(1, 40))
    return shapes.flatmap(lambda shape: arrays(bool, shape))


@settings(max_examples=300, deadline=None)
@given(_masks())
def test_label_is_scipy_label(mask):
    labels, n = regions.label(mask)
    expected, count = ndimage.label(mask)
    assert n == count
    np.testing.assert_array_equal(labels, expected)  # same numbering too: raster order of first pixels
    assert labels.dtype == np.int32


@settings(max_examples=200, deadline=None)
@given(_masks(), st.integers(1, 3))
def test_cross_morphology_is_scipy(mask, iterations):
    np.testing.assert_array_equal(regions.dilate(mask, iterations), ndimage.binary_dilation(mask, CROSS, iterations))
    eroded = ndimage.binary_erosion(mask, CROSS, iterations, border_value=0)
    np.testing.assert_array_equal(regions.erode(mask, iterations), eroded)


@settings(max_examples=200, deadline=None)
@given(_masks())
def test_holes_are_what_fill_holes_fills(mask):
    np.testing.assert_array_equal(regions.holes(mask), ndimage.binary_fill_holes(mask) & ~mask)


def test_large_masks_and_long_chains():
    rng = np.random.default_rng(0)
    noise = rng.random((300, 400)) < 0.55  # many runs, many merges
    np.testing.assert_array_equal(regions.label(noise)[0], ndimage.label(noise)[0])
    # A serpentine: one region whose runs join only through alternating ends, the worst order for hooking.
    snake = np.zeros((201, 60), dtype=bool)
    snake[::2] = True
    snake[1::4, -1] = True
    snake[3::4, 0] = True
    labels, n = regions.label(snake)
    assert n == 1 and (labels[snake] == 1).all() and (labels[~snake] == 0).all()


def test_empty_and_full():
    for shape in ((1, 1), (5, 7)):
        assert regions.label(np.zeros(shape, bool))[1] == 0
        labels, n = regions.label(np.ones(shape, bool))
        assert n == 1 and (labels == 1).all()
        assert not regions.holes(np.ones(shape, bool)).any()
    with pytest.raises(ValueError, match="2-D"):
        regions.label(np.zeros(5, bool))


def test_tissue_detection_does_not_import_scipy():
    code = (
        "import sys, numpy as np\n"
        "from segcls.runtime.tissue import detect_tissue\n"
        "rgb = np.full((64, 64, 3), 240, np.uint8); rgb[16:48, 16:48] = (150, 60, 140)\n"
        "assert detect_tissue(rgb)[32, 32]\n"
        "print('scipy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
