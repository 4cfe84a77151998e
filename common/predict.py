"""Predictions: any loader's rows through a model (predict_loader: validation during training, test rows after).
Test predictions of a run: the mean over its fold models, each with its own fitted fold state applied to the
test rows, and over the task's TTA views of every batch. A blend predicts through its runs, then blends.
rescore_oof predicts each fold's validation rows again the same way: what a prediction setting (TTA) does to CV.
runtime=onnx runs each fold's exported graph instead of its torch module (common/onnx_runtime.py); tokenization,
transforms, TTA views and activation stay the same."""
from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from common import onnx_runtime
from common.accelerator import create_accelerator
from common.errors import ConfigError, NotFound
from common.estimator import ESTIMATOR_FILE, estimator_predict
from common.folds import assign_folds, fold_split, in_train_order, load_train_frame, oof_frame
from common.metrics import get_metric, scores_with_threshold, tune_decision
from common.runs import Run
from common.task import FoldContext, Task, model_inputs
from common.threads import one_thread_worker


# ---- any loader ------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_loader(task: Task, cfg: DictConfig, accelerator: Accelerator, model, loader,
                   loss_fn=None, tta: bool = False) -> tuple[np.ndarray, float]:
    """Predictions for every row of the loader's dataset in its order, exact under several processes. With tta,
    the mean over the task's views of each batch, taken after activation."""
    model.eval()
    preds, index, loss_sum, n = [], [], 0.0, 0
    for batch in tqdm(loader, desc="predict", leave=False, disable=not accelerator.is_local_main_process):
        views = task.tta_views(cfg, batch) if tta else [batch]
        outputs = []
        for view in views:
            logits = model(**model_inputs(view))
            outputs.append(task.activate(cfg, logits))
            if loss_fn is not None and "target" in batch and view is views[0]:
                loss_sum += loss_fn(logits, batch["target"]).float().item() * len(batch["index"])
                n += len(batch["index"])
        p, i = accelerator.gather_for_metrics((torch.stack(outputs).mean(0), batch["index"]))
        preds.append(p.float().cpu().numpy())
        index.append(i.cpu().numpy())
    preds, index = np.concatenate(preds), np.concatenate(index)
    out = np.empty_like(preds)
    out[index] = preds  # rows come back in loader order; index makes that explicit
    plain = accelerator.unwrap_model(model) if isinstance(model, torch.nn.Module) else model
    out = task.refine_predictions(cfg, plain, loader.dataset, out, accelerator)
    if n:
        totals = accelerator.reduce(torch.tensor([loss_sum, n], device=accelerator.device), reduction="sum")
        return out, float(totals[0] / totals[1])
    return out, float("nan")


def predict_dataloader(task: Task, cfg: DictConfig, df: pd.DataFrame, mode: str, ctx: FoldContext,
                       collate=None) -> DataLoader:
    """Validation or test rows in the task's predict_order (predict_loader puts the predictions back in row order)."""
    order = task.predict_order(cfg, df, ctx)
    return DataLoader(task.dataset(cfg, df, mode, ctx), batch_size=cfg.batch_size, shuffle=False,
                      sampler=order, collate_fn=collate or task.collate_fn(cfg, ctx), num_workers=cfg.num_workers,
                      worker_init_fn=one_thread_worker)


# ---- a run's fold models ---------------------------------------------------------------------------------


def fold_context(task: Task, cfg: DictConfig, run: Run, fold: int) -> FoldContext:
    """A trained fold's context: its folder and the state fit_fold saved there."""
    fold_dir = run.fold_dir(fold)
    return FoldContext(fold=fold, dir=fold_dir, run_dir=run.dir, state=task.load_fold(cfg, fold_dir))


def load_fold_model(task: Task, cfg: DictConfig, run: Run, ctx: FoldContext, n_outputs: int):
    """The fold's best network (architecture from the run, weights from its checkpoint)."""
    model = task.build_model(cfg, n_outputs, ctx, pretrained=False)
    model.load_state_dict(load_file(str(run.checkpoint(ctx.fold))))
    return model


def predict_fold(task: Task, cfg: DictConfig, run: Run, ctx: FoldContext, frame: pd.DataFrame, mode: str,
                 n_outputs: int, accelerator=None) -> tuple[np.ndarray, bool, object]:
    """One fold's predictions for `frame` (rows x outputs), whether TTA views were averaged, and the accelerator
    (made on first use, then reused)."""
    if (ctx.dir / ESTIMATOR_FILE).is_file():  # trees: no views to average
        return estimator_predict(task, joblib.load(ctx.dir / ESTIMATOR_FILE), task.features(cfg, frame, ctx)), False, \
            accelerator
    accelerator = accelerator or create_accelerator(cfg)
    loader = predict_dataloader(task, cfg, frame, mode, ctx)
    if onnx_runtime.uses_onnx(cfg):
        model = fold_graph_runner(task, cfg, run, ctx, n_outputs, loader, accelerator)
        loader = accelerator.prepare(loader)
    else:
        model, loader = accelerator.prepare(load_fold_model(task, cfg, run, ctx, n_outputs), loader)
    preds, _ = predict_loader(task, cfg, accelerator, model, loader, tta=bool(cfg.tta))
    accelerator.free_memory()
    return preds.reshape(len(frame), n_outputs), bool(cfg.tta), accelerator


