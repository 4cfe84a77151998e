"""The tabular family: feature tables next to (or instead of) images, for tasks scored on a number per row.

    meta CSVs        one per-minute sensor log (Korean or English headers) -> one row of daily aggregates
                     (means, minima, maxima, sums of light and spray, hours of light, missing share), cached
    leaf pixels      a colour mask of the plant (excess green or HSV thresholds) -> pixel count, area share,
                     colour statistics; `save_overlay` draws the mask over the photo for a person to check
    feature files    a prepared table (`features_file=`) standing in for images + meta
    per-fold scaler  median imputation + standardisation fitted on the fold's training rows (fit_fold), saved
                     in the fold folder, reloaded wherever the fold predicts (load_fold)
    models           `model_kind`: cnn (timm backbone on the image), gbm (scikit-learn's
                     HistGradientBoostingRegressor on the features, the engine's non-network path) or fusion
                     (timm backbone + a small MLP on the scaled features, one head)

Regression targets that span orders of magnitude (grams, pixels) are learned as log(1 + y) (`target_transform`):
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

import cv2
import joblib
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.base import BaseEstimator, RegressorMixin
from torch import nn

from common.errors import ConfigError, DataError
from common.io import atomic_path, read_csv
from common.task import TARGET, FoldContext
from common.vision import IMAGE_DEFAULTS, ImageTask, read_image

FEATURE_PREFIX = "f_"      # feature columns carried in the frames the engine hands to the hooks
FEATURE_VERSION = 1        # bump when a feature's definition changes: old cache entries are then ignored

TABULAR_DEFAULTS = {
    **IMAGE_DEFAULTS,
    "model_kind": "fusion",       # cnn (image only) | gbm (features only, gradient-boosted trees) | fusion (both)
    "target_transform": "log1p",  # log1p: learn log(1 + y) | log: log(y + target_offset) | none; scored in y's units
    "target_offset": 0.01,        # target_transform=log: keeps y = 0 finite; small, so tiny weights stay apart
    "loss": "l1",                 # network loss on the transformed target: l1 | mse | huber (l1 on log1p ~ relative)
    "features_file": None,        # a prepared feature table (CSV) standing in for images + meta (gbm only)
    "features_id": "file_name",   # its id column (becomes the task's id column)
    "features_target": "leaf_weight",  # its target column (absent in a test table)
    "features_case": "path",      # its case (group) column; null -> the id's prefix before the last '_'
    "feature_cache": None,        # folder for cached meta / leaf-pixel rows; null -> <runs_dir>/.cache/<competition>
    "leaf_features": True,        # add leaf-pixel features (mask from colour) for gbm / fusion
    "mask_method": "exg",         # exg: 2G - R - B > mask_threshold (0-255 scale) | hsv: inside hsv_lower..hsv_upper
    "mask_threshold": 20,         # excess-green cut; 20 fits the komatsuna hand masks best (README)
    "hsv_lower": [30, 60, 30],    # OpenCV HSV (H 0-179): green hues, some saturation, not black
    "hsv_upper": [90, 255, 255],
    "mask_open": 0,               # morphological opening kernel (px) to remove specks; 0 -> off
    "mask_overlays": 8,           # after training: overlays of the N worst OOF rows in plots/leaf_masks/; 0 -> off
    "mlp_hidden": 64,             # fusion: hidden width of the feature MLP
    "mlp_dropout": 0.1,           # fusion: dropout in the feature MLP
    "gbm_max_iter": 300,          # HistGradientBoostingRegressor: boosting rounds
    "gbm_learning_rate": 0.05,
    "gbm_max_leaf_nodes": 15,
    "gbm_min_samples_leaf": 10,
    "gbm_l2": 0.0,                # l2_regularization
    "gbm_loss": "squared_error",  # on the transformed target: squared_error | absolute_error (median: nearer NMAE)
    "gbm_linear": [],             # columns x of a line in log(1 + x) (on the transformed target) the trees then correct;
                                  # [] -> trees alone. Trees cannot extrapolate; a line in log pixel count can.
}

MODEL_KINDS = ("cnn", "gbm", "fusion")


# ---- meta CSVs: per-minute sensor log -> one row -------------------------------------------------------------
# canonical name: (Korean header of the KIST logs, English aliases). The 2208 and 235897 logs share the headers.
META_COLUMNS = {
    "time": ("시간", ("time", "timestamp", "datetime")),
    "temp_in": ("내부온도관측치", ("inner_temperature", "internal_temperature", "temperature")),
    "humid_in": ("내부습도관측치", ("inner_humidity", "internal_humidity", "humidity")),
    "co2": ("CO2관측치", ("co2_ppm",)),
    "ec": ("EC관측치", ("ec_ds_m",)),
    "temp_out": ("외부온도관측치", ("outer_temperature", "external_temperature")),
    "humid_out": ("외부습도관측치", ("outer_humidity", "external_humidity")),
    "spray": ("최근분무량", ("recent_spray", "spray_volume")),
    "spray_day": ("일간누적분무량", ("daily_spray", "cumulative_spray")),
    "led_white": ("화이트 LED동작강도", ("white_led_intensity",)),
    "led_red": ("레드 LED동작강도", ("red_led_intensity",)),
    "led_blue": ("블루 LED동작강도", ("blue_led_intensity",)),
    "heat_load": ("난방부하", ("heating_load",)),
    "cool_load": ("냉방부하", ("cooling_load",)),
    "light_total": ("총추정광량", ("total_light", "light")),
    "light_white": ("백색광추정광량", ("white_light",)),
    "light_red": ("적색광추정광량", ("red_light",)),
    "light_blue": ("청색광추정광량", ("blue_light",)),
}
# What each sensor contributes to the day's row.
META_AGGREGATES = {
    "temp_in": ("mean", "min", "max"), "humid_in": ("mean", "min", "max"), "co2": ("mean", "min", "max"),
    "ec": ("mean", "max"), "temp_out": ("mean", "min", "max"), "humid_out": ("mean",),
    "spray": ("sum",), "spray_day": ("max",),
    "led_white": ("mean",), "led_red": ("mean",), "led_blue": ("mean",),
    "heat_load": ("mean",), "cool_load": ("mean",),
    "light_total": ("sum",), "light_white": ("sum",), "light_red": ("sum",), "light_blue": ("sum",),
}
META_FEATURES = [f"{c}_{a}" for c, aggs in META_AGGREGATES.items() for a in aggs] + \
    ["light_hours", "meta_rows", "meta_columns", "meta_missing_share", "meta_missing"]


def _alias_map() -> dict[str, str]:
    out = {}
    for name, (korean, english) in META_COLUMNS.items():
        for alias in (korean, name, *english):
            out[_norm(alias)] = name
    return out


def _norm(column: str) -> str:
    return "".join(str(column).lower().split()).replace("_", "").replace("-", "")


ALIASES = _alias_map()


def read_meta(path: str | Path) -> pd.DataFrame:
    """A meta CSV with canonical column names (unknown columns dropped, values numeric, bad cells NaN).
    UTF-8 first, then cp949 (Korean Windows exports). An empty file gives an empty frame."""
    path = Path(path)
    if path.stat().st_size == 0:
        return pd.DataFrame()
    for encoding in ("utf-8-sig", "cp949"):
        try:
            raw = pd.read_csv(path, encoding=encoding)
            break
        except UnicodeDecodeError:
            continue
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
        except pd.errors.ParserError as e:
            raise DataError(f"{path}: not a readable meta CSV ({e})") from None
    else:
        raise DataError(f"{path}: neither UTF-8 nor cp949 text")
    keep = {c: ALIASES[_norm(c)] for c in raw.columns if _norm(c) in ALIASES}
    df = raw[list(keep)].rename(columns=keep)
    df = df.loc[:, ~df.columns.duplicated()]
    for c in df.columns:
        if c != "time":
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def aggregate_meta(df: pd.DataFrame) -> dict:
    """One day's log -> one feature row (META_FEATURES). A column the log lacks gives NaN for its features;
    `meta_columns` counts the sensor columns it has, `meta_missing_share` is the share of NaN cells among them."""
    out = {f: np.nan for f in META_FEATURES}
    out["meta_rows"] = len(df)
    sensors = list(META_AGGREGATES)
    if df.empty:
        out.update(meta_missing_share=1.0, meta_missing=1.0, meta_rows=0, meta_columns=0)
        return out
    for column, aggs in META_AGGREGATES.items():
        if column not in df:
            continue
        values = df[column]
        for a in aggs:
            # A sum over an all-NaN column is unknown, not 0.
            out[f"{column}_{a}"] = float(getattr(values, a)()) if values.notna().any() else np.nan
    present = [c for c in sensors if c in df]
    out["meta_columns"] = len(present)
    out["meta_missing_share"] = float(df[present].isna().to_numpy().mean()) if present else 1.0
    out["meta_missing"] = 0.0
    if "light_total" in df and df["light_total"].notna().any():
        out["light_hours"] = float((df["light_total"] > 0).sum() * _minutes_per_row(df) / 60)
    return out


def _minutes_per_row(df: pd.DataFrame) -> float:
    """The log's sampling interval (median step of the time column), 1 minute when it cannot be read."""
    if "time" in df:
        t = pd.to_datetime(df["time"], errors="coerce").dropna()
        if len(t) > 1:
            step = t.diff().dropna().median().total_seconds() / 60
            if step > 0:
                return float(step)
    return 1.0


