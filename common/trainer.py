"""One Accelerate loop for every competition: K folds, each trained, evaluated, checkpointed and resumable.

Read it top to bottom: `train` makes the run folder and its folds and loops over them; `train_fold` is the loop
of one fold, in short pieces (context, loaders, optimizer, one epoch, evaluate, resume state); `summarize` gathers
the folds' OOF. A model that is not a network (Task.estimator) goes through common/estimator.py instead: same
folds, OOF, metrics.json. Around the loop: fold assignment in common/folds.py, prediction in common/predict.py,
checkpoint files in common/checkpoints.py, trackers in common/tracking.py, the Accelerator in
common/accelerator.py. The competition plugs in data, model, loss and metric through its Task (common/task.py).
"""
from __future__ import annotations

import math
import resource
import shutil
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from omegaconf import DictConfig
from safetensors.torch import load_file
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm
from transformers import get_scheduler

from common import plots
from common.accelerator import AUTO, auto_precision, create_accelerator
from common.checkpoints import EMA_FILE, last_state_dir, save_model, save_resume_state
from common.errors import ConfigError, NotFound
from common.estimator import train_estimator_fold
from common.folds import assign_folds, fold_split, in_train_order, load_train_frame, oof_frame
from common.io import read_csv, read_json, write_csv, write_json
from common.metrics import Metric, decided, get_metric, scores_with_threshold, tune_decision, tune_rule
from common.predict import predict_dataloader, predict_loader
from common.runs import LAST_OOF, Run
from common.summary import write_summary
from common.task import TARGET, FoldContext, Task
from common.threads import one_thread_worker
from common.tracking import start_tracking
from common.tricks import AWP, create_ema, layer_scales

BAR_EVERY = 10                   # batches between progress-bar loss updates (each one waits for the device)
# on_evaluate(fold, epoch, score) is called after every epoch's evaluation; Optuna raises TrialPruned from it.
EvalCallback = Callable[[int, int, float], None]


# ---- the run ---------------------------------------------------------------------------------------------
def choose_precision(task: Task, cfg: DictConfig) -> str:
    """precision=auto becomes this machine's choice, written into the run's config.yaml; a run that already exists
    resumes in the precision it was started in. Returns why, for the printed line."""
    if cfg.precision != AUTO:
        return "as set"
    existing = Path(cfg.runs_dir) / task.name / str(cfg.run_name) / "config.yaml"
    if cfg.run_name and existing.is_file():
        cfg.precision = Run(existing.parent).config().precision
        return "auto: as the run was started"
    cfg.precision, why = auto_precision()
    return f"auto: {why}"


