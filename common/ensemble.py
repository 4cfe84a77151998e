"""Blend runs from their out-of-fold predictions: make <c>-ensemble RUNS="a b c" RUN=<blend> [ARGS="rank=true"].

The runs must share their folds (same split, same OOF rows). Non-negative weights that sum to 1 are searched on
the OOF predictions for the competition's metric and direction, by scipy's SLSQP and by hill climbing (Caruana's
ensemble selection, which starts from the best single run, so the blend is never worse on OOF); `method=auto` keeps
the better of the two. Classification blends probabilities (labels come after, at submission time); `rank=true`
blends ranks instead of scores (for AUC); a binary task scored on labels re-tunes its threshold on the blended OOF.

The blend is written as a run folder (config.yaml, classes.json, folds.csv, oof.csv, test_preds.csv,
metrics.json with the blend's CV, the runs' CVs and the weights), so `make <c>-submit RUN=<blend>` works.
"""
from __future__ import annotations

import shutil
import time

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import rankdata

from common import cli
from common.config import ConfigError, to_yaml
from common.io import DataError, atomic_path, read_csv, require_columns, write_csv, write_json
from common.metrics import Metric, get_metric
from common.runs import Run
from common.task import Task

ENSEMBLE_ARGS = {
    "runs": None,        # the runs to blend, space-separated (RUNS="a b c")
    "run_name": None,    # the blend's run folder (RUN=); null -> blend-<timestamp>
    "runs_dir": "runs",
    "method": "auto",    # scipy | hill | auto (both; keep the better OOF score)
    "rank": False,       # blend ranks, not scores: for metrics that only rank (AUC); one prediction column only
}


def main(task: Task, argv: list[str] | None = None) -> dict:
    return cli.main(lambda: ensemble(task, argv))


def ensemble(task: Task, argv: list[str] | None) -> dict:
    args = cli.command_args(argv, ENSEMBLE_ARGS, "ensemble")
    names = str(args.runs or "").split()
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"ensemble needs two or more different runs, e.g. RUNS=\"a b\"; got {names}")
    if args.method not in ("auto", "scipy", "hill"):
        raise ConfigError(f"method must be auto, scipy or hill, got {args.method!r}")
    runs = [Run.open(task.name, name, args.runs_dir) for name in names]
    metric = get_metric(task.metric)
    oof = shared_oof(task, runs)
    classes = runs[0].classes()
    if args.rank and len(classes) > 1:
        raise ConfigError(f"rank=true blends one prediction column; these runs predict {len(classes)} classes")
    y = oof[0]["target"].to_numpy()
    preds = {run.name: o[classes].to_numpy(dtype=float) for run, o in zip(runs, oof)}

    inputs = [to_ranks(p) for p in preds.values()] if args.rank else list(preds.values())
    weights, method = search_weights(y, inputs, metric, args.method)
    weights = {name: round(float(w), 6) for name, w in zip(names, weights)}
    # Runs without weight leave the recipe: neither the submission nor a Kaggle kernel predicts with them.
    spec = {"runs": [n for n in names if weights[n] > 0], "weights": {n: w for n, w in weights.items() if w > 0},
            "method": method, "rank": bool(args.rank), "threshold": None,
            "run_cv": {name: metric(y, p) for name, p in preds.items()}}
    if task.thresholded:
        spec["threshold"] = tune_threshold(y, apply_blend([preds[n] for n in spec["runs"]], spec)[:, 0], metric)
    blend_oof = oof[0][[task.id_column, "fold", "target"]].copy()
    blend_oof[classes] = apply_blend([preds[n] for n in spec["runs"]], spec)
    for run in runs:
        if run.name in spec["runs"]:
            ensure_test_predictions(task, run, args.runs_dir)
    blend = write_blend(task, runs, args, blend_oof, spec, metric)
    print_report(blend, metric)
    return blend.metrics()


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
                            f"seed, folds and limit")
        if not run.oof_path.is_file():
            raise FileNotFoundError(f"run {run.name} has no {run.oof_path.name}; has it finished training?")
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


def ensure_test_predictions(task: Task, run: Run, runs_dir: str) -> None:
    if not run.test_preds_path.is_file():
        print(f"run {run.name} has no test predictions yet: predicting the test set")
        cli.infer(task, [f"run_name={run.name}", f"runs_dir={runs_dir}"])


