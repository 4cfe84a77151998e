"""Blend runs from their out-of-fold predictions (make <c>-ensemble RUNS="a b c" RUN=<blend> [ARGS="rank=true"]).

The runs must share their folds (same split, same OOF rows). Non-negative weights that sum to 1 are searched on
the OOF predictions for the competition's metric and direction, by scipy's SLSQP and by hill climbing (Caruana's
ensemble selection, which starts from the best single run, so the blend is never worse on OOF); `method=auto` keeps
the better of the two. Classification blends probabilities (labels come after, at submission time); `rank=true`
blends ranks instead of scores (for AUC); a binary task scored on labels re-tunes its threshold on the blended OOF,
and `class_bias=true` tunes per-class biases on it (a multiclass task scored on labels; the runs' own are not used).

The blend is written as a run folder (config.yaml, classes.json, folds.csv, oof.csv, blend.json: the recipe,
metrics.json with the blend's CV, the runs' CVs and the weights, threshold.json for a thresholded task, class_bias.json),
so `make <c>-infer|submit|push RUN=<blend>` work on it as on a trained run. It reads OOF predictions only: the blend's
test predictions are api.ensemble's job (each run predicts the test set, then blend_frames).
"""
from __future__ import annotations

import shutil
import time

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import rankdata

from common.config import to_yaml
from common.errors import ConfigError, DataError, NotFound
from common.io import atomic_path, read_csv, require_columns, write_csv, write_json
from common.metrics import Metric, decided, get_metric, scores_with_threshold, tune_decision, tune_threshold
from common.runs import Run
from common.summary import write_summary
from common.task import Task


def blend(task: Task, runs: list[str | Run], name: str | None = None, method: str = "auto", rank: bool = False,
          runs_dir: str = "runs", class_bias: bool = False) -> Run:
    """Blend trained runs (or blends) on their shared OOF into a new run folder `name`; returns it."""
    names = [r.name if isinstance(r, Run) else r for r in runs]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"ensemble needs two or more different runs, e.g. RUNS=\"a b\"; got {names}")
    if method not in ("auto", "scipy", "hill", "mean"):
        raise ConfigError(f"method must be auto, scipy, hill or mean, got {method!r}")
    tune_bias = task.tunes_class_bias({"class_bias": class_bias})  # refused before any run is read
    runs = [r if isinstance(r, Run) else Run.open(task.name, r, runs_dir) for r in runs]
    metric = get_metric(task.metric)
    oof = shared_oof(task, runs)
    classes = runs[0].classes()
    if rank and len(classes) > 1:
        raise ConfigError(f"rank=true blends one prediction column; these runs predict {len(classes)} classes")
    y = oof[0]["target"].to_numpy()
    preds = {run.name: o[classes].to_numpy(dtype=float) for run, o in zip(runs, oof)}

    inputs = [to_ranks(p) for p in preds.values()] if rank else list(preds.values())
    threshold = _cut_tuner(task, metric)
    weights, found_by = search_weights(y, inputs, metric, method, threshold)
    weights = {n: round(float(w), 6) for n, w in zip(names, weights)}
    # Runs without weight leave the recipe: neither the submission nor a Kaggle kernel predicts with them.
    spec = {"runs": [n for n in names if weights[n] > 0], "weights": {n: w for n, w in weights.items() if w > 0},
            "method": found_by, "rank": bool(rank), "run_cv": {n: run_score(task, metric, y, p) for n, p in preds.items()}}
    blend_oof = oof[0][[task.id_column, "fold", "target"]].copy()
    blend_oof[classes] = apply_blend([preds[n] for n in spec["runs"]], spec)
    return write_blend(task, runs, name, blend_oof, spec, metric, tune_bias)


def run_score(task: Task, metric: Metric, y: np.ndarray, p: np.ndarray) -> float:
    """A run's OOF score as its own metrics.json states it: a thresholded task at its best cut."""
    if task.thresholded:
        return metric(y, (p[:, 0] >= tune_threshold(y, p[:, 0], metric)).astype(float))
    return metric(y, p)


def _cut_tuner(task: Task, metric: Metric):
    """For a thresholded task, weights are judged at the blend's best cut, not at 0.5."""
    if not task.thresholded:
        return None
    return lambda y, p: metric(y, (p[:, 0] >= tune_threshold(y, p[:, 0], metric)).astype(float))


