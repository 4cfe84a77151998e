"""USPPPM's own logic: reading its CSVs and building `anchor [SEP] target [SEP] context` (+ CPC title, + the other
targets of the anchor). Tokenizer, cross-encoder, pooling, losses: the text family (common/text.py)."""
from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from common.folds import FoldSpec
from common.io import atomic_path, require_range
from common.task import read_frame
from common.text import TEXT_DEFAULTS, TextTask

INPUT_COLUMNS = ["id", "anchor", "target", "context"]
TITLES_FILE = "cpc_titles.csv"  # a fold's copy of the run's cpc_titles=


class UsppmTask(TextTask):
    name = "usppm"
    kind = "regression"
    metric = "pearson"
    id_column = "id"
    target_column = "score"
    # Leak-safe: every anchor's rows stay in one fold; folds are balanced on the score.
    fold_spec = FoldSpec(stratify="score", group="anchor")
    config_path = Path(__file__).with_name("config.yaml")
    kaggle_competition = "us-patent-phrase-to-phrase-matching"
    config_defaults = {
        **TEXT_DEFAULTS,
        "cpc_titles": None,      # CSV with columns code,title (Kaggle "cpc-codes" titles.csv): context -> code + title
        "group_targets": False,  # winners' trick: append the other targets of the same (anchor, context) group
    }

    def load_train(self, cfg: DictConfig) -> pd.DataFrame:
        path = self.data_dir(cfg) / "train.csv"
        df = read_frame(path, INPUT_COLUMNS + ["score"], id_column="id")
        require_range(df, "score", 0.0, 1.0, path)
        return df

    def load_test(self, cfg: DictConfig, path: Path) -> pd.DataFrame:
        return read_frame(path, INPUT_COLUMNS, id_column="id")

    # The titles file a run trained with is copied into each fold, so infer, submit and the Kaggle kernel read that
    # copy (the bundle keeps fold files), never the training machine's path.
    def fit_fold(self, cfg: DictConfig, train: pd.DataFrame, fold_dir: Path) -> dict[str, str] | None:
        if not cfg.cpc_titles:
            return None
        titles = cpc_titles(str(cfg.cpc_titles))  # read (and checked) before the copy is written
        with atomic_path(fold_dir / TITLES_FILE) as tmp:
            shutil.copyfile(cfg.cpc_titles, tmp)
        return titles

    def load_fold(self, cfg: DictConfig, fold_dir: Path) -> dict[str, str] | None:
        copy = fold_dir / TITLES_FILE
        return cpc_titles(str(copy)) if copy.is_file() else None

    def texts(self, cfg: DictConfig, df: pd.DataFrame, sep: str, state=None) -> list[str]:
        context = df["context"].astype(str)
        titles = state if state is not None else (cpc_titles(str(cfg.cpc_titles)) if cfg.cpc_titles else None)
        if titles is not None:
            context = context + " " + context.map(titles).fillna("")
        parts = [df["anchor"].astype(str), df["target"].astype(str), context]
        if cfg.group_targets:
            parts.append(other_targets(df))
        return [f" {sep} ".join(p) for p in zip(*parts)]


@lru_cache(maxsize=4)
def cpc_titles(path: str) -> dict[str, str]:
    """code -> title from a CSV with columns code, title (Kaggle "cpc-codes" titles.csv, shared cpc_titles.csv)."""
    titles = read_frame(Path(path), ["code", "title"])
    return dict(zip(titles["code"].astype(str), titles["title"].astype(str).str.lower()))


def other_targets(df: pd.DataFrame) -> pd.Series:
    """For each row, the other targets of its (anchor, context) group, joined by '; '."""
    groups = df.groupby(["anchor", "context"])["target"].agg(list)
    keys = list(zip(df["anchor"], df["context"]))
    return pd.Series([
        "; ".join(t for t in groups[k] if t != own) for k, own in zip(keys, df["target"])], index=df.index)
