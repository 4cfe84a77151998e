"""The estimator path: a model that is not a network (Task.estimator, e.g. gradient-boosted trees) fitted on the
fold's features (Task.features) in one go. Same folds, fold folders, OOF and metrics.json as a network."""
from __future__ import annotations

import time

import joblib
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from common.folds import oof_frame
from common.io import atomic_path, write_csv, write_json
from common.metrics import get_metric
from common.task import TARGET, FoldContext, Task

ESTIMATOR_FILE = "model.joblib"  # a fold's fitted estimator (Task.estimator), next to its state


def train_estimator_fold(task: Task, cfg: DictConfig, trn: pd.DataFrame, val: pd.DataFrame, ctx: FoldContext,
                         classes: list[str], on_evaluate=None) -> None:
    """Fit Task.estimator on the fold's training features, predict its validation rows: the fold's OOF.
    on_evaluate(fold, 1, score) as the trainer's EvalCallback."""
    fold = ctx.fold
    started = time.time()
    estimator = task.estimator(cfg)
    estimator.fit(task.features(cfg, trn, ctx), trn[TARGET].to_numpy())
    with atomic_path(ctx.dir / ESTIMATOR_FILE) as tmp:
        joblib.dump(estimator, tmp)
    preds = estimator_predict(task, estimator, task.features(cfg, val, ctx))
    metric = get_metric(task.metric)
    score = metric(val[TARGET].to_numpy(), preds)
    write_csv(oof_frame(task, val, preds, classes), ctx.dir / "oof.csv")
    write_csv(pd.DataFrame([{"fold": fold, "epoch": 1, "step": 1, "train_loss": np.nan, "valid_loss": np.nan,
                             "score": score, "lr": np.nan}]), ctx.dir / "history.csv")
    print(f"fold {fold}: {type(estimator).__name__} on {len(trn)} rows, {time.time() - started:.1f} s: "
          f"{metric.name} {score:.4f}")
    write_json({"fold": fold, "best_score": score, "best_epoch": 1}, ctx.dir / "done.json")
    if on_evaluate is not None:
        on_evaluate(fold, 1, score)


def estimator_predict(task: Task, estimator, features: pd.DataFrame) -> np.ndarray:
    """(rows, columns of classes): probabilities for classification, the prediction for regression."""
    if task.kind == "regression":
        return np.asarray(estimator.predict(features), dtype=float).reshape(-1, 1)
    proba = np.asarray(estimator.predict_proba(features), dtype=float)
    return proba[:, 1:2] if task.kind == "binary" else proba