def train(task: Task, cfg: DictConfig, on_evaluate: EvalCallback | None = None) -> Run:
    """Train every fold of `train_folds` (skipping finished ones), then write oof.csv, metrics.json and plots."""
    started = time.time()
    why = choose_precision(task, cfg)
    accelerator = create_accelerator(cfg, tracking=True)
    accelerator.print(f"precision: {cfg.precision} ({why})")
    if not cfg.run_name:  # every process must agree on the timestamped name
        cfg.run_name = broadcast_object_list([time.strftime("%Y%m%d-%H%M%S")])[0]
    train_df, classes = load_train_frame(task, cfg)  # bad input fails here, before anything is written
    task.check_config(cfg)  # so does a setting the task cannot run with (class_bias=true on a regression, ...)
    run = Run.create(task.name, cfg, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    accelerator.print(f"run folder: {run.dir}")
    train_df["fold"] = assign_folds(run, task, cfg, train_df, accelerator.is_main_process)
    if (train_df.fold < 0).any():
        accelerator.print(f"{int((train_df.fold < 0).sum())} row(s) are in no fold (fold -1) and are left out")
        train_df = train_df[train_df.fold >= 0].reset_index(drop=True)
    if accelerator.is_main_process:
        write_json(classes, run.classes_path)
    accelerator.wait_for_everyone()
    start_tracking(accelerator, task, cfg, run)

    fold_ids = list(cfg.train_folds) if cfg.train_folds is not None else list(range(cfg.folds))
    for fold in fold_ids:
        if fold in run.finished_folds():
            accelerator.print(f"fold {fold}: already finished, kept as it is")
            continue
        if task.estimator(cfg) is not None:
            if accelerator.is_main_process:  # trees fit in one process; the others wait
                trn, val = fold_split(task, cfg, train_df, fold)
                ctx = fit_context(task, cfg, None, run, fold, trn)
                train_estimator_fold(task, cfg, trn, val, ctx, classes, on_evaluate)
        else:
            train_fold(task, cfg, accelerator, run, train_df, fold, classes, on_evaluate)
        accelerator.wait_for_everyone()
        accelerator.free_memory()

    if accelerator.is_main_process:
        metrics = summarize(task, cfg, run, train_df, classes, started)
        accelerator.log({key: metrics[key] for key in ("cv", "cv_last") if key in metrics}
                        | {f"fold{f}/best": s for f, s in zip(run.finished_folds(), metrics["folds"])})
    for tracker in accelerator.trackers:  # not end_training(): it also ends the process group, which a caller
        tracker.finish()                  # (tune, a notebook, torchrun's next run) may still use
    accelerator.wait_for_everyone()
    return run


def fit_context(task: Task, cfg: DictConfig, accelerator: Accelerator | None, run: Run, fold: int,
                trn: pd.DataFrame) -> FoldContext:
    """Fit the fold's state on its training rows (main process), every other process reads it back. A fold that
    resumes reads back what its first start fitted."""
    fold_dir = run.fold_dir(fold)
    is_main = accelerator is None or accelerator.is_main_process
    if last_state_dir(fold_dir) is not None:
        return FoldContext(fold=fold, dir=fold_dir, run_dir=run.dir, state=task.load_fold(cfg, fold_dir))
    if is_main:
        fold_dir.mkdir(parents=True, exist_ok=True)
        state = task.fit_fold(cfg, trn, fold_dir)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if not is_main:
        state = task.load_fold(cfg, fold_dir)
    return FoldContext(fold=fold, dir=fold_dir, run_dir=run.dir, state=state)


def epoch_seed(cfg: DictConfig, fold: int, epoch: int) -> int:
    return cfg.seed + 1000 * fold + epoch


# ---- one fold of a network -------------------------------------------------------------------------------
def train_fold(task: Task, cfg: DictConfig, accelerator: Accelerator, run: Run, train_df: pd.DataFrame,
               fold: int, classes: list[str], on_evaluate: EvalCallback | None = None) -> None:
    trn, val = fold_split(task, cfg, train_df, fold)
    ctx = fit_context(task, cfg, accelerator, run, fold, trn)
    set_seed(cfg.seed + fold)
    model = task.build_model(cfg, len(classes), ctx, pretrained=cfg.pretrained)
    if cfg.get("compile"):
        model.compile()  # in place: the forward is compiled, parameter names (and checkpoints) stay the same
    train_dl, valid_dl = make_loaders(task, cfg, trn, val, ctx)
    loss_fn = task.loss_fn(cfg, trn, ctx)
    optimizer, scheduler = create_optimizer(cfg, model, len(train_dl))
    model, optimizer, train_dl, valid_dl, scheduler = accelerator.prepare(
        model, optimizer, train_dl, valid_dl, scheduler)
    loop = FoldLoop(task, cfg, accelerator, run, fold, classes, model, optimizer, scheduler, loss_fn, val,
                    valid_dl, on_evaluate)
    loop.ema = create_ema(cfg, accelerator.unwrap_model(model))  # evaluated and saved instead of the raw weights
    if cfg.get("awp"):
        loop.awp = AWP(accelerator.unwrap_model(model), cfg.awp, cfg.awp_eps)
    loop.resume()
    for epoch in range(loop.state["epoch"] + 1, cfg.epochs + 1):
        stop = loop.train_one_epoch(epoch, train_dl, ctx)
        if stop:
            accelerator.print(f"fold {fold}: early stop, no improvement for {cfg.patience} evaluations")
            break
    loop.finish()


def make_loaders(task: Task, cfg: DictConfig, trn: pd.DataFrame, val: pd.DataFrame,
                 ctx: FoldContext) -> tuple[DataLoader, DataLoader]:
    collate = task.collate_fn(cfg, ctx)
    train_ds = task.dataset(cfg, trn, "train", ctx)
    # The shuffle draws from ctx.generator, which the loop re-seeds every epoch: a resumed run sees the same order.
    sampler = task.train_sampler(cfg, trn, ctx) or RandomSampler(train_ds, generator=ctx.generator)
    # generator=: each new iterator draws its workers' base seed from it, not from the global RNG, which a
    # mid-epoch resume has just restored (else dropout after a resume differs from the uninterrupted run).
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=cfg.num_workers, drop_last=len(trn) > cfg.batch_size, generator=ctx.generator,
                          worker_init_fn=one_thread_worker)
    valid_dl = predict_dataloader(task, cfg, val, "valid", ctx, collate)
    return train_dl, valid_dl


