"""Training under `torchrun`: which process this is, the process group, and what only rank 0 does.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them (a plain `segcls-train`) this is rank 0 of 1 and
nothing here touches torch.distributed, so one code path serves one process and many.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from segcls.core.errors import SegclsError

# Rank 0 validates (and writes checkpoints) while the others wait at their next collective: the default
# 10-30 min timeout would kill a run whose validation split is large.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, validates and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_env() -> Ranks:
    """The torchrun environment, or rank 0 of 1 outside it."""
    try:
        ranks = Ranks(*(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))))
    except ValueError:
        raise SegclsError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if not 0 <= ranks.rank < ranks.world_size:
        raise SegclsError(f"RANK must be in [0, WORLD_SIZE={ranks.world_size}), got {ranks.rank}")
    return ranks


def device_for(ranks: Ranks, device: torch.device) -> torch.device:
    """One GPU per process on a node: cuda:LOCAL_RANK."""
    if ranks.enabled and device.type == "cuda":
        return torch.device("cuda", ranks.local_rank)
    return device


def init(ranks: Ranks, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo between CPU processes."""
    if not ranks.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def share(ranks: Ranks) -> slice:
    """This rank's rows of a global batch: every world_size-th, so the shares differ by at most one row
    (none with --batch-size a multiple of the ranks) and one process's share is the whole batch."""
    return slice(ranks.rank, None, ranks.world_size)


def barrier(ranks: Ranks) -> None:
    if ranks.enabled:
        dist.barrier()


@contextlib.contextmanager
def main_first(ranks: Ranks) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a tile cache), the others after it, reading what it made."""
    if not ranks.main:
        barrier(ranks)
    yield
    if ranks.main:
        barrier(ranks)


def mean(values: np.ndarray, ranks: Ranks, device: torch.device) -> np.ndarray:
    """The mean of `values` over all ranks (float64)."""
    if not ranks.enabled:
        return np.asarray(values, dtype=np.float64)
    t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=device)
    dist.all_reduce(t)
    return t.cpu().numpy() / ranks.world_size
