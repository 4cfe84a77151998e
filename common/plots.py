"""Plots a person would rather look at than read: learning curves, confusion matrix, OOF scatter, ROC."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and Kaggle
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.io import atomic_path  # noqa: E402


def save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def learning_curves(history: pd.DataFrame, metric_name: str, path: Path) -> Path:
    """Train / valid loss and the metric per evaluation, one line per fold."""
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4))
    for fold, h in history.groupby("fold"):
        x = np.arange(1, len(h) + 1)
        line, = ax_loss.plot(x, h["train_loss"], "--", alpha=0.7)
        ax_loss.plot(x, h["valid_loss"], "-", color=line.get_color(), label=f"fold {fold}")
        ax_score.plot(x, h["score"], "-o", color=line.get_color(), label=f"fold {fold}")
    ax_loss.set(title="loss (dashed: train, solid: valid)", xlabel="evaluation")
    ax_score.set(title=metric_name, xlabel="evaluation")
    ax_loss.legend(fontsize=8)
    ax_score.legend(fontsize=8)
    return save(fig, path)


def confusion_matrix(oof: pd.DataFrame, classes: list[str], path: Path) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * n), max(5, 0.35 * n)))
    ConfusionMatrixDisplay.from_predictions(
        oof["target"].astype(int), oof[classes].to_numpy().argmax(1), labels=list(range(n)),
        display_labels=classes, ax=ax, xticks_rotation=90, colorbar=False, include_values=n <= 20)
    ax.set_title("OOF confusion matrix")
    return save(fig, path)


def oof_scatter(oof: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    jitter = np.random.default_rng(0).normal(0, 0.01, len(oof))
    ax.scatter(oof["target"] + jitter, oof["pred"], s=4, alpha=0.3)
    lo, hi = float(min(oof["target"].min(), oof["pred"].min())), float(max(oof["target"].max(), oof["pred"].max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="target", ylabel="OOF prediction", title="OOF predictions vs target")
    return save(fig, path)


def roc_curve(oof: pd.DataFrame, path: Path) -> Path:
    from sklearn.metrics import RocCurveDisplay
    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(oof["target"].astype(int), oof["pred"], ax=ax)
    ax.set_title("OOF ROC curve")
    return save(fig, path)
