"""K-fold assignment: stratified, group, stratified-group, and binned-target stratification for regression; a run's
folds (drawn once, saved in folds.csv, read back by every later step) and its out-of-fold frames.

The task is passed in, never imported: common/task.py imports FoldSpec from here."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from sklearn.model_selection import (
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
)

from common.errors import ConfigError, DataError, NotFound
from common.io import read_csv, write_csv
from common.runs import Run

TARGET = "_y"  # numeric target column the engine adds to the train frame (class index for multiclass)


@dataclass(frozen=True)
class FoldSpec:
    """How a competition splits: stratify on `stratify` (binned into `bins` quantiles if >0), group by `group`."""
    stratify: str | None = None
    group: str | None = None
    bins: int = 0


def make_folds(df: pd.DataFrame, spec: FoldSpec, n_folds: int, seed: int) -> np.ndarray:
    """Return a fold number (0..n_folds-1) for every row of df. Deterministic for a given seed."""
    if n_folds < 2:
        raise ConfigError(f"folds must be >= 2, got {n_folds}")
    if len(df) < n_folds:
        raise ConfigError(f"{len(df)} rows cannot be split into {n_folds} folds")
    y = None
    if spec.stratify:
        y = df[spec.stratify].to_numpy()
        if spec.bins:
            # Regression: stratify on quantile bins of the target.
            y = pd.qcut(df[spec.stratify].rank(method="first"), q=spec.bins, labels=False).to_numpy()
        y = _merge_rare_classes(pd.Series(y).astype(str), n_folds).to_numpy()
    groups = df[spec.group].to_numpy() if spec.group else None
    if groups is not None and len(np.unique(groups)) < n_folds:
        raise ConfigError(f"{len(np.unique(groups))} groups in column {spec.group!r} cannot fill {n_folds} folds")

    if y is not None and groups is not None:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    elif groups is not None:
        # GroupKFold shuffles only from scikit-learn 1.6 on; shuffle the group ids ourselves for a seeded split.
        splitter = GroupKFold(n_splits=n_folds)
        rng = np.random.default_rng(seed)
        uniq = np.unique(groups)
        groups = pd.Series(groups).map(dict(zip(uniq, rng.permutation(len(uniq))))).to_numpy()
    elif y is not None:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)

    folds = np.full(len(df), -1, dtype=int)
    for k, (_, valid_idx) in enumerate(splitter.split(np.zeros(len(df)), y, groups)):
        folds[valid_idx] = k
    assert (folds >= 0).all()
    return folds


def _merge_rare_classes(y: pd.Series, n_folds: int) -> pd.Series:
    """Classes with fewer members than folds cannot be stratified; pool them (with a warning) instead of crashing."""
    counts = y.value_counts()
    rare = counts[counts < n_folds].index.tolist()
    if rare:
        warnings.warn(f"{len(rare)} class(es) have fewer than {n_folds} rows and are stratified together: "
                      f"{', '.join(map(str, rare[:10]))}{' ...' if len(rare) > 10 else ''}", stacklevel=3)
        y = y.where(~y.isin(rare), "__rare__")
    return y


# ---- a run's folds ------------------------------------------------------------------------------------
def load_train_frame(task, cfg: DictConfig) -> tuple[pd.DataFrame, list[str]]:
    """The train frame with the numeric target added, sampled down to `limit` rows (with fold_seed) if asked."""
    train = task.load_train(cfg)
    if cfg.limit and cfg.limit < len(train):
        train = train.sample(n=int(cfg.limit), random_state=cfg.fold_seed).sort_index()
    train = train.reset_index(drop=True)
    classes = task.classes(train)
    train[TARGET] = task.encode_target(train, classes)
    return train, classes


def assign_folds(run: Run, task, cfg: DictConfig, train: pd.DataFrame, is_main: bool) -> np.ndarray:
    """Folds are made once per run and saved; every later step (resume, infer, ensemble, tune) reads them.
    folds_from= copies another run's split instead of drawing one."""
    source = run.folds_path if run.folds_path.is_file() else folds_source(task, cfg)
    if source is not None:
        saved = read_csv(source)
        by_id = dict(zip(saved[task.id_column].astype(str), saved["fold"]))
        ids = train[task.id_column].astype(str)
        missing = ids[~ids.isin(by_id.keys())]
        if len(missing):
            raise DataError(f"{source}: {len(missing)} train id(s) have no fold, e.g. {missing.iloc[0]!r}; "
                            f"the data changed since that split was made")
        folds = ids.map(by_id).to_numpy().astype(int)
    else:
        folds = np.asarray(task.folds(cfg, train), dtype=int)
        if folds.shape != (len(train),) or not set(np.unique(folds)) <= set(range(-1, cfg.folds)):
            raise ValueError(f"{type(task).__name__}.folds must give one fold in -1..{cfg.folds - 1} per row")
    if is_main and not run.folds_path.is_file():
        write_csv(pd.DataFrame({task.id_column: train[task.id_column], "fold": folds}), run.folds_path)
    return folds


def folds_source(task, cfg: DictConfig) -> Path | None:
    """folds.csv of the run named by folds_from (a run name under runs/<c>/, a run folder or a folds.csv)."""
    if not cfg.folds_from:
        return None
    for candidate in (Path(cfg.runs_dir) / task.name / str(cfg.folds_from) / "folds.csv",
                      Path(cfg.folds_from) / "folds.csv", Path(cfg.folds_from)):
        if candidate.is_file():
            return candidate
    raise NotFound(f"folds_from={cfg.folds_from}: no folds.csv there (a run name, a run folder or a CSV path)")


def fold_split(task, cfg: DictConfig, train_df: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    trn = task.train_frame(cfg, train_df[train_df.fold != fold].reset_index(drop=True)).reset_index(drop=True)
    val = task.valid_frame(cfg, train_df[train_df.fold == fold].reset_index(drop=True)).reset_index(drop=True)
    return trn, val


# ---- out-of-fold frames: id, fold, target, one column per class --------------------------------------
def oof_frame(task, frame: pd.DataFrame, preds: np.ndarray, classes: list[str]) -> pd.DataFrame:
    out = pd.DataFrame({task.id_column: frame[task.id_column].to_numpy()})
    if "fold" in frame:
        out["fold"] = frame["fold"].to_numpy()
    if TARGET in frame:
        out["target"] = frame[TARGET].to_numpy()
    out[classes] = preds.reshape(len(frame), len(classes))
    return out


def in_train_order(task, oof: pd.DataFrame, train_df: pd.DataFrame) -> pd.DataFrame:
    """OOF rows (gathered fold by fold) in the train frame's row order."""
    order = {v: i for i, v in enumerate(train_df[task.id_column].astype(str))}
    return oof.iloc[np.argsort(oof[task.id_column].astype(str).map(order).to_numpy())].reset_index(drop=True)
