"""A fold's checkpoint files: the best model (model.safetensors, via Run.checkpoint) and the resume state
(fold<k>/last/: model, optimizer, scheduler, RNG, trainer_state.json and extras such as the EMA weights), each
written so that a kill at any moment leaves a loadable file or folder behind."""
from __future__ import annotations

import shutil
from pathlib import Path

from accelerate import Accelerator
from safetensors.torch import save_file

from common.io import atomic_path, write_json

EMA_FILE = "ema.safetensors"     # the weights' moving average in a resume state (ema=)


def save_model(accelerator: Accelerator, model, path: Path) -> None:
    """Best checkpoint in safetensors, written to a temp file and renamed."""
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        state = {k: v.contiguous() for k, v in state.items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp))
    accelerator.wait_for_everyone()


def save_resume_state(accelerator: Accelerator, fold_dir: Path, state: dict, extra: dict | None = None) -> None:
    """Resume state (model, optimizer, scheduler, RNG + trainer_state.json + extra {file: tensors}, e.g. the EMA
    weights), swapped in atomically."""
    tmp, last, old = fold_dir / "last.tmp", fold_dir / "last", fold_dir / "last.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()  # every rank writes its RNG state into tmp: none may still be writing at the rename
    if accelerator.is_main_process:
        for name, tensors in (extra or {}).items():
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / name))
        write_json(state, tmp / "trainer_state.json")
        if last.exists():
            shutil.rmtree(old, ignore_errors=True)  # a kill while deleting it last time leaves a partial last.old
            last.rename(old)
        tmp.rename(last)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def last_state_dir(fold_dir: Path) -> Path | None:
    for d in (fold_dir / "last", fold_dir / "last.old"):  # last.old survives a kill between the two renames
        if (d / "trainer_state.json").is_file():
            return d
    return None
