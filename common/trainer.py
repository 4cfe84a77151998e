"""One Accelerate loop for every competition: K folds, each trained, evaluated, checkpointed and resumable.

Read it top to bottom: `train_run` loops over folds, `train_fold` is the loop of one fold.
The competition plugs in data, model, loss and metric through its Task.
"""
from __future__ import annotations

import math
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, set_seed
from omegaconf import DictConfig
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from common import plots
from common.folds import make_folds
from common.io import DataError, atomic_path, read_csv, read_json, write_csv, write_json
from common.metrics import get_metric
from common.runs import Run
from common.task import TARGET, Task, model_inputs

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
# on_evaluate(fold, epoch, score) is called after every evaluation; Optuna raises TrialPruned from it.
EvalCallback = Callable[[int, int, float], None]


def create_accelerator(cfg: DictConfig) -> Accelerator:
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.precision == "fp16" and not torch.cuda.is_available():
        # Accelerate would quietly train in fp32 here; say so instead.
        raise ValueError("precision=fp16 needs a CUDA GPU; use precision=bf16 or fp32 on this machine")
    # Several processes without a GPU (torchrun on a CPU machine) -> gloo; Accelerate needs cpu=True for that.
    cpu = "LOCAL_RANK" in os.environ and not torch.cuda.is_available()
    # Accelerate keeps one process-wide state; a new run in the same process (tests, Optuna trials) may ask for
    # another precision. The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=PRECISIONS[cfg.precision], gradient_accumulation_steps=cfg.grad_accum,
                       cpu=cpu)


def load_train_frame(task: Task, cfg: DictConfig) -> tuple[pd.DataFrame, list[str]]:
    """The train frame with the numeric target added, sampled down to `limit` rows if asked."""
    train = task.load_train(cfg)
    if cfg.limit and cfg.limit < len(train):
        train = train.sample(n=int(cfg.limit), random_state=cfg.seed).sort_index()
    train = train.reset_index(drop=True)
    classes = task.classes(train)
    train[TARGET] = task.encode_target(train, classes)
    return train, classes


def assign_folds(run: Run, task: Task, cfg: DictConfig, train: pd.DataFrame, is_main: bool) -> np.ndarray:
    """Folds are made once per run and saved; every later step (resume, infer, ensemble, tune) reads them."""
    if run.folds_path.is_file():
        saved = read_csv(run.folds_path)
        by_id = dict(zip(saved[task.id_column].astype(str), saved["fold"]))
        ids = train[task.id_column].astype(str)
        missing = ids[~ids.isin(by_id.keys())]
        if len(missing):
            raise DataError(f"{run.folds_path}: {len(missing)} train id(s) have no fold, e.g. {missing.iloc[0]!r}; "
                            f"the data changed since this run started")
        return ids.map(by_id).to_numpy()
    folds = make_folds(train, task.fold_spec, cfg.folds, cfg.seed)
    if is_main:
        write_csv(pd.DataFrame({task.id_column: train[task.id_column], "fold": folds}), run.folds_path)
    return folds


