"""The tabular family: a row of numeric features per example, next to (or instead of) an image, for tasks scored
on a number per row. Any competition can use it; what its features are is the competition's own.

    features         columns prefixed f_ in the frames load_train / load_test return: the competition computes
                     them, or a prepared table (`features_file=`, configurable id / target / group columns)
                     stands in for its raw files (read_feature_table)
    feature cache    feature rows keyed by their source file and settings, each file computed once (FeatureCache)
    per-fold scaler  median imputation + standardisation fitted on the fold's training rows (fit_fold), saved
                     in the fold folder, reloaded wherever the fold predicts (load_fold)
    models           `model_kind`: cnn (timm backbone on the image), gbm (scikit-learn's
                     HistGradientBoostingRegressor on the features, the engine's non-network path; optionally on
                     top of a line, LinearThenTrees) or fusion (timm backbone + a small MLP on the scaled features)

Regression targets that span orders of magnitude (weights, areas, prices) are learned as log(1 + y) (`target_transform`):
networks regress log1p(y) and `activate` returns expm1 of the output; the estimator is wrapped in scikit-learn's
TransformedTargetRegressor. Out-of-fold predictions and scores are therefore in the target's own units.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from sklearn.base import BaseEstimator, RegressorMixin
from torch import nn

from common.errors import ConfigError, DataError
from common.io import atomic_path, read_csv
from common.losses import get_loss
from common.task import TARGET, FoldContext
from common.vision import IMAGE_DEFAULTS, ImageTask

FEATURE_PREFIX = "f_"      # feature columns carried in the frames the engine hands to the hooks
FEATURE_VERSION = 1        # bump when a feature's definition changes: old cache entries are then ignored

TABULAR_DEFAULTS = {
    **IMAGE_DEFAULTS,
    "model_kind": "fusion",       # cnn (image only) | gbm (features only, gradient-boosted trees) | fusion (both)
    "target_transform": "log1p",  # log1p: learn log(1 + y) | log: log(y + target_offset) | none; scored in y's units
    "target_offset": 0.01,        # target_transform=log: keeps y = 0 finite; small, so tiny weights stay apart
    "loss": "l1",                 # network loss on the transformed target: l1 | mse | huber (l1 on log1p ~ relative)
    "features_file": None,        # a prepared feature table (CSV) standing in for the raw files (gbm only)
    "features_id": None,          # its id column (becomes the task's id column); null -> the task's id column
    "features_target": None,      # its target column (absent in a test table); null -> the task's target column
    "features_case": None,        # its group column (the folds' `case`); null or absent -> the task's case_of(ids)
    "feature_cache": None,        # folder for cached feature rows; null -> <runs_dir>/.cache/<competition>
    "mlp_hidden": 64,             # fusion: hidden width of the feature MLP
    "mlp_dropout": 0.1,           # fusion: dropout in the feature MLP
    "gbm_max_iter": 300,          # HistGradientBoostingRegressor: boosting rounds
    "gbm_learning_rate": 0.05,
    "gbm_max_leaf_nodes": 15,
    "gbm_min_samples_leaf": 10,
    "gbm_l2": 0.0,                # l2_regularization
    "gbm_loss": "squared_error",  # on the transformed target: squared_error | absolute_error (median: nearer NMAE)
    "gbm_linear": [],             # columns x of a line in log(1 + x) (on the transformed target) the trees then correct;
                                  # [] -> trees alone. Trees cannot extrapolate; a line can.
}

MODEL_KINDS = ("cnn", "gbm", "fusion")


# ---- cache ---------------------------------------------------------------------------------------------------
class FeatureCache:
    """Feature rows keyed by (file, its size and mtime, the settings that shape them): each file is read once.
    One JSON per entry, written atomically, so parallel processes may share the folder."""

    def __init__(self, root: str | Path):
        self.dir = Path(root)

    def get(self, kind: str, path: str | Path | None, settings: dict, compute) -> dict:
        if path is None or not Path(path).is_file():
            return compute(path)  # nothing to key on (a missing file): cheap anyway
        stat = Path(path).stat()
        key = json.dumps([FEATURE_VERSION, kind, str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, settings],
                         sort_keys=True, default=str)
        entry = self.dir / kind / f"{hashlib.sha1(key.encode()).hexdigest()}.json"
        if entry.is_file():
            try:
                return json.loads(entry.read_text())
            except json.JSONDecodeError:  # a torn entry from a killed writer: dropped and recomputed below
                entry.unlink(missing_ok=True)
        row = compute(path)
        with atomic_path(entry) as tmp:
            Path(tmp).write_text(json.dumps(row))
        return row


def feature_cache(cfg: DictConfig, competition: str) -> FeatureCache:
    return FeatureCache(cfg.feature_cache or Path(cfg.runs_dir) / ".cache" / competition)


def feature_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if str(c).startswith(FEATURE_PREFIX)]


def read_feature_table(cfg: DictConfig, path: str | Path, id_column: str, target_column: str, labelled: bool,
                       case_of=None) -> pd.DataFrame:
    """A prepared feature table -> a frame with the task's id (and target) column, `case`, and the table's numeric
    columns as features (prefixed f_). Text columns other than id / case / target are left out. The table's own
    column names: features_id, features_target, features_case (null: the task's id / target column). Without a
    case column, case_of(ids) gives each row's group (default: each row its own)."""
    path = Path(path)
    df = read_csv(path)
    table_id, table_target = cfg.features_id or id_column, cfg.features_target or target_column
    need = [table_id] + ([table_target] if labelled else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))} (features_id / features_target); "
                        f"found {', '.join(map(repr, df.columns))}")
    ids = df[table_id].astype(str)
    dup = ids.duplicated()
    if dup.any():
        raise DataError(f"{path}: id {ids[dup].iloc[0]!r} in column {table_id!r} appears twice "
                        f"(data row {int(dup.to_numpy().argmax()) + 1})")
    if cfg.features_case and cfg.features_case in df.columns:
        case = df[cfg.features_case].astype(str)
    else:
        case = case_of(ids) if case_of else ids
    skip = {table_id, table_target, cfg.features_case}
    numeric = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]
    out = pd.DataFrame({id_column: ids, "case": case})
    if labelled:
        out[target_column] = df[table_target]
    for c in numeric:
        out[FEATURE_PREFIX + str(c)] = df[c].astype(float)
    if not numeric:
        raise DataError(f"{path}: no numeric feature column besides {sorted(map(str, skip - {None}))}")
    return out


