"""Outputs left on the device until read (runtime/backends/lazy.py)."""

import numpy as np

from segcls.runtime.backends.lazy import LazyArray


def test_lazy_array_copies_once_and_only_when_read():
    data = np.arange(2 * 3 * 4, dtype=np.float16).reshape(2, 3, 4)
    fetched = []
    probs = LazyArray(lambda: fetched.append(1) or data.copy(), data.shape)
    row = probs[1]
    assert row.shape == (3, 4) and len(probs) == 2 and len(row) == 3
    assert not probs.on_host and not row.on_host and fetched == []  # a stitcher that ignores probs: no copy
    np.testing.assert_array_equal(row[:, 1:3], data[1, :, 1:3])
    assert probs.on_host and row.on_host
    np.testing.assert_array_equal(np.asarray(probs, dtype=np.float32), data.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(probs[0]), data[0])
    assert probs[0].dtype == np.float16 and fetched == [1]  # once, the whole batch