def train_run(task: Task, cfg: DictConfig, on_evaluate: EvalCallback | None = None) -> dict:
    """Train every fold of `train_folds` (skipping finished ones), then write oof.csv, metrics.json and plots."""
    started = time.time()
    accelerator = create_accelerator(cfg)
    if not cfg.run_name:  # every process must agree on the timestamped name
        cfg.run_name = broadcast_object_list([time.strftime("%Y%m%d-%H%M%S")])[0]
    train, classes = load_train_frame(task, cfg)  # bad input fails here, before anything is written
    run = Run.create(task.name, cfg, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    accelerator.print(f"run folder: {run.dir}")
    train["fold"] = assign_folds(run, task, cfg, train, accelerator.is_main_process)
    if accelerator.is_main_process:
        write_json(classes, run.classes_path)
    accelerator.wait_for_everyone()

    fold_ids = list(cfg.train_folds) if cfg.train_folds is not None else list(range(cfg.folds))
    for fold in fold_ids:
        if fold in run.finished_folds():
            accelerator.print(f"fold {fold}: already finished, kept as it is")
            continue
        train_fold(task, cfg, accelerator, run, train, fold, classes, on_evaluate)
        accelerator.free_memory()

    metrics = summarize(task, run, train, classes, fold_ids, started) if accelerator.is_main_process else {}
    accelerator.wait_for_everyone()
    return metrics


def create_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW with a backbone and a head learning rate; no weight decay on biases and norm weights."""
    head_ids = {id(p) for p in model.head.parameters()} if hasattr(model, "head") else set()
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = id(p) in head_ids
        decay = cfg.weight_decay if p.ndim > 1 else 0.0
        key = (is_head, decay)
        groups.setdefault(key, {"params": [], "lr": (cfg.head_lr or cfg.lr) if is_head else cfg.lr,
                                "weight_decay": decay})["params"].append(p)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(list(groups.values()), lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam([dict(g, weight_decay=0.0) for g in groups.values()], lr=cfg.lr)
    raise ValueError(f"optimizer must be adamw or adam, got {cfg.optimizer!r}")


def train_fold(task: Task, cfg: DictConfig, accelerator: Accelerator, run: Run, train: pd.DataFrame,
               fold: int, classes: list[str], on_evaluate: EvalCallback | None = None) -> None:
    fold_dir = run.fold_dir(fold)
    trn = task.train_frame(cfg, train[train.fold != fold].reset_index(drop=True)).reset_index(drop=True)
    val = train[train.fold == fold].reset_index(drop=True)
    metric = get_metric(task.metric)
    set_seed(cfg.seed + fold)

    model = task.build_model(cfg, len(classes), run.dir, pretrained=cfg.pretrained)
    collate = task.collate_fn(cfg, run.dir)
    sampler = task.train_sampler(cfg, trn)
    train_dl = DataLoader(task.dataset(cfg, trn, "train", run.dir), batch_size=cfg.batch_size,
                          shuffle=sampler is None, sampler=sampler, collate_fn=collate,
                          num_workers=cfg.num_workers, drop_last=len(trn) > cfg.batch_size)
    valid_dl = DataLoader(task.dataset(cfg, val, "valid", run.dir), batch_size=cfg.batch_size,
                          shuffle=False, collate_fn=collate, num_workers=cfg.num_workers)
    loss_fn = task.loss_fn(cfg, trn)
    optimizer = create_optimizer(cfg, model)
    # Counted on the un-sharded loader: Accelerate steps the scheduler once per process.
    total_steps = cfg.epochs * math.ceil(len(train_dl) / cfg.grad_accum)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup * total_steps),
                              num_training_steps=total_steps)
    model, optimizer, train_dl, valid_dl, scheduler = accelerator.prepare(
        model, optimizer, train_dl, valid_dl, scheduler)

    state = {"epoch": 0, "step": 0, "best_score": None, "best_epoch": None, "bad_evals": 0, "history": []}
    last = _last_state_dir(fold_dir)
    if last is not None:
        accelerator.load_state(str(last))
        state = read_json(last / "trainer_state.json")
        accelerator.print(f"fold {fold}: resuming after epoch {state['epoch']} "
                          f"(best {metric.name} {state['best_score']})")

    def evaluate_and_record(epoch: int, train_loss: float) -> bool:
        """Evaluate, keep the best checkpoint and OOF, log; return True when early stopping says stop."""
        preds, valid_loss = predict_loader(task, cfg, accelerator, model, valid_dl, loss_fn)
        score = metric(val[TARGET].to_numpy(), preds)
        improved = metric.better(score, state["best_score"])
        if improved:
            state.update(best_score=score, best_epoch=epoch, bad_evals=0)
            save_model(accelerator, model, run.checkpoint(fold))
            if accelerator.is_main_process:
                write_csv(oof_frame(task, val, preds, classes), fold_dir / "oof.csv")
        else:
            state["bad_evals"] += 1
        state["history"].append({"fold": fold, "epoch": epoch, "step": state["step"], "train_loss": train_loss,
                                 "valid_loss": valid_loss, "score": score,
                                 "lr": scheduler.get_last_lr()[0]})
        accelerator.print(f"fold {fold} epoch {epoch} step {state['step']}: train_loss {train_loss:.4f} "
                          f"valid_loss {valid_loss:.4f} {metric.name} {score:.4f}{' *' if improved else ''}")
        model.train()
        return bool(cfg.patience) and state["bad_evals"] >= cfg.patience

    stop = False
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        set_seed(cfg.seed + 1000 * fold + epoch)  # the same shuffle whether or not the run was resumed
        model.train()
        losses = []
        bar = tqdm(train_dl, desc=f"fold {fold} epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not accelerator.is_local_main_process)
        for batch in bar:
            with accelerator.accumulate(model):
                loss = task.train_loss(cfg, model, batch, loss_fn)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.clip_grad:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            losses.append(loss.detach().float().item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if accelerator.sync_gradients:
                state["step"] += 1
                if cfg.eval_every and state["step"] % cfg.eval_every == 0 and len(losses) < len(train_dl):
                    if evaluate_and_record(epoch, float(np.mean(losses))):
                        stop = True
                        break
        if not stop:
            stop = evaluate_and_record(epoch, float(np.mean(losses)))
        state["epoch"] = epoch
        _save_last_state(accelerator, fold_dir, state)
        if accelerator.is_main_process:
            write_csv(pd.DataFrame(state["history"]), fold_dir / "history.csv")
        if on_evaluate is not None:
            on_evaluate(fold, epoch, state["history"][-1]["score"])
        if stop:
            accelerator.print(f"fold {fold}: early stop, no improvement for {cfg.patience} evaluations")
            break

    if accelerator.is_main_process:
        write_json({"fold": fold, "best_score": state["best_score"], "best_epoch": state["best_epoch"]},
                   fold_dir / "done.json")
        shutil.rmtree(fold_dir / "last", ignore_errors=True)  # the resume state is no longer needed
    accelerator.wait_for_everyone()


@torch.no_grad()
def predict_loader(task: Task, cfg: DictConfig, accelerator: Accelerator, model, loader,
                   loss_fn=None) -> tuple[np.ndarray, float]:
    """Predictions for every row of the loader's dataset in its order, exact under several processes."""
    model.eval()
    preds, index, loss_sum, n = [], [], 0.0, 0
    for batch in tqdm(loader, desc="predict", leave=False, disable=not accelerator.is_local_main_process):
        logits = model(**model_inputs(batch))
        if loss_fn is not None and "target" in batch:
            loss_sum += loss_fn(logits, batch["target"]).float().item() * len(batch["index"])
            n += len(batch["index"])
        p, i = accelerator.gather_for_metrics((task.activate(cfg, logits), batch["index"]))
        preds.append(p.float().cpu().numpy())
        index.append(i.cpu().numpy())
    preds, index = np.concatenate(preds), np.concatenate(index)
    out = np.empty_like(preds)
    out[index] = preds  # rows come back in loader order; index makes that explicit
    if n:
        totals = accelerator.reduce(torch.tensor([loss_sum, n], device=accelerator.device), reduction="sum")
        return out, float(totals[0] / totals[1])
    return out, float("nan")


def oof_frame(task: Task, frame: pd.DataFrame, preds: np.ndarray, classes: list[str]) -> pd.DataFrame:
    out = pd.DataFrame({task.id_column: frame[task.id_column].to_numpy()})
    if "fold" in frame:
        out["fold"] = frame["fold"].to_numpy()
    if TARGET in frame:
        out["target"] = frame[TARGET].to_numpy()
    out[classes] = preds.reshape(len(frame), len(classes))
    return out


def save_model(accelerator: Accelerator, model, path: Path) -> None:
    """Best checkpoint in safetensors, written to a temp file and renamed."""
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        state = {k: v.contiguous() for k, v in state.items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp))
    accelerator.wait_for_everyone()