def meta_features(path: str | Path | None) -> dict:
    """The feature row of one meta file; a missing file (None or absent) gives the all-NaN row with meta_missing=1."""
    if path is None or not Path(path).is_file():
        return aggregate_meta(pd.DataFrame())
    return aggregate_meta(read_meta(path))


# ---- leaf pixels ---------------------------------------------------------------------------------------------
def leaf_mask(image: np.ndarray, method: str = "exg", threshold: float = 20, hsv_lower=(30, 60, 30),
              hsv_upper=(90, 255, 255), open_px: int = 0) -> np.ndarray:
    """Boolean plant mask of an RGB uint8 image. exg: excess green 2G - R - B above `threshold` (0-255 scale);
    hsv: OpenCV HSV inside [hsv_lower, hsv_upper]. open_px > 0 removes specks smaller than the kernel."""
    if method == "exg":
        rgb = image.astype(np.int16)
        mask = (2 * rgb[..., 1] - rgb[..., 0] - rgb[..., 2]) > threshold
    elif method == "hsv":
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        mask = cv2.inRange(hsv, np.array(hsv_lower, np.uint8), np.array(hsv_upper, np.uint8)) > 0
    else:
        raise ConfigError(f"mask_method must be exg or hsv, got {method!r}")
    if open_px:
        kernel = np.ones((int(open_px), int(open_px)), np.uint8)
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel) > 0
    return mask


