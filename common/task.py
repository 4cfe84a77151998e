"""The small interface a competition implements. The engine (trainer, predict, cli) only talks to this.

A competition subclasses Task, sets its class attributes and implements the four abstract methods. Everything else has a default that follows from `kind` and `metric`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from common.folds import FoldSpec
from common.io import DataError, read_csv, require_columns

TARGET = "_y"  # numeric target column the engine adds to the train frame (class index for multiclass)


def model_inputs(batch: dict) -> dict:
    """A batch without the engine's bookkeeping: what the model's forward takes."""
    return {k: v for k, v in batch.items() if k not in ("index", "target")}


class Task(ABC):
    name: str                      # folder name: competitions/<name>, runs/<name>, submissions/<name>
    kind: str                      # "regression" | "binary" | "multiclass"
    metric: str                    # a key of common.metrics.METRICS
    id_column: str                 # id column shared by train, test and the sample submission
    target_column: str             # target column of the train file
    fold_spec: FoldSpec = FoldSpec()
    sample_submission: str = "sample_submission.csv"
    config_path: Path              # the competition's config.yaml
    kaggle_competition: str | None = None  # Kaggle slug (kernel competition_sources); None: not on Kaggle
    config_defaults: dict = {}     # keys a family of tasks adds to the engine's (e.g. the image keys)

    # ---- abstract: data and model ---------------------------------------------------------------
    @abstractmethod
    def load_train(self, cfg: DictConfig) -> pd.DataFrame:
        """The labelled train frame: id_column, target_column and whatever the inputs need."""

    @abstractmethod
    def load_test(self, cfg: DictConfig, path: Path) -> pd.DataFrame:
        """A frame in the test format read from path (id_column and the inputs)."""

    @abstractmethod
    def dataset(self, cfg: DictConfig, df: pd.DataFrame, mode: str, run_dir: Path) -> torch.utils.data.Dataset:
        """mode: 'train' | 'valid' | 'test'. Items are dicts of model inputs plus 'index' (and 'target')."""

    @abstractmethod
    def build_model(self, cfg: DictConfig, n_outputs: int, run_dir: Path, pretrained: bool) -> nn.Module:
        """pretrained=False builds the architecture only (inference loads the fold checkpoint)."""

    # ---- defaults -----------------------------------------------------------------------------
    def config(self, overrides: list[str] | None = None, config_path: str | Path | None = None) -> DictConfig:
        """This competition's config: engine defaults <- family defaults <- config.yaml <- experiment <- overrides."""
        from common.config import load_config
        return load_config(config_path or self.config_path, overrides, defaults=self.config_defaults)

    def data_dir(self, cfg: DictConfig) -> Path:
        return Path(cfg.data_dir or f"data/{self.name}")

    def test_path(self, cfg: DictConfig) -> Path:
        return Path(cfg.test_file) if cfg.test_file else self.data_dir(cfg) / "test.csv"

    def sample_submission_path(self, cfg: DictConfig) -> Path:
        return self.data_dir(cfg) / self.sample_submission

    def submission_columns(self, cfg: DictConfig) -> tuple[str, str]:
        """(id column, target column) of the leaderboard file, read from the sample submission when present."""
        path = self.sample_submission_path(cfg)
        if path.is_file():
            cols = list(read_csv(path, nrows=0).columns)
            if len(cols) != 2:
                raise DataError(f"{path}: expected 2 columns (id, target), found {cols}")
            return cols[0], cols[1]
        return self.id_column, self.target_column

    def classes(self, train: pd.DataFrame) -> list[str]:
        """Prediction columns of oof.csv / test_preds.csv: the class labels, or one column."""
        if self.kind == "multiclass":
            return sorted(map(str, train[self.target_column].unique()))
        return ["pred"]

    def encode_target(self, train: pd.DataFrame, classes: list[str]) -> np.ndarray:
        y = train[self.target_column]
        if self.kind == "multiclass":
            index = {c: i for i, c in enumerate(classes)}
            return y.astype(str).map(index).to_numpy()
        return y.astype(float).to_numpy()

    def collate_fn(self, cfg: DictConfig, run_dir: Path):
        return None  # torch's default collation

    def loss_fn(self, cfg: DictConfig, train: pd.DataFrame):
        """loss(logits, target) -> scalar. train is this fold's training frame (for class weights and the like)."""
        if self.kind == "multiclass":
            return nn.CrossEntropyLoss()
        if self.kind == "binary":
            return lambda logits, y: nn.functional.binary_cross_entropy_with_logits(logits.view(-1), y.float())
        return lambda logits, y: nn.functional.mse_loss(logits.view(-1), y.float())

    def activate(self, cfg: DictConfig, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> the predictions stored in oof / test_preds (scores, probabilities)."""
        if self.kind == "multiclass":
            return logits.float().softmax(-1)
        if self.kind == "binary":
            return logits.float().sigmoid().view(-1, 1)
        return logits.float().view(-1, 1)

    def train_frame(self, cfg: DictConfig, train: pd.DataFrame) -> pd.DataFrame:
        """The rows a fold trains on, from its training split: re-sampling (replicating rare labels, thinning
        common ones) overrides this. Sampler, dataset and loss all see the returned frame."""
        return train

    def train_sampler(self, cfg: DictConfig, train: pd.DataFrame):
        return None  # None -> shuffle

    def train_loss(self, cfg: DictConfig, model: nn.Module, batch: dict, loss_fn) -> torch.Tensor:
        """The loss of one training batch. Batch-level tricks that mix inputs and targets (mixup) override this."""
        return loss_fn(model(**model_inputs(batch)), batch["target"])

    def tta_model(self, cfg: DictConfig, model: nn.Module) -> nn.Module:
        if cfg.tta:
            raise ValueError(f"{self.name} has no test-time augmentation; run with tta=false")
        return model

    @property
    def thresholded(self) -> bool:
        """A binary task scored on labels: its probabilities become labels at 0.5 (an ensemble re-tunes that cut)."""
        return self.kind == "binary" and self.metric in ("accuracy", "macro_f1")

    def submission_values(self, preds: pd.DataFrame, classes: list[str]) -> pd.Series:
        """Prediction frame (classes as columns) -> the leaderboard's target column.
        Probabilities where the metric ranks, labels where it counts."""
        if self.kind == "multiclass":
            return preds[classes].idxmax(axis=1)
        if self.thresholded:
            return (preds["pred"] >= 0.5).astype(int)
        return preds["pred"]

    def plots(self, cfg: DictConfig, oof: pd.DataFrame, classes: list[str], plots_dir: Path) -> None:
        """Extra plots from the out-of-fold predictions (the engine draws learning curves itself)."""
        from common import plots
        if self.kind == "multiclass":
            plots.confusion_matrix(oof, classes, plots_dir / "confusion_matrix.png")
        elif self.kind == "regression":
            plots.oof_scatter(oof, plots_dir / "oof_scatter.png")
        else:
            plots.roc_curve(oof, plots_dir / "roc_curve.png")


def read_frame(path: Path, columns: list[str], id_column: str | None = None) -> pd.DataFrame:
    """Read a CSV, require columns and (optionally) unique ids, naming the file and column on failure."""
    df = read_csv(path)
    require_columns(df, columns, path)
    if id_column:
        dup = df[id_column].duplicated()
        if dup.any():
            raise DataError(f"{path}: id {df[id_column][dup].iloc[0]!r} in column {id_column!r} appears twice "
                            f"(data row {int(dup.to_numpy().argmax()) + 1})")
    return df
