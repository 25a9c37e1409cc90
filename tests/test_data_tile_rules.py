"""The tile rules' parameter ranges: the ends of (0, 1] and [0, 1] are valid, anything else is refused."""

import numpy as np
import pytest

from segcls.data.tiles import CLS, SEG, kinds_from_counts

COUNTS = np.array([[60, 40, 0], [100, 0, 0]])  # a two-class tile and a one-class tile, 100 px each


def test_the_ends_of_the_ranges_are_valid():
    kinds, labels = kinds_from_counts(COUNTS, 100, dominant=1.0, min_labelled=0.0)
    assert kinds.tolist() == [SEG, CLS] and labels.tolist() == [-1, 0]


@pytest.mark.parametrize(("dominant", "min_labelled"), [(0.0, 0.5), (1.5, 0.5), (0.9, -0.1), (0.9, 1.5)])
def test_values_outside_the_ranges_are_refused(dominant, min_labelled):
    with pytest.raises(ValueError, match=r"dominant must be in \(0, 1\] and min_labelled in \[0, 1\]"):
        kinds_from_counts(COUNTS, 100, dominant=dominant, min_labelled=min_labelled)