def shared_oof(task: Task, runs: list[Run]) -> list[pd.DataFrame]:
    """Each run's OOF frame in the first run's row order; refuse runs whose folds, rows, targets or classes differ,
    naming the run."""
    ref = runs[0]
    ref_folds = _folds(task, ref)
    frames = []
    for run in runs:
        if run.classes() != ref.classes():
            raise DataError(f"run {run.name} predicts {run.classes()}, run {ref.name} {ref.classes()}")
        folds = _folds(task, run)
        if not folds.index.equals(ref_folds.index) or not (folds == ref_folds).all():
            moved = (folds.reindex(ref_folds.index) != ref_folds).sum()
            raise DataError(f"run {run.name} does not share the folds of run {ref.name} ({moved} of "
                            f"{len(ref_folds)} rows in another fold or missing): blend runs made with the same data, "
                            f"fold_seed, folds and limit (or folds_from=)")
        if not run.oof_path.is_file():
            raise NotFound(f"run {run.name} has no {run.oof_path.name}; has it finished training?")
        oof = read_csv(run.oof_path)
        require_columns(oof, [task.id_column, "fold", "target", *run.classes()], run.oof_path)
        oof.index = oof[task.id_column].astype(str)
        if frames and not oof.index.sort_values().equals(frames[0].index.sort_values()):
            raise DataError(f"run {run.name} has OOF predictions for folds {sorted(oof['fold'].unique())}, run "
                            f"{ref.name} for {sorted(frames[0]['fold'].unique())}: blend runs trained on the same folds")
        oof = oof.loc[frames[0].index] if frames else oof
        if frames and not np.allclose(oof["target"], frames[0]["target"]):
            raise DataError(f"{run.oof_path}: the targets differ from run {ref.name}'s")
        frames.append(oof)
    return frames


def _folds(task: Task, run: Run) -> pd.Series:
    folds = read_csv(run.folds_path)
    require_columns(folds, [task.id_column, "fold"], run.folds_path)
    return folds.set_index(folds[task.id_column].astype(str))["fold"].sort_index()


# ---- weights --------------------------------------------------------------------------------------------
def combine(preds: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return np.tensordot(np.asarray(weights, dtype=float), np.stack(preds), axes=1)


def to_ranks(p: np.ndarray) -> np.ndarray:
    """Scores -> their ranks scaled to (0, 1], column by column."""
    return np.column_stack([rankdata(c) / len(c) for c in p.T])


def search_weights(y: np.ndarray, preds: list[np.ndarray], metric: Metric, method: str,
                   score_fn=None) -> tuple[np.ndarray, str]:
    """Non-negative weights summing to 1 that score best on OOF (by score_fn(y, p), default the metric), and the
    method that found them."""
    metric = Metric(metric.name, score_fn, metric.greater_is_better) if score_fn else metric
    if method == "mean":  # nothing fitted on the OOF: the blend's CV is as honest as its runs'
        return np.full(len(preds), 1 / len(preds)), "mean"
    found = {}
    if method in ("hill", "auto"):
        found["hill climbing"] = hill_climb(y, preds, metric)
    if method in ("scipy", "auto") and not score_fn:  # SLSQP needs a smooth objective; a cut is not one
        found["scipy SLSQP"] = scipy_weights(y, preds, metric)
    scores = {name: metric(y, combine(preds, w)) for name, w in found.items()}
    best = next(iter(scores))
    for name, score in scores.items():
        if metric.better(score, scores[best]):
            best = name
    return found[best], best


def hill_climb(y, preds, metric: Metric, max_steps: int = 100) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al. 2004): start from the best run, then keep adding the run
    that improves the blend most, until none does. Works for any metric, smooth or not (AUC, F1, accuracy)."""
    scores = [metric(y, p) for p in preds]
    counts = np.zeros(len(preds))
    counts[max(range(len(preds)), key=lambda i: scores[i] if metric.greater_is_better else -scores[i])] = 1
    current = combine(preds, counts)
    best_score = metric(y, current)
    for _ in range(max_steps):
        tried = [metric(y, (current * counts.sum() + p) / (counts.sum() + 1)) for p in preds]
        k = max(range(len(preds)), key=lambda i: tried[i] if metric.greater_is_better else -tried[i])
        if not metric.better(tried[k], best_score):
            break
        counts[k] += 1
        current, best_score = combine(preds, counts / counts.sum()), tried[k]
    return counts / counts.sum()


def scipy_weights(y, preds, metric: Metric) -> np.ndarray:
    """SLSQP on the simplex from equal weights: good for smooth metrics (Pearson, NMAE)."""
    sign = -1.0 if metric.greater_is_better else 1.0
    k = len(preds)
    result = minimize(lambda w: sign * metric(y, combine(preds, w)), np.full(k, 1 / k), method="SLSQP",
                      bounds=[(0.0, 1.0)] * k, constraints={"type": "eq", "fun": lambda w: w.sum() - 1})
    w = np.clip(result.x, 0.0, None)
    return w / w.sum()


# ---- applying a recipe ---------------------------------------------------------------------------------
def move_threshold(p: np.ndarray, t: float) -> np.ndarray:
    """Blends made before threshold.json moved their cut t onto 0.5 this way (piecewise-linear, order kept);
    their recipes still say so and are applied as they were made."""
    return np.where(p < t, 0.5 * p / t, 0.5 + 0.5 * (p - t) / (1 - t))


def apply_blend(preds: list[np.ndarray], spec: dict) -> np.ndarray:
    """The blend of the runs' predictions (OOF or test, in spec["runs"] order) as described by spec."""
    inputs = [to_ranks(p) for p in preds] if spec["rank"] else preds
    blended = combine(inputs, np.array([spec["weights"][name] for name in spec["runs"]]))
    if spec.get("threshold") is not None:  # a blend made before threshold.json
        blended = move_threshold(blended, spec["threshold"])
    return blended