LEAF_FEATURES = ["leaf_px", "leaf_px_log", "leaf_share", "leaf_px_loose", "leaf_px_strict", "leaf_hull_px",
                 "leaf_r", "leaf_g", "leaf_b", "leaf_h", "leaf_s", "leaf_v", "leaf_exg", "leaf_exg_std", "image_px"]


def leaf_features(image: np.ndarray, mask: np.ndarray, threshold: float = 20) -> dict:
    """Pixel count, area share, convex-hull area and colour statistics of the plant pixels. leaf_px_loose /
    _strict count excess green at threshold -/+ 10: how sharp the plant's edge is."""
    n = int(mask.sum())
    rgb = image.astype(np.int16)
    exg = 2 * rgb[..., 1] - rgb[..., 0] - rgb[..., 2]
    out = {"leaf_px": float(n), "leaf_px_log": float(np.log1p(n)), "leaf_share": n / mask.size,
           "leaf_px_loose": float((exg > threshold - 10).sum()), "leaf_px_strict": float((exg > threshold + 10).sum()),
           "image_px": float(mask.size), "leaf_hull_px": 0.0}
    if n:
        points = cv2.findNonZero(mask.astype(np.uint8))
        out["leaf_hull_px"] = float(cv2.contourArea(cv2.convexHull(points)))
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[mask].mean(axis=0)
        r, g, b = image[mask].mean(axis=0)
        out.update(leaf_r=r, leaf_g=g, leaf_b=b, leaf_h=hsv[0], leaf_s=hsv[1], leaf_v=hsv[2],
                   leaf_exg=float(exg[mask].mean()), leaf_exg_std=float(exg[mask].std()))
    else:
        out.update({k: np.nan for k in ("leaf_r", "leaf_g", "leaf_b", "leaf_h", "leaf_s", "leaf_v", "leaf_exg",
                                        "leaf_exg_std")})
    return {k: float(v) for k, v in out.items()}