def fold_graph_runner(task: Task, cfg: DictConfig, run: Run, ctx: FoldContext, n_outputs: int, loader: DataLoader,
                      accelerator: Accelerator):
    """The fold's network under ONNX Runtime, exported (by the main process, once per checkpoint) from the first
    batch of the loader's rows when its graph is missing or stale."""
    def example() -> dict:
        return model_inputs(task.tta_views(cfg, next(iter(loader)))[0])

    with accelerator.main_process_first():
        return onnx_runtime.fold_runner(task.build_model(cfg, n_outputs, ctx, pretrained=False),
                                        run.checkpoint(ctx.fold), ctx.dir, example, cfg.quantize)


def export_graphs(task: Task, run: Run, cfg: DictConfig, frame: pd.DataFrame) -> list:
    """Each finished fold's ONNX graph for cfg (runtime=onnx, quantize=...), exported where missing or stale from
    a batch of frame's rows (test rows in the test format); the graphs' paths."""
    if not onnx_runtime.uses_onnx(cfg):
        raise ConfigError("export_graphs needs runtime=onnx")
    accelerator, paths = create_accelerator(cfg), []
    n_outputs = len(run.classes())
    for fold in run.finished_folds():
        ctx = fold_context(task, cfg, run, fold)
        if (ctx.dir / ESTIMATOR_FILE).is_file():  # trees: no network to export, they predict as they are
            continue
        loader = predict_dataloader(task, cfg, frame.head(cfg.batch_size).reset_index(drop=True), "test", ctx)
        fold_graph_runner(task, cfg, run, ctx, n_outputs, loader, accelerator)
        paths.append(ctx.dir / onnx_runtime.graph_file(cfg.quantize))
    return paths


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
        preds, tta, accelerator = predict_fold(task, cfg, run, fold_context(task, cfg, run, fold), test, "test",
                                               len(classes), accelerator)
        total += preds
        print(f"fold {fold}: predicted {len(test)} rows{' with TTA' if tta else ''}")
    return oof_frame(task, test, total / len(folds), classes)


def rescore_oof(task: Task, run: Run, cfg: DictConfig) -> tuple[pd.DataFrame, dict]:
    """Each finished fold's validation rows predicted again by its saved model under cfg (the run's config with
    overrides such as tta=true): the OOF frame in train order and its scores, cut where the run cuts. No
    retraining, so one setting costs one pass over the train set."""
    if run.blend_spec() is not None:
        raise ConfigError(f"{run.dir} is a blend: rescore its runs, then blend them again")
    folds = run.finished_folds()
    if not folds:
        raise NotFound(f"{run.dir}: no finished fold to rescore")
    train_df, classes = load_train_frame(task, cfg)
    train_df["fold"] = assign_folds(run, task, cfg, train_df, is_main=False)  # the run's own folds.csv
    parts, accelerator = [], None
    for fold in folds:
        _, val = fold_split(task, cfg, train_df, fold)
        preds, _, accelerator = predict_fold(task, cfg, run, fold_context(task, cfg, run, fold), val, "valid",
                                             len(classes), accelerator)
        parts.append(oof_frame(task, val, preds, classes))
    oof = pd.concat(parts, ignore_index=True)
    oof = in_train_order(task, oof, train_df)
    metric = get_metric(task.metric)
    cv, fold_scores = scores_with_threshold(metric, oof, classes, run.threshold(), run.class_bias())
    scores = {"metric": metric.name, "greater_is_better": metric.greater_is_better, "cv": cv, "folds": fold_scores,
              "n_rows": len(oof)}
    if task.thresholded or task.tunes_class_bias(cfg):
        # a setting that moves the predictions (query expansion, TTA) moves the best cut too: tune it again here
        threshold, bias, decision = tune_decision(metric, oof["target"].to_numpy(), oof[classes].to_numpy(),
                                                  oof["fold"].to_numpy(), classes, task.thresholded,
                                                  task.tunes_class_bias(cfg))
        scores["retuned"] = {"cv": scores_with_threshold(metric, oof, classes, threshold, bias)[0], **decision}
    return oof, scores
