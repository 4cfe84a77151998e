"""Competition metrics, each with its direction.

Every metric takes the true targets and the predictions as stored in oof.csv / test_preds.csv:
a 1-D array for regression and binary tasks (scores or probabilities), a 2-D array of class
probabilities for multiclass tasks (argmax gives the label).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    greater_is_better: bool

    def __call__(self, y_true, y_pred) -> float:
        return float(self.fn(np.asarray(y_true), np.asarray(y_pred)))

    def better(self, a: float, b: float | None) -> bool:
        """Is score a better than score b (None counts as worst)?"""
        if b is None or np.isnan(b):
            return not np.isnan(a)
        return a > b if self.greater_is_better else a < b


def _squeeze(p: np.ndarray) -> np.ndarray:
    return p[:, 0] if p.ndim == 2 and p.shape[1] == 1 else p


def pearson(y, p):
    p = _squeeze(p)
    if np.std(p) == 0 or np.std(y) == 0:
        return 0.0  # undefined correlation; a constant prediction earns nothing
    return pearsonr(y.astype(float), p.astype(float))[0]


def to_labels(p: np.ndarray) -> np.ndarray:
    """Class probabilities -> labels (argmax); 1-D binary probabilities -> 0/1 at 0.5."""
    p = _squeeze(p)
    return p.argmax(axis=1) if p.ndim == 2 else (p >= 0.5).astype(int)


def macro_f1(y, p):
    return f1_score(y, to_labels(p), average="macro")


def accuracy(y, p):
    return accuracy_score(y, to_labels(p))


def roc_auc(y, p):
    return roc_auc_score(y, _squeeze(p))


def nmae(y, p):
    """Normalised mean absolute error, DACON's growth metric: mean(|y - p| / |y|). The ratio is undefined where the
    true value is 0 (the real growth labels have 8 such rows): those rows are left out of the mean, and a set
    with no non-zero target scores NaN, never a division by zero or an infinite score."""
    y, p = y.astype(float), _squeeze(p).astype(float)
    keep = y != 0
    return float(np.mean(np.abs(y[keep] - p[keep]) / np.abs(y[keep]))) if keep.any() else float("nan")


METRICS = {m.name: m for m in [
    Metric("pearson", pearson, True),
    Metric("macro_f1", macro_f1, True),
    Metric("roc_auc", roc_auc, True),
    Metric("accuracy", accuracy, True),
    Metric("nmae", nmae, False),
]}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


# ---- decision thresholds (binary tasks scored on labels) ------------------------------------------------
def tune_threshold(y: np.ndarray, p: np.ndarray, metric: Metric) -> float:
    """The cut on probabilities that scores best on OOF (0.5 unless another does strictly better). Candidates are
    the 1st..99th percentiles of p, so a single run's cut is one of 100 values, not fitted to single rows."""
    candidates = np.unique(np.concatenate([[0.5], np.quantile(p, np.linspace(0.01, 0.99, 99))]))
    candidates = candidates[(candidates > 0) & (candidates < 1)]
    best, best_score = 0.5, metric(y, (p >= 0.5).astype(float))
    for t in candidates:
        score = metric(y, (p >= t).astype(float))
        if metric.better(score, best_score):
            best, best_score = float(t), score
    return best


def scores_with_threshold(metric: Metric, oof, classes: list[str], threshold: float | None) -> tuple[float, list]:
    """(CV, per-fold scores) of an OOF frame (target, fold, class columns); binary probabilities cut at
    `threshold` when one is given."""
    def score(frame) -> float:
        p = frame[classes].to_numpy()
        if threshold is not None:
            p = (p[:, 0] >= threshold).astype(float)
        return metric(frame["target"].to_numpy(), p)
    return score(oof), [score(g) for _, g in oof.groupby("fold")]


def score_with_cut_from_other_folds(metric: Metric, y: np.ndarray, p: np.ndarray, folds: np.ndarray) -> float:
    """The OOF score when each fold's rows are cut at a threshold tuned on the other folds' rows only: what a tuned
    cut is worth on rows it was not tuned on (the cut tuned on every OOF row flatters that CV a little)."""
    labels = np.zeros(len(y))
    for fold in np.unique(folds):
        own = folds == fold
        labels[own] = p[own] >= tune_threshold(y[~own], p[~own], metric)
    return metric(y, labels)