def mask_args(cfg: DictConfig) -> dict:
    return {"method": cfg.mask_method, "threshold": cfg.mask_threshold, "hsv_lower": tuple(cfg.hsv_lower),
            "hsv_upper": tuple(cfg.hsv_upper), "open_px": cfg.mask_open}


def image_leaf_features(path: str | Path, cfg: DictConfig) -> dict:
    image = read_image(path)
    return leaf_features(image, leaf_mask(image, **mask_args(cfg)), cfg.mask_threshold)


def save_overlay(image: np.ndarray, mask: np.ndarray, path: str | Path, title: str = "") -> Path:
    """The photo beside the photo with the mask tinted magenta and outlined: does the mask cover the plant?"""
    tinted = image.copy()
    tinted[mask] = (0.5 * tinted[mask] + 0.5 * np.array([255, 0, 255])).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(tinted, contours, -1, (255, 255, 0), 1)
    sheet = np.concatenate([image, np.full((image.shape[0], 4, 3), 255, np.uint8), tinted], axis=1)
    if title:
        sheet = np.concatenate([np.full((18, sheet.shape[1], 3), 255, np.uint8), sheet], axis=0)
        cv2.putText(sheet, title, (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        Path(tmp).write_bytes(buf.tobytes())
    return Path(path)


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


def read_feature_table(cfg: DictConfig, path: str | Path, id_column: str, target_column: str,
                       labelled: bool) -> pd.DataFrame:
    """A prepared feature table -> a frame with the task's id (and target) column, `case`, and the table's numeric
    columns as features (prefixed f_). Text columns other than id / case / target are left out."""
    path = Path(path)
    df = read_csv(path)
    need = [cfg.features_id] + ([cfg.features_target] if labelled else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))} (features_id / features_target); "
                        f"found {', '.join(map(repr, df.columns))}")
    ids = df[cfg.features_id].astype(str)
    dup = ids.duplicated()
    if dup.any():
        raise DataError(f"{path}: id {ids[dup].iloc[0]!r} in column {cfg.features_id!r} appears twice "
                        f"(data row {int(dup.to_numpy().argmax()) + 1})")
    if cfg.features_case and cfg.features_case in df.columns:
        case = df[cfg.features_case].astype(str)
    else:
        case = ids.str.rsplit("_", n=1).str[0]
    skip = {cfg.features_id, cfg.features_target, cfg.features_case}
    numeric = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]
    out = pd.DataFrame({id_column: ids, "case": case})
    if labelled:
        out[target_column] = df[cfg.features_target]
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
        with warnings.catch_warnings():  # an all-NaN column (a sensor no log has) is filled with 0
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
    linear path: log pixel count -> log weight is learnt at once), then one linear output."""

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
    """scikit-learn regressor: a least-squares line on log(1 + x) of the `linear` columns (pixel counts), then gradient-boosted trees on all
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
    """A regression task with an image and a feature row per example. The competition implements load_train /
    load_test returning frames with its id, target, `case` (or its own fold grouping), `image_column` (when there
    are images) and feature columns prefixed f_ (`attach_features` computes them); everything model-side is here."""

    image_column = "image_path"
    config_defaults = TABULAR_DEFAULTS

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
        # Columns without a single value in the fold's training rows (a sensor no log has) carry nothing.
        columns = [c for c in feature_columns(train) if train[c].notna().any()] if self.needs_features(cfg) else []
        state = {"columns": columns,
                 "target_centre": float(np.median(forward_target(cfg, train[TARGET].to_numpy(dtype=float))))}
        Path(fold_dir).mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(fold_dir) / "tabular_state.json") as tmp:
            Path(tmp).write_text(json.dumps(state, indent=2))
        if cfg.model_kind == "fusion":
            if not state["columns"]:
                raise DataError("model_kind=fusion needs feature columns (leaf_features=true or meta files)")
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
        losses = {"l1": nn.functional.l1_loss, "mse": nn.functional.mse_loss,
                  "huber": lambda a, b: nn.functional.smooth_l1_loss(a, b, beta=0.1)}
        if cfg.loss not in losses:
            raise ConfigError(f"loss must be one of {', '.join(losses)}, got {cfg.loss!r}")
        loss = losses[cfg.loss]
        return lambda logits, y: loss(logits.float().view(-1), forward_target(cfg, y.float()))

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

    # ---- features ------------------------------------------------------------------------------------------
    def attach_features(self, cfg: DictConfig, df: pd.DataFrame, meta_column: str | None) -> pd.DataFrame:
        """Add f_ columns: the aggregates of each row's meta file (when `meta_column` names one) and its
        leaf-pixel features (leaf_features=true), each file computed once (FeatureCache)."""
        if not self.needs_features(cfg):
            return df
        cache = feature_cache(cfg, self.name)
        blocks = []
        if meta_column is not None:
            paths = [p if isinstance(p, (str, Path)) else None for p in df[meta_column]]  # NaN: no meta file
            blocks.append(pd.DataFrame([cache.get("meta", p, {}, meta_features) for p in paths],
                                       index=df.index, columns=META_FEATURES))
        if cfg.leaf_features:
            settings = OmegaConf.to_container(OmegaConf.create(mask_args(cfg)))
            rows = [cache.get("leaf", p, settings, lambda q: image_leaf_features(q, cfg)) for p in
                    _progress(df[self.image_column], "leaf-pixel features")]
            blocks.append(pd.DataFrame(rows, index=df.index, columns=LEAF_FEATURES))
        if not blocks:
            raise ConfigError(f"model_kind={cfg.model_kind} needs features: no meta files and leaf_features=false")
        feats = pd.concat(blocks, axis=1).add_prefix(FEATURE_PREFIX)
        return pd.concat([df, feats], axis=1)

    def plots(self, cfg, oof, classes, plots_dir):
        super().plots(cfg, oof, classes, plots_dir)
        if not cfg.mask_overlays or cfg.features_file:
            return
        # The worst out-of-fold rows, each photo beside its leaf mask: was the mask or the model wrong?
        train = self.load_train(cfg)
        paths = dict(zip(train[self.id_column].astype(str), train[self.image_column]))
        err = (oof["pred"] - oof["target"]).abs() / oof["target"].abs().clip(lower=1e-9)
        for _, row in oof.assign(err=err).nlargest(int(cfg.mask_overlays), "err").iterrows():
            image = read_image(paths[str(row[self.id_column])])
            save_overlay(image, leaf_mask(image, **mask_args(cfg)),
                         Path(plots_dir) / "leaf_masks" / f"{Path(str(row[self.id_column])).stem}.png",
                         f"y {row['target']:.0f} p {row['pred']:.0f}")


