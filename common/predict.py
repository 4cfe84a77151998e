"""Test predictions averaged over a run's fold checkpoints (and over TTA views, through the task's TTA wrapper)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from common.runs import Run
from common.task import Task
from common.trainer import create_accelerator, oof_frame, predict_loader


def predict_run(task: Task, run: Run, cfg: DictConfig, test: pd.DataFrame) -> pd.DataFrame:
    """Frame of id + one column per class (or `pred`): the mean over the run's finished folds."""
    folds = run.finished_folds()
    if not folds:
        raise FileNotFoundError(f"{run.dir}: no finished fold to predict with")
    classes = run.classes()
    accelerator = create_accelerator(cfg)
    test = test.reset_index(drop=True)
    loader = DataLoader(task.dataset(cfg, test, "test", run.dir), batch_size=cfg.batch_size, shuffle=False,
                        collate_fn=task.collate_fn(cfg, run.dir), num_workers=cfg.num_workers)
    total = np.zeros((len(test), len(classes)), dtype=np.float64)
    for fold in folds:
        model = task.build_model(cfg, len(classes), run.dir, pretrained=False)
        model.load_state_dict(load_file(str(run.checkpoint(fold))))
        model, fold_loader = accelerator.prepare(task.tta_model(cfg, model), loader)
        preds, _ = predict_loader(task, cfg, accelerator, model, fold_loader)
        total += preds.reshape(len(test), len(classes))
        accelerator.print(f"fold {fold}: predicted {len(test)} rows{' with TTA' if cfg.tta else ''}")
        accelerator.free_memory()
    return oof_frame(task, test, total / len(folds), classes)