# ---- per-fold state: the scaler and the target's centre ------------------------------------------------------
class FeatureScaler:
    """Median imputation then standardisation, column by column, fitted on one fold's training rows."""

    def __init__(self, columns: list[str]):
        self.columns = list(columns)

    def fit(self, df: pd.DataFrame) -> "FeatureScaler":
        x = df[self.columns].to_numpy(dtype=float)
        with warnings.catch_warnings():  # an all-NaN column (no value in the fold) is filled with 0
            warnings.simplefilter("ignore", RuntimeWarning)
            self.median = np.nan_to_num(np.nanmedian(x, axis=0)) if len(x) else np.zeros(len(self.columns))
        filled = np.where(np.isnan(x), self.median, x)
        self.mean, self.std = filled.mean(axis=0), filled.std(axis=0)
        self.std[self.std == 0] = 1.0
        return self

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise DataError(f"the rows to predict lack feature column(s) the fold was trained on: "
                            f"{', '.join(c[len(FEATURE_PREFIX):] for c in missing[:5])}")
        x = df[self.columns].to_numpy(dtype=float)
        x = np.where(np.isnan(x), self.median, x)
        return np.clip((x - self.mean) / self.std, -10, 10).astype(np.float32)


TRANSFORMS = ("log1p", "log", "none")


@dataclass(frozen=True)
class TargetSettings:
    target_transform: str
    target_offset: float


def forward_target(cfg: DictConfig, y):
    """y -> the scale models learn on (numpy or torch)."""
    lib = torch if isinstance(y, torch.Tensor) else np
    if cfg.target_transform == "log1p":
        return lib.log1p(y)
    if cfg.target_transform == "log":
        return lib.log(y + cfg.target_offset)
    return y


def inverse_target(cfg: DictConfig, z):
    """The learned scale -> y's units, never below 0."""
    lib = torch if isinstance(z, torch.Tensor) else np
    if cfg.target_transform == "log1p":
        return lib.expm1(z).clip(0)
    if cfg.target_transform == "log":
        return (lib.exp(z) - cfg.target_offset).clip(0)
    return z


# ---- models --------------------------------------------------------------------------------------------------
class FusionHead(nn.Module):
    """MLP on the scaled features, concatenated with the image embedding and the scaled features themselves (a
    linear path: a feature linear in the transformed target is learnt at once), then one linear output."""

    def __init__(self, image_dim: int, n_features: int, n_outputs: int, hidden: int, dropout: float,
                 head_dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU())
        self.drop = nn.Dropout(head_dropout)
        self.out = nn.Linear(image_dim + hidden + n_features, n_outputs)

    def forward(self, embedding, features):
        return self.out(torch.cat([self.drop(embedding), self.mlp(features), features], dim=1))


class FusionModel(nn.Module):
    """timm backbone (pooled embedding) + feature MLP -> one output; called as model(image=, features=)."""

    def __init__(self, backbone: nn.Module, head: FusionHead):
        super().__init__()
        self.backbone, self.head = backbone, head  # `head` gets head_lr in the engine's optimizer

    def forward(self, image, features):
        return self.head(self.backbone(image), features)