def create_optimizer(cfg: DictConfig, model: torch.nn.Module, batches_per_epoch: int):
    """AdamW with a backbone and a head learning rate, no weight decay on biases and norm weights; warm-up and
    the configured schedule over the whole run."""
    head_ids = {id(p) for p in model.head.parameters()} if hasattr(model, "head") else set()
    scales = layer_scales(model, cfg.layer_decay) if cfg.get("layer_decay") else {}
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = id(p) in head_ids
        decay = cfg.weight_decay if p.ndim > 1 else 0.0
        lr = (cfg.head_lr or cfg.lr) if is_head else cfg.lr * scales.get(name, 1.0)
        groups.setdefault((is_head, decay, lr), {"params": [], "lr": lr, "weight_decay": decay})["params"].append(p)
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(list(groups.values()), lr=cfg.lr)
    elif cfg.optimizer == "adam":
        optimizer = torch.optim.Adam([dict(g, weight_decay=0.0) for g in groups.values()], lr=cfg.lr)
    else:
        raise ConfigError(f"optimizer must be adamw or adam, got {cfg.optimizer!r}")
    # Counted on the un-sharded loader: Accelerate steps the scheduler once per process.
    total_steps = cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup * total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler


class FoldLoop:
    """The moving parts of one fold's loop and its resumable state (`state`, saved as trainer_state.json):
    completed epochs, optimizer steps, batches done in the unfinished epoch, best score, history."""

    def __init__(self, task, cfg, accelerator, run, fold, classes, model, optimizer, scheduler, loss_fn, val,
                 valid_dl, on_evaluate):
        self.task, self.cfg, self.accelerator, self.run, self.fold, self.classes = task, cfg, accelerator, run, fold, classes
        self.model, self.optimizer, self.scheduler, self.loss_fn = model, optimizer, scheduler, loss_fn
        self.val, self.valid_dl, self.on_evaluate = val, valid_dl, on_evaluate
        self.fold_dir = run.fold_dir(fold)
        self.metric = get_metric(task.metric)
        self.ema, self.awp = None, None
        # The latest evaluation's predictions, written as the fold's oof_last.csv when it finishes: the fold's last
        # evaluation always runs in the process that finishes it (no resume state is saved after it).
        self.last_preds = None
        self.state = {"epoch": 0, "step": 0, "batch": 0, "loss_sum": 0.0, "best_score": None, "best_epoch": None,
                      "bad_evals": 0, "history": [], "elapsed_s": 0.0}
        self.clock = time.perf_counter()  # the fold's wall clock (continued after a resume): elapsed_s in history

    def resume(self) -> None:
        last = last_state_dir(self.fold_dir)
        if last is None:
            return
        self.accelerator.load_state(str(last))  # model, optimizer, scheduler and RNG states
        self.state.update(read_json(last / "trainer_state.json"))
        self.clock = time.perf_counter() - self.state.get("elapsed_s", 0.0)
        if self.ema is not None:
            self.ema.load_state_dict(load_file(str(last / EMA_FILE)))
        where = f"batch {self.state['batch']} of epoch {self.state['epoch'] + 1}" if self.state["batch"] else \
            f"epoch {self.state['epoch']}"
        self.accelerator.print(f"fold {self.fold}: resuming after {where} "
                               f"(best {self.metric.name} {self.state['best_score']})")

    def train_one_epoch(self, epoch: int, train_dl, ctx: FoldContext) -> bool:
        """One pass over the training loader (from where a mid-epoch checkpoint left it); True = stop early."""
        cfg, accelerator, state = self.cfg, self.accelerator, self.state
        ctx.generator.manual_seed(epoch_seed(cfg, self.fold, epoch))  # the epoch's shuffle, resumed or not
        skip = state["batch"]
        if skip:  # mid-epoch resume: the RNG states came back with the checkpoint
            loader = accelerator.skip_first_batches(train_dl, skip)
        else:
            set_seed(epoch_seed(cfg, self.fold, epoch))
            loader = train_dl
        self.model.train()
        bar = tqdm(loader, desc=f"fold {self.fold} epoch {epoch}/{cfg.epochs}", total=len(train_dl), initial=skip,
                   leave=False, disable=not accelerator.is_local_main_process)
        # The loss is summed on the device and read back only for the progress bar, a tracker or a checkpoint:
        # reading it every step (.item()) would make a GPU wait for each step to finish.
        loss_sum = torch.tensor(state["loss_sum"], device=accelerator.device)
        for batch in bar:
            with accelerator.accumulate(self.model):
                loss = self.task.train_loss(cfg, self.model, batch, self.loss_fn)
                accelerator.backward(loss)
                if self.awp is not None and epoch >= cfg.awp_start and accelerator.sync_gradients:
                    self.awp.perturb()  # a second pass where the loss is worse, its gradients added
                    accelerator.backward(self.task.train_loss(cfg, self.model, batch, self.loss_fn))
                    self.awp.restore()
                if accelerator.sync_gradients and cfg.clip_grad:
                    accelerator.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            state["batch"] += 1
            loss_sum += loss.detach().float()
            if state["batch"] % BAR_EVERY == 0:
                state["loss_sum"] = loss_sum.item()
                bar.set_postfix(loss=f"{state['loss_sum'] / state['batch']:.4f}", refresh=False)
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            if self.ema is not None:
                self.ema.update(accelerator.unwrap_model(self.model), step=state["step"])
            if accelerator.trackers:
                accelerator.log({f"fold{self.fold}/train_loss": loss.detach().float().item(),
                                 f"fold{self.fold}/lr": self.scheduler.get_last_lr()[0]}, step=state["step"])
            last_batch = state["batch"] == len(train_dl)
            evaluate_now = cfg.eval_every and state["step"] % cfg.eval_every == 0 and not last_batch
            checkpoint_now = cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0 and not last_batch
            if evaluate_now or checkpoint_now:
                state["loss_sum"] = loss_sum.item()
            if evaluate_now and self.evaluate(epoch):
                return self.end_epoch(epoch, stop=True)
            if checkpoint_now:
                self.save_resume_state()
        state["loss_sum"] = loss_sum.item()
        return self.end_epoch(epoch, stop=self.evaluate(epoch))

    def end_epoch(self, epoch: int, stop: bool) -> bool:
        self.state.update(epoch=epoch, batch=0, loss_sum=0.0)
        if not stop and epoch < self.cfg.epochs:  # after the last epoch, finish() marks the fold done instead (a kill
            self.save_resume_state()              # before that re-runs the last epoch from its start, identically)
        if self.accelerator.is_main_process:
            write_csv(pd.DataFrame(self.state["history"]), self.fold_dir / "history.csv")
        if self.on_evaluate is not None:
            self.on_evaluate(self.fold, epoch, self.state["history"][-1]["score"])
        return stop

    def evaluate(self, epoch: int) -> bool:
        """Score the fold's validation rows, keep the best checkpoint and OOF, log; True when early stopping says
        stop."""
        state, metric = self.state, self.metric
        started = time.perf_counter()
        model = self.ema.module if self.ema is not None else self.model
        preds, valid_loss = predict_loader(self.task, self.cfg, self.accelerator, model, self.valid_dl,
                                           self.loss_fn)
        score = metric(self.val[TARGET].to_numpy(), preds)
        self.last_preds = preds
        improved = metric.better(score, state["best_score"])
        if improved:
            state.update(best_score=score, best_epoch=epoch, bad_evals=0)
            save_model(self.accelerator, model, self.run.checkpoint(self.fold))
            if self.accelerator.is_main_process:
                write_csv(oof_frame(self.task, self.val, preds, self.classes), self.fold_dir / "oof.csv")
        else:
            state["bad_evals"] += 1
        train_loss = state["loss_sum"] / max(state["batch"], 1)
        state["elapsed_s"] = round(time.perf_counter() - self.clock, 3)
        state["history"].append({"fold": self.fold, "epoch": epoch, "step": state["step"], "train_loss": train_loss,
                                 "valid_loss": valid_loss, "score": score,
                                 "lr": self.scheduler.get_last_lr()[0], "elapsed_s": state["elapsed_s"],
                                 "eval_s": round(time.perf_counter() - started, 3)})
        self.accelerator.log({f"fold{self.fold}/valid_{metric.name}": score, f"fold{self.fold}/valid_loss": valid_loss,
                              f"fold{self.fold}/epoch": epoch}, step=state["step"])
        self.accelerator.print(f"fold {self.fold} epoch {epoch} step {state['step']}: train_loss {train_loss:.4f} "
                               f"valid_loss {valid_loss:.4f} {metric.name} {score:.4f}{' *' if improved else ''}")
        self.model.train()
        return bool(self.cfg.patience) and state["bad_evals"] >= self.cfg.patience

    def save_resume_state(self) -> None:
        self.state["elapsed_s"] = round(time.perf_counter() - self.clock, 3)
        extra = {EMA_FILE: self.ema.state_dict()} if self.ema is not None else {}
        save_resume_state(self.accelerator, self.fold_dir, self.state, extra)

    def finish(self) -> None:
        if self.accelerator.is_main_process:
            if self.last_preds is not None:
                write_csv(oof_frame(self.task, self.val, self.last_preds, self.classes), self.fold_dir / LAST_OOF)
            write_json({"fold": self.fold, "best_score": self.state["best_score"],
                        "best_epoch": self.state["best_epoch"]}, self.fold_dir / "done.json")
            shutil.rmtree(self.fold_dir / "last", ignore_errors=True)  # the resume state is no longer needed
        self.accelerator.wait_for_everyone()


