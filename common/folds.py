"""K-fold assignment: stratified, group, stratified-group, and binned-target stratification for regression."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import (
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
)

from common.errors import ConfigError


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