class FeatureDataset(torch.utils.data.Dataset):
    """Adds the row's scaled feature vector ("features") to each item of an image dataset."""

    def __init__(self, base, features: np.ndarray):
        self.base, self.features = base, torch.from_numpy(features)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = dict(self.base[i])
        item["features"] = self.features[item["index"]]
        return item


class LinearThenTrees(RegressorMixin, BaseEstimator):
    """scikit-learn regressor: a least-squares line on log(1 + x) of the `linear` columns (sizes, counts), then gradient-boosted trees on all
    columns fitted to its residuals. Trees alone cannot predict beyond the training range; the line can."""

    def __init__(self, trees=None, linear: tuple = ()):
        self.trees, self.linear = trees, linear

    def fit(self, X: pd.DataFrame, y):
        from sklearn.base import clone
        from sklearn.linear_model import LinearRegression
        self.line = None
        self.trees_ = clone(self.trees)
        if self.linear:
            missing = [c for c in self.linear if c not in X.columns]
            if missing:
                raise ConfigError(f"gbm_linear: no feature column(s) {missing}; features: {list(X.columns)}")
            lx = np.log1p(X[list(self.linear)].to_numpy(dtype=float).clip(0))
            self.fill = np.nan_to_num(np.nanmedian(lx, axis=0))
            self.line = LinearRegression().fit(np.where(np.isnan(lx), self.fill, lx), y)
        self.trees_.fit(X, np.asarray(y) - self._line(X))
        return self

    def _line(self, X):
        if self.line is None:
            return 0.0
        lx = np.log1p(X[list(self.linear)].to_numpy(dtype=float).clip(0))
        return self.line.predict(np.where(np.isnan(lx), self.fill, lx))

    def predict(self, X):
        return self._line(X) + self.trees_.predict(X)


def create_gbm(cfg: DictConfig):
    """HistGradientBoostingRegressor (NaN-aware) on the transformed target, optionally on top of a line."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import HistGradientBoostingRegressor
    trees = HistGradientBoostingRegressor(max_iter=cfg.gbm_max_iter, learning_rate=cfg.gbm_learning_rate,
                                          max_leaf_nodes=cfg.gbm_max_leaf_nodes,
                                          min_samples_leaf=cfg.gbm_min_samples_leaf,
                                          l2_regularization=cfg.gbm_l2, loss=cfg.gbm_loss, random_state=cfg.seed)
    linear = [FEATURE_PREFIX + c if not c.startswith(FEATURE_PREFIX) else c for c in (cfg.gbm_linear or [])]
    model = LinearThenTrees(trees, tuple(linear))
    if cfg.target_transform == "none":
        return model
    return TransformedTargetRegressor(regressor=model, func=partial(forward_target, _plain(cfg)),
                                      inverse_func=partial(inverse_target, _plain(cfg)), check_inverse=False)


def _plain(cfg: DictConfig) -> "TargetSettings":
    """The transform's settings as a plain object: the fitted estimator is pickled with them (joblib)."""
    return TargetSettings(cfg.target_transform, float(cfg.target_offset))