def blend_frames(task: Task, blend_run: Run, frames: list[pd.DataFrame]) -> pd.DataFrame:
    """A blend's predictions from its runs' predictions of the same rows (frames in the recipe's run order)."""
    spec, classes = blend_run.blend_spec(), blend_run.classes()
    aligned = []
    for name, preds in zip(spec["runs"], frames):
        require_columns(preds, [task.id_column, *classes], f"predictions of run {name}")
        preds = preds.set_index(preds[task.id_column].astype(str))
        if aligned and not preds.index.sort_values().equals(aligned[0].index.sort_values()):
            raise DataError(f"run {name} predicted other ids than run {spec['runs'][0]}; "
                            f"predict the same test file with every run")
        aligned.append(preds.loc[aligned[0].index] if aligned else preds)
    out = aligned[0][[task.id_column]].reset_index(drop=True)
    out[classes] = apply_blend([f[classes].to_numpy(dtype=float) for f in aligned], spec)
    return out


# ---- output ---------------------------------------------------------------------------------------------
def write_blend(task: Task, runs: list[Run], name: str | None, blend_oof: pd.DataFrame, spec: dict,
                metric: Metric, tune_bias: bool = False) -> Run:
    name = name or time.strftime("blend-%Y%m%d-%H%M%S")
    blend = Run(runs[0].dir.parent / name)
    if any(p.is_dir() for p in blend.dir.glob("fold*")):  # fold folders; folds.csv is a blend's too (re-runs)
        raise ConfigError(f"{blend.dir} is a trained run, not a blend; choose another RUN=")
    if name in spec["run_cv"]:
        raise ConfigError(f"the blend cannot overwrite one of its runs ({name}); choose another RUN=")
    blend.dir.mkdir(parents=True, exist_ok=True)
    cfg = runs[0].config()
    cfg.run_name = name
    with atomic_path(blend.config_path) as tmp:
        tmp.write_text(to_yaml(cfg))
    for path in ("classes_path", "folds_path"):
        with atomic_path(getattr(blend, path)) as tmp:  # a killed blend never leaves half a copy
            shutil.copy(getattr(runs[0], path), tmp)
    write_csv(blend_oof, blend.oof_path)
    write_json(spec, blend.blend_path)
    classes = blend.classes()
    threshold, bias, decision = tune_decision(metric, blend_oof["target"].to_numpy(), blend_oof[classes].to_numpy(),
                                              blend_oof["fold"].to_numpy(), classes, task.thresholded, tune_bias)
    blend.save_decision(threshold, bias, "oof.csv (blend)")  # re-tuned on the blended OOF
    cv, folds = scores_with_threshold(metric, blend_oof, classes, threshold, bias)
    metrics = {"metric": metric.name, "greater_is_better": metric.greater_is_better, "cv": cv, "folds": folds,
               "n_rows": len(blend_oof), "threshold": threshold, "blend_of": spec["runs"], **decision}
    write_summary(metrics, blend.metrics_path)
    task.plots(cfg, decided(blend_oof, classes, bias), classes, blend.plots_dir)
    return blend
