"""How many CPU cores this process may use, and how a run shares them: backend sessions and slide readers."""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_sessions(sessions: int | str, threads: int) -> int:
    """ONNX Runtime sessions for `--sessions` ("auto" or a count) on `threads` cores.

    "auto" is 2 from 2 cores on, each with half the threads: beside the readers and the mask writer, one
    session's threads stall at every operator's barrier whenever one of them is preempted, two sessions
    on different tiles do not (2 cores: a dense slide 1.06x faster in FP32, 1.21x in INT8; more cores
    not measured). A GPU provider always runs one session.
    """
    if sessions != "auto":
        return int(sessions)
    return 2 if threads >= 2 else 1


def reader_budget(workers: int | str, on_cpu: bool, cores: int | None = None) -> int:
    """Reader threads for `--workers` ("auto" or a count) beside a backend that runs on the CPU or not.

    "auto" (measured in bench/results/cpu-2core-readers.md): on a CPU backend the network and the readers
    share the cores and decoding a tile costs about a tenth of running it, so one reader per 8 cores (at
    least one) keeps the backend fed without taking its cores; a GPU backend leaves the host's cores to
    the readers (decoding scales with threads: OpenSlide and numpy release the GIL), less one for the
    thread that drives the device, at most 32.
    """
    if workers != "auto":
        return int(workers)
    cores = cores or available_cores()
    if on_cpu:
        return max(1, cores // 8)
    return max(2, min(cores - 1, 32))