# ---- the family -----------------------------------------------------------------------------------------------
class TabularImageTask(ImageTask):
    """A regression task with a feature row (and, for cnn / fusion, an image) per example. load_train / load_test
    return frames with the id, target, `case` (or the competition's own fold grouping), `image_column` (when there
    are images) and feature columns prefixed f_. The defaults here read a prepared table (features_file=); a
    competition with raw files of its own overrides them. Everything model-side is here."""

    image_column = "image_path"
    config_defaults = TABULAR_DEFAULTS

    # ---- a prepared features table ---------------------------------------------------------------------------
    def load_train(self, cfg: DictConfig) -> pd.DataFrame:
        self.check_kind(cfg)
        if not cfg.features_file:
            raise ConfigError(f"{self.name}: set features_file= (a CSV of {self.id_column}, {self.target_column} "
                              f"and numeric feature columns)")
        return read_feature_table(cfg, cfg.features_file, self.id_column, self.target_column, labelled=True,
                                  case_of=self.case_of)

    def load_test(self, cfg: DictConfig, path: Path) -> pd.DataFrame:
        """A table in the features file's format (without the target)."""
        self.check_kind(cfg)
        return read_feature_table(cfg, path, self.id_column, self.target_column, labelled=False, case_of=self.case_of)

    def case_of(self, ids: pd.Series) -> pd.Series:
        """Each row's group in a table without a features_case column: each row its own."""
        return ids

    def test_path(self, cfg: DictConfig) -> Path:
        """test_file=, else the features file's sibling test.csv."""
        if cfg.test_file or not cfg.features_file:
            return super().test_path(cfg)
        return Path(cfg.features_file).with_name("test.csv")

    def sample_submission_path(self, cfg: DictConfig) -> Path:
        """data_dir's sample submission, else the one beside the features file."""
        if cfg.features_file and not (self.data_dir(cfg) / self.sample_submission).is_file():
            return Path(cfg.features_file).with_name(self.sample_submission)
        return super().sample_submission_path(cfg)

    # ---- checks --------------------------------------------------------------------------------------------
    def check_kind(self, cfg: DictConfig) -> str:
        if cfg.model_kind not in MODEL_KINDS:
            raise ConfigError(f"model_kind must be one of {', '.join(MODEL_KINDS)}, got {cfg.model_kind!r}")
        if cfg.features_file and cfg.model_kind != "gbm":
            raise ConfigError(f"features_file= holds features only, no images: use model_kind=gbm "
                              f"(got {cfg.model_kind})")
        if cfg.target_transform not in TRANSFORMS:
            raise ConfigError(f"target_transform must be one of {', '.join(TRANSFORMS)}, got {cfg.target_transform!r}")
        return cfg.model_kind

    def needs_features(self, cfg: DictConfig) -> bool:
        return self.check_kind(cfg) != "cnn"

    # ---- per fold state ------------------------------------------------------------------------------------
    def fit_fold(self, cfg, train, fold_dir):
        """The fold's feature columns, scaler (fusion) and the centre of its transformed target (network head bias),
        saved in fold_dir."""
        # Columns without a single value in the fold's training rows carry nothing.
        columns = [c for c in feature_columns(train) if train[c].notna().any()] if self.needs_features(cfg) else []
        state = {"columns": columns,
                 "target_centre": float(np.median(forward_target(cfg, train[TARGET].to_numpy(dtype=float))))}
        Path(fold_dir).mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(fold_dir) / "tabular_state.json") as tmp:
            Path(tmp).write_text(json.dumps(state, indent=2))
        if cfg.model_kind == "fusion":
            if not state["columns"]:
                raise DataError("model_kind=fusion needs feature columns (columns prefixed f_ with values)")
            scaler = FeatureScaler(state["columns"]).fit(train)
            with atomic_path(Path(fold_dir) / "scaler.joblib") as tmp:
                joblib.dump(scaler, tmp)
            state["scaler"] = scaler
        return state

    def load_fold(self, cfg, fold_dir):
        path = Path(fold_dir) / "tabular_state.json"
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        if (Path(fold_dir) / "scaler.joblib").is_file():
            state["scaler"] = joblib.load(Path(fold_dir) / "scaler.joblib")
        return state

    # ---- networks ------------------------------------------------------------------------------------------
    def dataset(self, cfg, df, mode, ctx: FoldContext):
        base = super().dataset(cfg, df, mode, ctx)
        if cfg.model_kind != "fusion":
            return base
        return FeatureDataset(base, ctx.state["scaler"].transform(df))

    def build_model(self, cfg, n_outputs, ctx: FoldContext, pretrained):
        if self.check_kind(cfg) == "gbm":
            raise ConfigError("model_kind=gbm trains no network")
        image_model = ImageTask.build_model(self, cfg, n_outputs, ctx, pretrained)  # timm, resolved weights
        if cfg.model_kind == "cnn":
            model, out = image_model, image_model.head[-1]
        else:
            head = FusionHead(image_model.backbone.num_features, len(ctx.state["columns"]), n_outputs,
                              cfg.mlp_hidden, cfg.mlp_dropout, cfg.head_dropout)
            model, out = FusionModel(image_model.backbone, head), head.out
        state = ctx.state or {}
        if "target_centre" in state:  # start at the fold's typical value, not at 0 on a log scale
            with torch.no_grad():
                out.bias.fill_(state["target_centre"])
        return model

    def loss_fn(self, cfg, train, ctx):
        """The registry's regression loss (common/losses.py), on the transformed target."""
        loss = get_loss(self.loss_name(cfg), "regression")
        return lambda logits, y: loss(logits, forward_target(cfg, y.float()))

    def activate(self, cfg, logits):
        return inverse_target(cfg, logits.float().view(-1, 1))

    # ---- trees ---------------------------------------------------------------------------------------------
    def estimator(self, cfg):
        return create_gbm(cfg) if self.check_kind(cfg) == "gbm" else None

    def features(self, cfg, df, ctx):
        columns = (ctx.state or {}).get("columns") or feature_columns(df)
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(f"the rows to predict lack feature column(s) the fold was trained on: "
                            f"{', '.join(c[len(FEATURE_PREFIX):] for c in missing[:5])}")
        return df[columns].astype(float)
