"""The small interface a competition implements. The engine (trainer, predict, cli) only talks to this.

A competition subclasses Task (or a family: TextTask in common/text.py, ImageTask in common/vision.py), sets the
class attributes and implements what is truly its own. The hooks, in the order the engine calls them:

    load_train(cfg)                         the labelled frame (ids, target, whatever the inputs need)
    folds(cfg, train)                       fold of every row; -1 = in no fold (e.g. a pair spanning two folds)
    per fold k, with ctx = FoldContext(k, fold dir, run dir, state, generator):
      train_frame / valid_frame(cfg, df)    the rows the fold trains on / is scored on (re-sampling)
      fit_fold(cfg, train, fold_dir)        learn from training rows only (scalers, indexes, mined pairs); save
                                            in fold_dir; return it as ctx.state. load_fold reads it back.
      dataset(cfg, df, mode, ctx)           items: dicts of model inputs + 'index' (+ 'target')
      collate_fn(cfg, ctx), train_sampler(cfg, train, ctx)
      build_model(cfg, n_outputs, ctx, pretrained)   called as model(**inputs): any number of named inputs
      loss_fn(cfg, train, ctx), train_loss(cfg, model, batch, loss_fn), activate(cfg, logits)
      estimator(cfg) + features(cfg, df, ctx)        instead of the four above: a model that is not a network
    load_test(cfg, path), tta_views(cfg, batch)      prediction: per fold, its state applied to the test rows
    submission_values(preds, classes, threshold, class_bias)   predictions -> the leaderboard's target column
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from common.errors import ConfigError, DataError
from common.folds import TARGET, FoldSpec, make_folds  # noqa: F401  (TARGET: part of the task interface)
from common.metrics import decided
from common.io import plain, read_csv, require_columns
from common.losses import LOSSES, activate, check_loss, get_loss

BOOKKEEPING = ("index", "target")  # batch keys that are not model inputs
LABEL_METRICS = ("accuracy", "macro_f1")  # metrics that score labels: the decision rule is tuned on OOF


def model_inputs(batch: dict) -> dict:
    """A batch without the engine's bookkeeping: what the model's forward takes."""
    return {k: v for k, v in batch.items() if k not in BOOKKEEPING}


@dataclass
class FoldContext:
    """What every fold-level hook receives: which fold, where its files live, what fit_fold learned."""
    fold: int
    dir: Path                  # runs/<c>/<run>/fold<k>/: checkpoint, fitted state, history
    run_dir: Path              # the run folder (saved backbone files, tokenizer)
    state: Any = None          # what fit_fold returned (training) or load_fold read back (everywhere else)
    # Re-seeded by the trainer at every epoch: a sampler that draws from it gives the same order on resume.
    generator: torch.Generator = field(default_factory=torch.Generator)


class Task(ABC):
    name: str                      # folder name: competitions/<name>, runs/<name>, submissions/<name>
    kind: str                      # "regression" | "binary" | "multiclass"
    metric: str                    # a key of common.metrics.METRICS
    id_column: str                 # id column shared by train, test and the sample submission
    target_column: str             # target column of the train file
    fold_spec: FoldSpec = FoldSpec()
    sample_submission: str = "sample_submission.csv"
    test_file: str = "test.csv"    # the test file under data_dir (test_file= overrides)
    config_path: Path              # the competition's config.yaml
    kaggle_competition: str | None = None  # Kaggle slug (kernel competition_sources); None: not on Kaggle
    config_defaults: dict = {}     # every key a family and the competition add to the engine's, with its default

    # ---- data ---------------------------------------------------------------------------------
    @abstractmethod
    def load_train(self, cfg: DictConfig) -> pd.DataFrame:
        """The labelled train frame: id_column, target_column and whatever the inputs need."""

    @abstractmethod
    def load_test(self, cfg: DictConfig, path: Path) -> pd.DataFrame:
        """A frame in the test format read from path (id_column and the inputs)."""

    def folds(self, cfg: DictConfig, train: pd.DataFrame) -> np.ndarray:
        """The fold of every train row, drawn with fold_seed (not the training seed, so runs that differ only in
        `seed` share folds and blend). -1 puts a row in no fold: it is neither trained on nor scored."""
        return make_folds(train, self.fold_spec, cfg.folds, cfg.fold_seed)

    def train_frame(self, cfg: DictConfig, train: pd.DataFrame) -> pd.DataFrame:
        """The rows a fold trains on, from its training split: re-sampling (replicating rare labels, thinning
        common ones) overrides this. fit_fold, sampler, dataset and loss all see the returned frame."""
        return train

    def valid_frame(self, cfg: DictConfig, valid: pd.DataFrame) -> pd.DataFrame:
        """The rows a fold is scored on (its OOF rows). Must keep id_column and the target."""
        return valid

    def fit_fold(self, cfg: DictConfig, train: pd.DataFrame, fold_dir: Path) -> Any:
        """Learn what must come from the fold's training rows only, save it in fold_dir and return it.
        load_fold must read the same thing back (validation after resume, infer, Grad-CAM, the Kaggle kernel)."""
        return None

    def load_fold(self, cfg: DictConfig, fold_dir: Path) -> Any:
        return None

    # ---- network ------------------------------------------------------------------------------
    def dataset(self, cfg: DictConfig, df: pd.DataFrame, mode: str, ctx: FoldContext) -> torch.utils.data.Dataset:
        """mode: 'train' | 'valid' | 'test'. Items are dicts of model inputs plus 'index' (and 'target')."""
        raise NotImplementedError(f"{type(self).__name__} must implement dataset() (or estimator())")

    def build_model(self, cfg: DictConfig, n_outputs: int, ctx: FoldContext, pretrained: bool) -> nn.Module:
        """pretrained=False builds the architecture only (inference loads the fold checkpoint)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_model() (or estimator())")

    def collate_fn(self, cfg: DictConfig, ctx: FoldContext):
        return None  # torch's default collation

    def train_sampler(self, cfg: DictConfig, train: pd.DataFrame, ctx: FoldContext):
        """None -> a shuffle drawn from ctx.generator. A custom sampler should draw from ctx.generator too."""
        return None

    def predict_order(self, cfg: DictConfig, df: pd.DataFrame, ctx: FoldContext) -> list[int] | None:
        """The order validation and test rows are predicted in (predictions come back in row order whatever it is);
        None -> as they are. Texts go longest first: each batch holds similar lengths, so little padding."""
        return None

    def default_loss(self, cfg: DictConfig) -> str:
        """The loss when `loss=` is unset (or a task declares no `loss` key): by the kind of output."""
        return {"binary": "bce", "regression": "mse", "multiclass": "ce"}[self.kind]

    def loss_kind(self, cfg: DictConfig) -> str:
        """What the model outputs, for the loss registry (common/losses.py): the task's kind unless a family
        says otherwise (a bi-encoder's cosine of two embeddings)."""
        return self.kind

    def loss_name(self, cfg: DictConfig) -> str:
        """`loss=` checked against the registry for this kind of output; unset: the family's default."""
        return check_loss(cfg.get("loss") or self.default_loss(cfg), self.loss_kind(cfg))

    def loss_fn(self, cfg: DictConfig, train: pd.DataFrame, ctx: FoldContext):
        """loss(logits, target) -> scalar. train is this fold's training frame (for class weights and the like)."""
        name = self.loss_name(cfg)
        return get_loss(name, self.loss_kind(cfg), **{key: cfg[key] for key in LOSSES[name].config_keys})

    def train_loss(self, cfg: DictConfig, model: nn.Module, batch: dict, loss_fn) -> torch.Tensor:
        """The loss of one training batch. Batch-level tricks that mix inputs and targets (mixup) override this."""
        return loss_fn(model(**model_inputs(batch)), batch["target"])

    def activate(self, cfg: DictConfig, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> the predictions stored in oof / test_preds (scores, probabilities): the loss's own."""
        return activate(self.loss_name(cfg), logits)

    def refine_predictions(self, cfg: DictConfig, model, dataset: torch.utils.data.Dataset, preds: np.ndarray,
                           accelerator) -> np.ndarray:
        """A whole pass's predictions (every row of dataset, in row order), changed by what only the whole pass
        shows (a bi-encoder's query expansion over all the texts scored); as they are unless a family says."""
        return preds

    def tta_views(self, cfg: DictConfig, batch: dict) -> list[dict]:
        """The views of a batch that prediction averages (after activate) when tta is on; [batch] when off."""
        if cfg.tta:
            raise ConfigError(f"{self.name} has no test-time augmentation; run with tta=false")
        return [batch]

    # ---- a model that is not a network (gradient-boosted trees and the like) ---------------------
    def estimator(self, cfg: DictConfig):
        """A scikit-learn style estimator (fit / predict or predict_proba) to train instead of a network, or None.
        It gets the same folds, fold state, OOF, metrics.json, infer, submit, ensemble and tune."""
        return None

    def features(self, cfg: DictConfig, df: pd.DataFrame, ctx: FoldContext) -> pd.DataFrame:
        """The estimator's input table for df's rows (fold state in ctx.state)."""
        raise NotImplementedError(f"{type(self).__name__}.estimator() needs features()")

    # ---- config and paths ---------------------------------------------------------------------
    def config(self, overrides: Mapping | list[str] | None = None, config_path: str | Path | None = None) -> DictConfig:
        """This competition's config: engine defaults <- declared keys <- config.yaml <- experiment <- overrides."""
        from common.config import load_config
        return load_config(config_path or self.config_path, overrides, defaults=self.config_defaults)

    def data_dir(self, cfg: DictConfig) -> Path:
        return Path(cfg.data_dir or f"data/{self.name}")

    def test_path(self, cfg: DictConfig) -> Path:
        return Path(cfg.test_file) if cfg.test_file else self.data_dir(cfg) / self.test_file

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

    # ---- targets and predictions --------------------------------------------------------------
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

    @property
    def thresholded(self) -> bool:
        """A binary task scored on labels: its cut is tuned on the run's OOF (threshold.json) and used by submit."""
        return self.kind == "binary" and self.metric in LABEL_METRICS

    def check_config(self, cfg: DictConfig) -> None:
        """Raise ConfigError for settings this task cannot run with. Training calls it before the run folder is
        written, so a refused setting leaves nothing behind that a corrected command would have to match."""
        self.tunes_class_bias(cfg)

    def tunes_class_bias(self, cfg: DictConfig) -> bool:
        """class_bias=true on a multiclass task scored on labels: per-class biases are tuned on the run's OOF
        (class_bias.json) and used by submit. Refused on any other task, before anything trains."""
        if not cfg.get("class_bias"):
            return False
        if self.kind != "multiclass" or self.metric not in LABEL_METRICS:
            raise ConfigError(f"class_bias=true is for multiclass tasks scored on labels; {self.name} is "
                              f"{self.kind}, scored by {self.metric}")
        return True

    def submission_values(self, preds: pd.DataFrame, classes: list[str], threshold: float | None = None,
                          class_bias: np.ndarray | None = None) -> pd.Series:
        """Prediction frame (classes as columns) -> the leaderboard's target column.
        Probabilities where the metric ranks, labels where it counts (binary: cut at the run's threshold;
        multiclass: argmax, after the run's class biases if it has them)."""
        if self.kind == "multiclass":
            return decided(preds, classes, class_bias)[classes].idxmax(axis=1)
        if self.thresholded:
            return (preds["pred"] >= (0.5 if threshold is None else threshold)).astype(int)
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
            first = plain(df[id_column][dup].iloc[0])
            raise DataError(f"{path}: id {first!r} in column {id_column!r} appears twice "
                            f"(data row {int(dup.to_numpy().argmax()) + 1})")
    return df