# ---- the run's summary -----------------------------------------------------------------------------------
def summarize(task: Task, cfg: DictConfig, run: Run, train_df: pd.DataFrame, classes: list[str],
              started: float) -> dict:
    """oof.csv in train order, metrics.json, the decision rule tuned on OOF (threshold.json for binary tasks scored
    on labels, class_bias.json with class_bias=true), plots: over every finished fold of the run, whichever
    invocation (train_folds=) trained it."""
    metric = get_metric(task.metric)
    done = run.finished_folds()
    if not done:
        raise NotFound(f"{run.dir}: no finished fold")
    oof = folds_oof(task, run, done, "oof.csv", train_df)
    write_csv(oof, run.oof_path)
    threshold, bias, decision = tune_decision(metric, oof["target"].to_numpy(), oof[classes].to_numpy(),
                                              oof["fold"].to_numpy(), classes, task.thresholded,
                                              task.tunes_class_bias(cfg))
    run.save_decision(threshold, bias, "oof.csv")
    cv, fold_scores = scores_with_threshold(metric, oof, classes, threshold, bias)
    metrics = {
        "metric": metric.name,
        "greater_is_better": metric.greater_is_better,
        "cv": cv,
        **last_epoch_cv(task, cfg, metric, run, done, train_df, classes, cv),
        "folds": fold_scores,
        "best_epochs": [read_json(run.fold_dir(f) / "done.json")["best_epoch"] for f in done],
        "n_rows": len(oof),
        "wall_time_s": round(time.time() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **decision,
    }
    if cfg.get("tuned_on_folds") is not None:
        metrics.update(untuned_folds_cv(metric, oof, classes, threshold, bias, list(cfg.tuned_on_folds)))
    write_summary(metrics, run.metrics_path)
    history = pd.concat([read_csv(run.fold_dir(f) / "history.csv") for f in done], ignore_index=True)
    plots.learning_curves(history, metric.name, run.plots_dir / "learning_curves.png")
    task.plots(run.config(), decided(oof, classes, bias), classes, run.plots_dir)
    return metrics


def folds_oof(task: Task, run: Run, folds: list[int], name: str, train_df: pd.DataFrame) -> pd.DataFrame:
    """The folds' OOF files `name` (oof.csv, oof_last.csv) as one frame in train order."""
    oof = pd.concat([read_csv(run.fold_dir(f) / name) for f in folds], ignore_index=True)
    return in_train_order(task, oof, train_df)


def last_epoch_cv(task: Task, cfg: DictConfig, metric: Metric, run: Run, folds: list[int], train_df: pd.DataFrame,
                  classes: list[str], cv: float) -> dict:
    """{"cv_last": the CV of each fold's last evaluation}, its decision rule tuned on its own OOF as the CV's is: the
    gap to the CV is what picking each fold's best epoch on its own validation rows adds. A model without epochs (an
    estimator) has only one: cv. {} when a fold was trained before folds kept oof_last.csv."""
    if task.estimator(cfg) is not None:
        return {"cv_last": cv}
    if not all((run.fold_dir(f) / LAST_OOF).is_file() for f in folds):
        return {}
    oof = folds_oof(task, run, folds, LAST_OOF, train_df)
    threshold, bias = tune_rule(metric, oof["target"].to_numpy(), oof[classes].to_numpy(), task.thresholded,
                                task.tunes_class_bias(cfg))
    return {"cv_last": scores_with_threshold(metric, oof, classes, threshold, bias)[0]}


def untuned_folds_cv(metric: Metric, oof: pd.DataFrame, classes: list[str], threshold: float | None,
                     bias, tuned_on: list[int]) -> dict:
    """The CV over the OOF rows of the folds a study did not score when it chose this config (tuned_on_folds), under
    the run's decision rule: free of the choice's optimism. None when the run trained no other fold."""
    other = oof[~oof["fold"].isin(tuned_on)]
    cv = scores_with_threshold(metric, other, classes, threshold, bias)[0] if len(other) else None
    return {"tuned_on_folds": tuned_on, "cv_untuned_folds": cv}