def _progress(items, desc: str):
    from tqdm.auto import tqdm
    return tqdm(list(items), desc=desc, leave=False, disable=len(items) < 200)


def check_images(cfg: DictConfig, df: pd.DataFrame, column: str, csv_path: Path, counts: dict) -> pd.DataFrame:
    """Every row's image must exist and decode: a DataError naming the CSV row and file, or with bad_images=skip
    the rows are dropped and counted."""
    bad = []
    for i, p in enumerate(df[column]):
        if not Path(p).is_file():
            bad.append((i, p, "missing on disk"))
        elif cv2.imread(str(p), cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
            bad.append((i, p, "unreadable"))
    if not bad:
        return df
    i, p, why = bad[0]
    message = f"{csv_path}: {len(bad)} image(s) missing or unreadable, the first {p} ({why}, data row {i + 1})"
    if cfg.bad_images != "skip":
        raise DataError(message + "; fix the file or set bad_images=skip")
    key = "row(s) with a missing or unreadable image, skipped (bad_images=skip)"
    counts[key] = counts.get(key, 0) + len(bad)
    return df.drop(index=df.index[[b[0] for b in bad]]).reset_index(drop=True)


def warn_counts(counts: dict, where: str) -> None:
    """One warning listing the documented, counted skips and fills (meta without image, image without meta, ...)."""
    said = {k: v for k, v in counts.items() if v}
    if said:
        warnings.warn(f"{where}: " + "; ".join(f"{v} {k}" for k, v in said.items()), stacklevel=3)
