"""How many CPU cores this process may use: what thread budgets are planned from."""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
