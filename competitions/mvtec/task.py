"""DACON "Computer Vision 이상치 탐지 알고리즘 경진대회" (235894): an MVTec AD photo -> its `class-state` label
(88 labels, heavily imbalanced), scored by macro-F1. What is its own here: reading train_df.csv / test_df.csv,
the per-class orientation policy for augmentation, and the per-label F1 report. The rest is the image engine
(common/vision.py) and the imbalance options (common/imbalance.py)."""
from __future__ import annotations

import warnings
from pathlib import Path

import albumentations as A
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from common.errors import ConfigError, DataError
from common.folds import FoldSpec
from common.imbalance import (
    IMBALANCE_DEFAULTS,
    ImbalanceMixin,
    minority_rows,
    per_label_f1,
    with_minority_augment,
)
from common.io import write_csv
from common.task import TARGET, read_frame
from common.vision import GEOMETRIC, IMAGE_DEFAULTS, ImageTask, build_transforms

TRAIN_COLUMNS = ["index", "file_name", "class", "label"]
TEST_COLUMNS = ["index", "file_name"]
GEOMETRIC_TTA = {"hflip", "vflip", "rot90"}  # ttach views that move pixels (common.vision.TTA_TRANSFORMS)


class MvtecTask(ImbalanceMixin, ImageTask):
    name = "mvtec"
    kind = "multiclass"
    metric = "macro_f1"
    id_column = "index"
    target_column = "label"
    # Every fold sees every label; labels with fewer images than folds are pooled with a warning (common/folds.py).
    fold_spec = FoldSpec(stratify="label")
    config_path = Path(__file__).with_name("config.yaml")
    config_defaults = {
        **IMAGE_DEFAULTS, **IMBALANCE_DEFAULTS,
        "augment_exclude": None,  # class -> transforms it never gets: 'geometric' or a list of albumentations names
    }

    # ---- data ---------------------------------------------------------------------------------
    def load_train(self, cfg: DictConfig) -> pd.DataFrame:
        path = self.data_dir(cfg) / "train_df.csv"
        df = read_frame(path, TRAIN_COLUMNS, id_column="index")
        for column in ("class", "label"):
            empty = df[column].isna()
            if empty.any():
                raise DataError(f"{path}: column {column!r} is empty at data row {int(empty.to_numpy().argmax()) + 1}")
        return self.attach_images(cfg, df, df["file_name"], self.image_dir(cfg, "train"), path)

    def load_test(self, cfg: DictConfig, path: Path) -> pd.DataFrame:
        df = read_frame(path, TEST_COLUMNS, id_column="index")
        return self.attach_images(cfg, df, df["file_name"], self.image_dir(cfg, "test"), path)

    def test_path(self, cfg: DictConfig) -> Path:
        return Path(cfg.test_file) if cfg.test_file else self.data_dir(cfg) / "test_df.csv"

    # ---- augmentation: per-class orientation policy, minority-only extras ----------------------
    def excluded_transforms(self, cfg: DictConfig, image_class: str) -> frozenset[str]:
        """Transforms a class must not get (config augment_exclude: class -> 'geometric' or a list of names)."""
        policy = OmegaConf.to_container(cfg.augment_exclude, resolve=True) if cfg.augment_exclude else {}
        rule = policy.get(str(image_class))
        if rule is None:
            return frozenset()
        names = GEOMETRIC if rule == "geometric" else {rule} if isinstance(rule, str) else set(rule)
        unknown = sorted(n for n in names if not hasattr(A, n))
        if unknown:
            raise ConfigError(f"augment_exclude.{image_class}: albumentations has no transform {unknown[0]!r} "
                             f"(give 'geometric' or a list of transform names)")
        return frozenset(names)

    def transforms(self, cfg, df, mode):
        if mode != "train":
            return build_transforms(cfg, train=False)
        minority = (minority_rows(df, TARGET, self.id_column, cfg.minority_below) if cfg.minority_augment
                    else [False] * len(df))
        pipelines = {}  # one pipeline per (excluded set, minority) pair, shared by the rows that need it
        rows = []
        for image_class, is_minority in zip(df["class"], minority):
            key = (self.excluded_transforms(cfg, image_class), bool(is_minority))
            if key not in pipelines:
                pipelines[key] = build_transforms(with_minority_augment(cfg) if key[1] else cfg, train=True,
                                                  exclude=key[0])
            rows.append(pipelines[key])
        return rows

    def tta_names(self, cfg):
        views = super().tta_names(cfg)
        if set(views) & GEOMETRIC_TTA and cfg.augment_exclude:
            # The class is unknown at test time, so TTA cannot follow the per-class policy.
            warnings.warn(f"TTA views {sorted(set(views) & GEOMETRIC_TTA)} flip or rotate every test image, also "
                          f"those of orientation-sensitive classes ({', '.join(cfg.augment_exclude)})", stacklevel=2)
        return views

    # ---- report -------------------------------------------------------------------------------
    def plots(self, cfg, oof, classes, plots_dir):
        super().plots(cfg, oof, classes, plots_dir)  # confusion matrix
        table = per_label_f1(oof["target"].astype(int), oof[classes].to_numpy().argmax(1), classes)
        path = write_csv(table.round(4), plots_dir / "per_label_f1.csv")
        worst = ", ".join(f"{r.label} {r.f1:.2f}" for r in table.head(5).itertuples())
        print(f"per-label F1: {path} (worst: {worst})")
