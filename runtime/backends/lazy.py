"""Outputs left on the device until something reads them (torch CUDA tensors, ONNX Runtime OrtValues).

The pipeline indexes `out.probs[i]` for every tile, but the crop stitcher without a probs output never
reads it: a lazy row costs no copy. The first real read copies the whole batch to the host, once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class LazyArray:
    """A batch-first array fetched from the device by `fetch()` on first read."""

    def __init__(self, fetch: Callable[[], np.ndarray], shape: tuple[int, ...]) -> None:
        self._fetch_fn, self._host, self.shape = fetch, None, tuple(shape)

    def fetch(self) -> np.ndarray:
        if self._host is None:
            self._host = np.asarray(self._fetch_fn())
            self._fetch_fn = None  # drops the device buffer
        return self._host

    @property
    def on_host(self) -> bool:
        return self._host is not None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if self._host is None and isinstance(index, (int, np.integer)):
            return _LazyRow(self, int(index))
        return self.fetch()[index]

    def __array__(self, dtype=None, copy=None):
        host = self.fetch()
        return host if dtype is None else host.astype(dtype)


class _LazyRow:
    """`batch[i]` of a LazyArray, still unread."""

    def __init__(self, batch: LazyArray, index: int) -> None:
        self._batch, self._index, self.shape = batch, index, batch.shape[1:]

    @property
    def on_host(self) -> bool:
        return self._batch.on_host

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        return self._batch.fetch()[self._index][index]

    def __array__(self, dtype=None, copy=None):
        row = self._batch.fetch()[self._index]
        return row if dtype is None else row.astype(dtype)
