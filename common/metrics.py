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


def scores_with_threshold(metric: Metric, oof, classes: list[str], threshold: float | None,
                          class_bias: np.ndarray | None = None) -> tuple[float, list]:
    """(CV, per-fold scores) of an OOF frame (target, fold, class columns); binary probabilities cut at
    `threshold`, class probabilities moved by `class_bias`, when one is given."""
    def score(frame) -> float:
        p = frame[classes].to_numpy()
        if threshold is not None:
            p = (p[:, 0] >= threshold).astype(float)
        if class_bias is not None:
            p = with_class_bias(p, class_bias)
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


# ---- per-class decision biases (multiclass tasks scored on labels: class_bias=true) ------------------------
# Added to log-probabilities; +-2 moves a class's odds 7.4x either way. A coarse grid: 21 values a class, not fitted
# to single rows.
BIAS_GRID = np.round(np.linspace(-2.0, 2.0, 21), 2)


def with_class_bias(p: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Class probabilities with per-class biases on their logarithms, renormalised (a shift of the class priors:
    p_k * exp(b_k) / sum): still probabilities, whose argmax is the biased label."""
    q = np.clip(p, 1e-12, None) * np.exp(np.asarray(bias, dtype=float))
    return q / q.sum(axis=1, keepdims=True)


def decided(oof, classes: list[str], bias: np.ndarray | None):
    """A prediction frame (OOF or test) as the run's class biases decide it; itself without biases."""
    if bias is None:
        return oof
    out = oof.copy()
    out[classes] = with_class_bias(oof[classes].to_numpy(dtype=float), bias)
    return out


def tune_class_bias(y: np.ndarray, p: np.ndarray, metric: Metric, rounds: int = 3) -> np.ndarray:
    """Per-class biases that score best on OOF: coordinate ascent over BIAS_GRID, one class at a time, from no bias.
    A bias moves only where the score strictly improves, so a run whose argmax is already best keeps zeros."""
    bias = np.zeros(p.shape[1])
    best = metric(y, p)
    for _ in range(rounds):
        moved = False
        for k in range(p.shape[1]):
            for b in BIAS_GRID:
                trial = bias.copy()
                trial[k] = b
                score = metric(y, with_class_bias(p, trial))
                if metric.better(score, best):
                    best, bias, moved = score, trial, True
        if not moved:
            break
    return bias


def score_with_bias_from_other_folds(metric: Metric, y: np.ndarray, p: np.ndarray, folds: np.ndarray) -> float:
    """The OOF score when each fold's rows get biases tuned on the other folds' rows only: what the tuning is worth
    on rows it was not tuned on (biases tuned on every OOF row flatter that CV, most on labels with few rows)."""
    scores = np.zeros_like(p, dtype=float)
    for fold in np.unique(folds):
        own = folds == fold
        scores[own] = with_class_bias(p[own], tune_class_bias(y[~own], p[~own], metric))
    return metric(y, scores)


def tune_rule(metric: Metric, y: np.ndarray, p: np.ndarray, thresholded: bool,
              class_bias: bool) -> tuple[float | None, np.ndarray | None]:
    """(threshold or None, class biases or None): the decision rule tuned on these OOF predictions."""
    threshold = tune_threshold(y, p[:, 0], metric) if thresholded else None
    bias = tune_class_bias(y, p, metric) if class_bias else None
    return threshold, bias


def tune_decision(metric: Metric, y: np.ndarray, p: np.ndarray, folds: np.ndarray, classes: list[str],
                  thresholded: bool, class_bias: bool) -> tuple[float | None, np.ndarray | None, dict]:
    """The decision rule of a run or blend, tuned on its OOF: (threshold or None, class biases or None, the
    figures metrics.json gives beside the CV: the untuned score and the score of the rule tuned on other folds)."""
    threshold, bias = tune_rule(metric, y, p, thresholded, class_bias)
    several = len(np.unique(folds)) > 1
    figures = {}
    if threshold is not None:
        figures.update({"threshold": threshold, "cv_at_0.5": metric(y, p)})
        if several:
            figures["cv_cut_from_other_folds"] = score_with_cut_from_other_folds(metric, y, p[:, 0], folds)
    if bias is not None:
        figures.update({"class_bias": dict(zip(classes, bias.tolist())), "cv_argmax": metric(y, p)})
        if several:
            figures["cv_bias_from_other_folds"] = score_with_bias_from_other_folds(metric, y, p, folds)
    return threshold, bias, figures
