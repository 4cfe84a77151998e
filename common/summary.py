"""A run's summary: metrics.json (a rescore's metrics_<setting>.json) and the CV line printed with it, written the
same way for a trained run, an estimator run, a blend and a rescore."""
from __future__ import annotations

from pathlib import Path

from common.io import write_json


def write_summary(metrics: dict, path: Path) -> dict:
    """Write metrics (metric, cv, folds, and the decision figures of metrics.tune_decision where there are some)
    to path and print its line; returns metrics."""
    write_json(metrics, path)
    print(summary_line(metrics))
    return metrics


def summary_line(metrics: dict) -> str:
    """CV <metric>: <cv> (best epoch per fold; the decision rule tuned on OOF, the score without it and with it tuned
    on the other folds) | last epoch <cv_last>  folds: <each fold's score>; and, for a config a study chose, the CV
    on the folds the study did not score."""
    notes = ["best epoch per fold"] if "cv_last" in metrics else []
    if metrics.get("threshold") is not None:
        rule = f"threshold {metrics['threshold']:.4f} tuned on OOF; {metrics['cv_at_0.5']:.4f} at 0.5"
        if "cv_cut_from_other_folds" in metrics:
            rule += f", {metrics['cv_cut_from_other_folds']:.4f} with each fold cut where the other folds say"
        notes.append(rule)
    if metrics.get("class_bias") is not None:
        rule = f"class biases tuned on OOF; {metrics['cv_argmax']:.4f} at argmax"
        if "cv_bias_from_other_folds" in metrics:
            rule += f", {metrics['cv_bias_from_other_folds']:.4f} with each fold's biases from the other folds"
        notes.append(rule)
    text = f"CV {metrics['metric']}: {metrics['cv']:.4f}" + (f" ({'; '.join(notes)})" if notes else "")
    if "cv_last" in metrics:
        text += f" | last epoch {metrics['cv_last']:.4f}"
    text += f"  folds: {', '.join(f'{s:.4f}' for s in metrics['folds'])}"
    if "tuned_on_folds" in metrics:
        other = metrics["cv_untuned_folds"]
        text += (f"\nfolds {metrics['tuned_on_folds']} chose this setting; cv on the other folds: "
                 + (f"{other:.4f}" if other is not None else "none trained"))
    return text
