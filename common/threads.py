"""CPU threads per process. PyTorch starts one thread per core in every process; two processes on one machine (torchrun,
or DataLoader workers next to the training process) then fight over the same cores and each runs many times slower.
The kit gives each process its share of the cores instead, and each DataLoader worker one thread."""
from __future__ import annotations

import os

import torch
from omegaconf import DictConfig

from common.errors import ConfigError


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """The cores shared evenly between the processes torchrun started on this machine (one process: all of them)."""
    return max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def configure_threads(cfg: DictConfig) -> int:
    """Set torch's intra-op threads from num_threads (null -> default_threads()); returns the number set."""
    wanted = cfg.get("num_threads")
    if wanted is not None and (not isinstance(wanted, int) or wanted < 1):
        raise ConfigError(f"num_threads must be a positive integer or null, got {wanted!r}")
    n = wanted or default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def one_thread_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: a worker decodes and augments with one thread; the cores belong to the model."""
    torch.set_num_threads(1)