def _save_last_state(accelerator: Accelerator, fold_dir: Path, state: dict) -> None:
    """Resume state (model, optimizer, scheduler, RNG) of the last finished epoch, swapped in atomically."""
    tmp, last, old = fold_dir / "last.tmp", fold_dir / "last", fold_dir / "last.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        write_json(state, tmp / "trainer_state.json")
        if last.exists():
            last.rename(old)
        tmp.rename(last)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _last_state_dir(fold_dir: Path) -> Path | None:
    for d in (fold_dir / "last", fold_dir / "last.old"):  # last.old survives a kill between the two renames
        if (d / "trainer_state.json").is_file():
            return d
    return None


def summarize(task: Task, run: Run, train: pd.DataFrame, classes: list[str], fold_ids: list[int],
              started: float) -> dict:
    metric = get_metric(task.metric)
    done = [f for f in fold_ids if (run.fold_dir(f) / "done.json").is_file()]
    oof = pd.concat([read_csv(run.fold_dir(f) / "oof.csv") for f in done], ignore_index=True)
    # OOF in train order, one prediction per trained row.
    order = {v: i for i, v in enumerate(train[task.id_column].astype(str))}
    oof = oof.iloc[np.argsort(oof[task.id_column].astype(str).map(order).to_numpy())].reset_index(drop=True)
    write_csv(oof, run.oof_path)
    fold_scores = [metric(g["target"].to_numpy(), g[classes].to_numpy()) for _, g in oof.groupby("fold")]
    metrics = {
        "metric": metric.name,
        "greater_is_better": metric.greater_is_better,
        "cv": metric(oof["target"].to_numpy(), oof[classes].to_numpy()),
        "folds": fold_scores,
        "best_epochs": [read_json(run.fold_dir(f) / "done.json")["best_epoch"] for f in done],
        "n_rows": len(oof),
        "wall_time_s": round(time.time() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    write_json(metrics, run.metrics_path)
    history = pd.concat([read_csv(run.fold_dir(f) / "history.csv") for f in done], ignore_index=True)
    plots.learning_curves(history, metric.name, run.plots_dir / "learning_curves.png")
    task.plots(run.config(), oof, classes, run.plots_dir)
    print(f"CV {metric.name}: {metrics['cv']:.4f}  folds: {', '.join(f'{s:.4f}' for s in fold_scores)}")
    return metrics
