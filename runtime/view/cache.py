"""Encoded tiles kept in memory, least recently used first out, bounded in bytes.

Several browser connections often ask for the same tile at once (the slide and its mask layer, a second
tab, the navigator): `get_or_make` renders a missing tile once and lets the other requests for it wait for
that render instead of repeating it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future


class TileCache:
    """A thread-safe LRU of bytes values whose total size stays at or under `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._rendering: dict[Hashable, Future] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get_or_make(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        """The cached value of `key`, else `make()`'s, stored; concurrent callers of one key share a render.
        An exception from `make` reaches every caller waiting on it and nothing is stored."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return value
            self.misses += 1
            pending = self._rendering.get(key)
            if pending is None:
                pending = self._rendering[key] = Future()
                mine = True
            else:
                mine = False
        if not mine:
            return pending.result()
        try:
            value = make()
        except BaseException as e:
            with self._lock:
                del self._rendering[key]
            pending.set_exception(e)
            raise
        with self._lock:
            del self._rendering[key]
            self._store(key, value)
        pending.set_result(value)
        return value

    def _store(self, key: Hashable, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        self._items[key] = value
        self.bytes += len(value)
        while self.bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= len(dropped)