# ---- weights --------------------------------------------------------------------------------------------
def combine(preds: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return np.tensordot(np.asarray(weights, dtype=float), np.stack(preds), axes=1)


def to_ranks(p: np.ndarray) -> np.ndarray:
    """Scores -> their ranks scaled to (0, 1], column by column."""
    return np.column_stack([rankdata(c) / len(c) for c in p.T])


def search_weights(y: np.ndarray, preds: list[np.ndarray], metric: Metric, method: str) -> tuple[np.ndarray, str]:
    """Non-negative weights summing to 1 that score best on OOF, and the method that found them."""
    found = {}
    if method in ("hill", "auto"):
        found["hill climbing"] = hill_climb(y, preds, metric)
    if method in ("scipy", "auto"):
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


# ---- threshold ------------------------------------------------------------------------------------------
def tune_threshold(y: np.ndarray, p: np.ndarray, metric: Metric) -> float:
    """The cut on blended probabilities that scores best on OOF (0.5 unless another does better)."""
    candidates = np.unique(np.concatenate([[0.5], np.quantile(p, np.linspace(0.01, 0.99, 99))]))
    candidates = candidates[(candidates > 0) & (candidates < 1)]
    best = 0.5
    for t in candidates:
        if metric.better(metric(y, (p >= t).astype(float)), metric(y, (p >= best).astype(float))):
            best = float(t)
    return best


def move_threshold(p: np.ndarray, t: float) -> np.ndarray:
    """Map probabilities piecewise-linearly so that t lands on 0.5: the order is kept, and every later step
    (the metric, the submission's labels) keeps cutting at 0.5 yet cuts where the blend should."""
    return np.where(p < t, 0.5 * p / t, 0.5 + 0.5 * (p - t) / (1 - t))


def apply_blend(preds: list[np.ndarray], spec: dict) -> np.ndarray:
    """The blend of the runs' predictions (OOF or test, in spec["runs"] order) as described by spec."""
    inputs = [to_ranks(p) for p in preds] if spec["rank"] else preds
    blended = combine(inputs, np.array([spec["weights"][name] for name in spec["runs"]]))
    if spec["threshold"] is not None:
        blended = move_threshold(blended, spec["threshold"])
    return blended


def blend_test_predictions(task: Task, blend: Run, members: list[Run]) -> pd.DataFrame:
    """test_preds.csv of a blend from its runs' test_preds.csv (here after `ensemble`, in the Kaggle kernel after
    each run predicted the hidden test set)."""
    spec, classes = blend_spec(blend), blend.classes()
    frames = []
    for run in members:
        preds = read_csv(run.test_preds_path)
        require_columns(preds, [task.id_column, *classes], run.test_preds_path)
        preds.index = preds[task.id_column].astype(str)
        if frames and not preds.index.sort_values().equals(frames[0].index.sort_values()):
            raise DataError(f"{run.test_preds_path}: not the same test ids as run {members[0].name}'s; "
                            f"predict the same test file with every run")
        frames.append(preds.loc[frames[0].index] if frames else preds)
    out = frames[0][[task.id_column]].reset_index(drop=True)
    out[classes] = apply_blend([f[classes].to_numpy(dtype=float) for f in frames], spec)
    return out


# ---- output ---------------------------------------------------------------------------------------------
def write_blend(task: Task, runs: list[Run], args, blend_oof: pd.DataFrame, spec: dict, metric: Metric) -> Run:
    name = args.run_name or time.strftime("blend-%Y%m%d-%H%M%S")
    blend = Run(runs[0].dir.parent / name)
    if any(blend.dir.glob("fold*")):
        raise ConfigError(f"{blend.dir} is a trained run, not a blend; choose another RUN=")
    if name in spec["run_cv"]:
        raise ConfigError(f"the blend cannot overwrite one of its runs ({name}); choose another RUN=")
    blend.dir.mkdir(parents=True, exist_ok=True)
    cfg = runs[0].config()
    cfg.run_name = name
    with atomic_path(blend.config_path) as tmp:
        tmp.write_text(to_yaml(cfg))
    for path in ("classes_path", "folds_path"):
        shutil.copy(getattr(runs[0], path), getattr(blend, path))
    write_csv(blend_oof, blend.oof_path)
    classes = blend.classes()
    y = blend_oof["target"].to_numpy()
    write_json({
        "metric": metric.name, "greater_is_better": metric.greater_is_better,
        "cv": metric(y, blend_oof[classes].to_numpy()),
        "folds": [metric(g["target"].to_numpy(), g[classes].to_numpy()) for _, g in blend_oof.groupby("fold")],
        "n_rows": len(blend_oof),
        "ensemble": spec,
    }, blend.metrics_path)
    write_csv(blend_test_predictions(task, blend, [r for r in runs if r.name in spec["runs"]]), blend.test_preds_path)
    task.plots(cfg, blend_oof, classes, blend.plots_dir)
    return blend


def blend_spec(run: Run) -> dict | None:
    """A blend's recipe (runs, weights, rank, threshold) from its metrics.json; None for a trained run."""
    return run.metrics().get("ensemble") if run.metrics_path.is_file() else None


def print_report(blend: Run, metric: Metric) -> None:
    m = blend.metrics()
    spec = m["ensemble"]
    direction = "higher" if metric.greater_is_better else "lower"
    print(f"ensemble {blend.name}: {metric.name} ({direction} is better), weights by {spec['method']}"
          f"{', on ranks' if spec['rank'] else ''}")
    width = max(len(n) for n in [*spec["run_cv"], "blend"])
    print(f"  {'run':<{width}}  {'CV':>9}  {'weight':>7}")
    for name, cv in spec["run_cv"].items():
        print(f"  {name:<{width}}  {cv:>9.5f}  {spec['weights'].get(name, 0.0):>7.3f}")
    print(f"  {'blend':<{width}}  {m['cv']:>9.5f}")
    if spec["threshold"] is not None:
        print(f"  threshold re-tuned on the blended OOF: {spec['threshold']:.4f}")
    print(f"blend run: {blend.dir}  ->  make {blend.dir.parent.name}-submit RUN={blend.name}")
