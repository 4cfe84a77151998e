"""Test predictions of a run: the mean over its fold models, each with its own fitted fold state applied to the
test rows, and over the task's TTA views of every batch. A blend predicts through its runs, then blends."""
from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from safetensors.torch import load_file

from common.errors import NotFound
from common.runs import Run
from common.task import FoldContext, Task
from common.trainer import (
    ESTIMATOR_FILE,
    create_accelerator,
    estimator_predict,
    oof_frame,
    predict_dataloader,
    predict_loader,
)


def fold_context(task: Task, cfg: DictConfig, run: Run, fold: int) -> FoldContext:
    """A trained fold's context: its folder and the state fit_fold saved there."""
    fold_dir = run.fold_dir(fold)
    return FoldContext(fold=fold, dir=fold_dir, run_dir=run.dir, state=task.load_fold(cfg, fold_dir))


def load_fold_model(task: Task, cfg: DictConfig, run: Run, ctx: FoldContext, n_outputs: int):
    """The fold's best network (architecture from the run, weights from its checkpoint)."""
    model = task.build_model(cfg, n_outputs, ctx, pretrained=False)
    model.load_state_dict(load_file(str(run.checkpoint(ctx.fold))))
    return model


def predict_run(task: Task, run: Run, cfg: DictConfig, test: pd.DataFrame) -> pd.DataFrame:
    """Frame of id + one column per class (or `pred`): the mean over the run's finished folds."""
    folds = run.finished_folds()
    if not folds:
        raise NotFound(f"{run.dir}: no finished fold to predict with")
    classes = run.classes()
    test = test.reset_index(drop=True)
    total = np.zeros((len(test), len(classes)), dtype=np.float64)
    accelerator = None
    for fold in folds:
        ctx = fold_context(task, cfg, run, fold)
        tta = bool(cfg.tta)
        if (ctx.dir / ESTIMATOR_FILE).is_file():  # trees: no views to average
            preds, tta = estimator_predict(task, joblib.load(ctx.dir / ESTIMATOR_FILE), task.features(cfg, test, ctx)), False
        else:
            accelerator = accelerator or create_accelerator(cfg)
            loader = predict_dataloader(task, cfg, test, "test", ctx)
            model, loader = accelerator.prepare(load_fold_model(task, cfg, run, ctx, len(classes)), loader)
            preds, _ = predict_loader(task, cfg, accelerator, model, loader, tta=tta)
            accelerator.free_memory()
        total += preds.reshape(len(test), len(classes))
        print(f"fold {fold}: predicted {len(test)} rows{' with TTA' if tta else ''}")
    return oof_frame(task, test, total / len(folds), classes)
