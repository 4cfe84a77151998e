"""DACON 235897 (KIST, 2022): bok choy leaf weight (g) from a top-view photo and that day's greenhouse sensor log.

Raw layout (file and folder names configurable: train_dir, test_dir, image_subdir, meta_subdir, label_file):
    train/CASExx/image/CASExx_NN.png|jpg     photos
    train/CASExx/meta/CASExx_NN.csv          one day of per-minute sensor readings (optional: komatsuna has none)
    train/CASExx/label.csv                   img_name,leaf_weight (grams)
    test/image/, test/meta/                  the same without labels
    sample_submission.csv                    img_name,leaf_weight

Images and meta files pair up by file stem. Bad input:
    a label for a missing image, an unreadable image   DataError naming label.csv and its row (bad_images=skip:
                                                        dropped, counted in a warning)
    a negative, empty or non-numeric weight             DataError naming label.csv, row and value
    an image without a meta file (the case has meta)    kept; its meta features are NaN with meta_missing=1 (counted)
    a meta file without an image, an image without a
    label                                               ignored (counted)
    an empty or unreadable-column meta file             NaN features, meta_missing=1 / meta_missing_share (counted)
Weights of 0 g (8 in the real labels) are trained on and left out of the NMAE (undefined there): valid_frame.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import cv2
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from common.errors import ConfigError, DataError
from common.folds import FoldSpec
from common.io import read_csv
from common.tabular import FEATURE_PREFIX, TABULAR_DEFAULTS, TabularImageTask, feature_cache
from common.task import TARGET
from competitions.growth.leaf import LEAF_DEFAULTS, LEAF_FEATURES, image_leaf_features, mask_args, save_worst_overlays
from competitions.growth.sensors import META_FEATURES, meta_features

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def growth_defaults() -> dict:
    """The tabular family's keys with growth's defaults (the DACON table's column names) and its leaf-pixel keys,
    placed where they stood when they were the family's, so a run's config.yaml reads as before."""
    out = {}
    for key, value in TABULAR_DEFAULTS.items():
        out[key] = value
        if key == "feature_cache":
            out.update(LEAF_DEFAULTS)
    out.update({
        "features_id": "file_name",      # the DACON 235897 table's id column
        "features_target": "leaf_weight",
        "features_case": "path",         # its case column; null or absent -> the id's prefix before the last '_'
    })
    return out


class GrowthTask(TabularImageTask):
    name = "growth"
    kind = "regression"
    metric = "nmae"                # mean(|y - p| / y), lower is better; rows with y = 0 are not scored (valid_frame)
    id_column = "img_name"         # the image's file name, extension included (CASE01_01.png, 001.png)
    target_column = "leaf_weight"  # grams (komatsuna stand-in: projected leaf area in px)
    fold_spec = FoldSpec(group="case")  # leak-safe: all photos of one plant in one fold
    test_file = "test"             # a folder (image/ + meta/); test_file= may also name a CSV of img_name
    config_path = Path(__file__).with_name("config.yaml")
    config_defaults = {
        **growth_defaults(),
        "train_dir": "train",       # folder of the CASExx folders under data_dir
        "test_dir": "test",         # test folder under data_dir (image/, meta/)
        "image_subdir": "image",    # photos inside a case (or test) folder
        "meta_subdir": "meta",      # sensor logs inside a case (or test) folder; absent -> no meta features
        "label_file": "label.csv",  # img_name,leaf_weight inside a case folder
    }

    # ---- config ------------------------------------------------------------------------------------------
    def config(self, overrides: Mapping | list[str] | None = None, config_path: str | Path | None = None) -> DictConfig:
        """A features table implies experiment=tabular (gbm on the table's columns, no leaf-pixel line, which
        config.yaml's photos need): features_file= alone trains. An experiment named anywhere wins."""
        cfg = super().config(overrides, config_path)
        if cfg.features_file and not cfg.experiment:
            implied = ({**overrides, "experiment": "tabular"} if isinstance(overrides, Mapping)
                       else [*(overrides or []), "experiment=tabular"])
            cfg = super().config(implied, config_path)
        return cfg

    # ---- reading the layout ----------------------------------------------------------------------------
    def load_train(self, cfg: DictConfig) -> pd.DataFrame:
        if cfg.features_file:
            return check_weights(super().load_train(cfg), self.target_column, Path(cfg.features_file))
        self.check_kind(cfg)
        root = self.data_dir(cfg) / cfg.train_dir
        cases = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
        if not cases:
            raise DataError(f"{root}: no case folders (expected {root}/CASExx/{{{cfg.image_subdir},"
                            f"{cfg.meta_subdir},{cfg.label_file}}})")
        frames, counts = [], {}
        for case in cases:
            frames.append(self.read_case(cfg, case, counts))
        df = pd.concat(frames, ignore_index=True)
        dup = df[self.id_column].duplicated()
        if dup.any():
            raise DataError(f"{root}: image name {df[self.id_column][dup].iloc[0]!r} appears in two cases")
        warn_counts(counts, str(root))
        return self.attach_features(cfg, df, "meta_path" if df["meta_path"].notna().any() else None)

    def read_case(self, cfg: DictConfig, case: Path, counts: dict) -> pd.DataFrame:
        label_path = case / cfg.label_file
        labels = read_csv(label_path)
        missing = [c for c in (self.id_column, self.target_column) if c not in labels.columns]
        if missing:
            raise DataError(f"{label_path}: missing column(s) {', '.join(map(repr, missing))}; "
                            f"found {', '.join(map(repr, labels.columns))}")
        labels = check_weights(labels[[self.id_column, self.target_column]].copy(), self.target_column, label_path)
        labels[self.id_column] = labels[self.id_column].astype(str)
        images = files_by_stem(case / cfg.image_subdir, IMAGE_SUFFIXES)
        labels["case"] = case.name
        labels = self.pair_files(cfg, labels, images, case, label_path, counts)
        unlabelled = set(images) - {Path(n).stem for n in labels[self.id_column]}
        counts["image(s) without a label, ignored"] = counts.get("image(s) without a label, ignored", 0) + len(unlabelled)
        return labels

    def pair_files(self, cfg, df, images: dict, folder: Path, csv_path: Path, counts: dict) -> pd.DataFrame:
        """image_path and meta_path of each row (by file stem); bad images: error or (bad_images=skip) counted."""
        stems = [Path(n).stem for n in df[self.id_column]]
        df = df.assign(**{self.image_column: [str(images.get(s, folder / cfg.image_subdir / n))
                                              for s, n in zip(stems, df[self.id_column])]})
        df = check_images(cfg, df, self.image_column, csv_path, counts)  # error or (bad_images=skip) counted
        meta_dir = folder / cfg.meta_subdir
        if meta_dir.is_dir():
            metas = files_by_stem(meta_dir, (".csv", ".csv.gz"))
            stems = [Path(p).stem for p in df[self.image_column]]
            df["meta_path"] = [str(metas[s]) if s in metas else None for s in stems]
            key = "image(s) without a meta file (meta features NaN, meta_missing=1)"
            counts[key] = counts.get(key, 0) + int(df["meta_path"].isna().sum())
            key = "meta file(s) without an image, ignored"
            counts[key] = counts.get(key, 0) + len(set(metas) - set(images))
        else:
            df["meta_path"] = None
        return df

    def load_test(self, cfg: DictConfig, path: Path) -> pd.DataFrame:
        if cfg.features_file:  # a table in the features file's format
            return super().load_test(cfg, path)
        self.check_kind(cfg)
        path = Path(path)
        counts: dict = {}
        if path.is_dir():  # the test layout: image/ (+ meta/)
            images = files_by_stem(path / cfg.image_subdir, IMAGE_SUFFIXES)
            if not images:
                raise DataError(f"{path / cfg.image_subdir}: no images")
            df = pd.DataFrame({self.id_column: [p.name for p in images.values()]})
            df = self.pair_files(cfg, df, images, path, path / cfg.image_subdir, counts)
        else:  # a CSV naming images (img_name); found in image_dir= or the CSV's folder/image
            df = read_csv(path)
            if self.id_column not in df.columns:
                raise DataError(f"{path}: missing column {self.id_column!r}; found {list(df.columns)}")
            folder = Path(cfg.image_dir).parent if cfg.image_dir else path.parent
            image_dir = Path(cfg.image_dir) if cfg.image_dir else path.parent / cfg.image_subdir
            df = self.pair_files(cfg, df[[self.id_column]].astype(str), files_by_stem(image_dir, IMAGE_SUFFIXES),
                                 folder, path, counts)
        warn_counts(counts, str(path))
        df["case"] = "test"
        return self.attach_features(cfg, df, "meta_path" if df["meta_path"].notna().any() else None)

    def test_path(self, cfg: DictConfig) -> Path:
        if cfg.test_file or cfg.features_file:
            return super().test_path(cfg)
        return self.data_dir(cfg) / cfg.test_dir

    def case_of(self, ids: pd.Series) -> pd.Series:
        """A features table without a case column: the id before its last '_' (CASE01_07 -> CASE01)."""
        return ids.str.rsplit("_", n=1).str[0]

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
        train = self.load_train(cfg)
        paths = dict(zip(train[self.id_column].astype(str), train[self.image_column]))
        save_worst_overlays(cfg, oof, paths, self.id_column, plots_dir)

    # ---- scoring -------------------------------------------------------------------------------------
    def valid_frame(self, cfg: DictConfig, valid: pd.DataFrame) -> pd.DataFrame:
        """NMAE is undefined at a true weight of 0: those rows are trained on but not scored (nor in oof.csv)."""
        return valid[valid[TARGET] != 0]


def files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """{stem: path} of the files in folder with one of the suffixes ('.csv.gz' counts as one suffix)."""
    out = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            name = p.name.lower()
            for s in suffixes:
                if name.endswith(s):
                    out[p.name[:-len(s)]] = p
                    break
    return out


def check_weights(df: pd.DataFrame, column: str, path: Path) -> pd.DataFrame:
    """Weights must be numbers >= 0: a clear error naming the file, row and value otherwise."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() | (values < 0)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise DataError(f"{path}: column {column!r} must be a weight >= 0; {int(bad.sum())} row(s) are not, "
                        f"the first at data row {row + 1}: {str(df[column].iloc[row])!r}")
    df[column] = values.astype(float)
    return df


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
