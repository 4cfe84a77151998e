"""The Accelerator every training and prediction pass runs under: precision, processes (torchrun, CPU or GPU),
CPU threads and the tracker. Trainer and predict both make theirs here."""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from omegaconf import DictConfig

from common.errors import ConfigError
from common.threads import configure_threads
from common.tracking import TRACKERS, require_wandb

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
AUTO = "auto"  # bf16 where the hardware computes it natively, else fp32 (auto_precision)


def native_bf16() -> tuple[bool, str]:
    """Whether this machine computes bf16 natively, and what says so. On a CPU without avx512_bf16 or AMX, oneDNN
    emulates bf16 and a step is no faster than fp32 (or slower), so auto stays fp32 there."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(), f"GPU {torch.cuda.get_device_name()}"
    # torch.cpu's probes are private (torch 2.x); an older or newer torch without them reads as "no"
    flags = [name for name, probe in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx", "_is_amx_tile_supported"))
             if getattr(torch.cpu, probe, lambda: False)()]
    return bool(flags), f"CPU with {' and '.join(flags)}" if flags else "CPU without avx512_bf16 or AMX"


def auto_precision() -> tuple[str, str]:
    """precision=auto on this machine: (bf16 or fp32, why)."""
    native, why = native_bf16()
    return ("bf16" if native else "fp32"), why


def resolved_precision(precision: str) -> str:
    if precision == AUTO:
        return auto_precision()[0]
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {AUTO}, {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def create_accelerator(cfg: DictConfig, tracking: bool = False) -> Accelerator:
    precision = resolved_precision(cfg.precision)
    if precision == "fp16" and not torch.cuda.is_available():
        # Accelerate would quietly train in fp32 here; say so instead.
        raise ConfigError("precision=fp16 needs a CUDA GPU; use precision=bf16 or fp32 on this machine")
    # Several processes without a GPU (torchrun on a CPU machine) -> gloo; Accelerate needs cpu=True for that.
    cpu = "LOCAL_RANK" in os.environ and not torch.cuda.is_available()
    # Accelerate keeps one process-wide state and refuses another precision for a second run in the same process
    # (tests, Optuna trials, a notebook). It has no public reset, hence the private one; the process group
    # (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    configure_threads(cfg)
    log_with = cfg.get("tracker", "none") if tracking else "none"
    if log_with not in TRACKERS:
        raise ConfigError(f"tracker must be one of {', '.join(TRACKERS)}, got {log_with!r}")
    if log_with == "wandb":
        require_wandb()
    return Accelerator(mixed_precision=PRECISIONS[precision], gradient_accumulation_steps=cfg.grad_accum,
                       cpu=cpu, log_with=None if log_with == "none" else log_with,
                       project_dir=cfg.runs_dir)  # TensorBoard's folder: the run's, set in start_tracking
