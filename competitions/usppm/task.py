"""USPPPM's own logic: reading its CSVs, building `anchor [SEP] target [SEP] context`, the cross-encoder."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from common.folds import FoldSpec
from common.io import require_range
from common.task import TARGET, Task, read_frame
from common.text import PaddingCollator, TextDataset, create_text_model, length_grouped_sampler, load_tokenizer

INPUT_COLUMNS = ["id", "anchor", "target", "context"]


class UsppmTask(Task):
    name = "usppm"
    kind = "regression"
    metric = "pearson"
    id_column = "id"
    target_column = "score"
    # Leak-safe: every anchor's rows stay in one fold; folds are balanced on the score.
    fold_spec = FoldSpec(stratify="score", group="anchor")
    config_path = Path(__file__).with_name("config.yaml")
    kaggle_competition = "us-patent-phrase-to-phrase-matching"

    def load_train(self, cfg: DictConfig) -> pd.DataFrame:
        path = self.data_dir(cfg) / "train.csv"
        df = read_frame(path, INPUT_COLUMNS + ["score"], id_column="id")
        require_range(df, "score", 0.0, 1.0, path)
        return df

    def load_test(self, cfg: DictConfig, path: Path) -> pd.DataFrame:
        return read_frame(path, INPUT_COLUMNS, id_column="id")

    def texts(self, cfg: DictConfig, df: pd.DataFrame, sep: str) -> list[str]:
        context = df["context"].astype(str)
        if cfg.cpc_titles:
            context = context + " " + context.map(cpc_titles(cfg.cpc_titles)).fillna("")
        parts = [df["anchor"].astype(str), df["target"].astype(str), context]
        if cfg.group_targets:
            parts.append(other_targets(df))
        return [f" {sep} ".join(p) for p in zip(*parts)]

    def dataset(self, cfg, df, mode, run_dir):
        tokenizer = load_tokenizer(cfg.model, run_dir)
        targets = torch.tensor(df[TARGET].to_numpy(), dtype=torch.float32) if TARGET in df else None
        return TextDataset(self.texts(cfg, df, tokenizer.sep_token), tokenizer, cfg.max_len, targets)

    def train_sampler(self, cfg, train):
        return length_grouped_sampler(self.texts(cfg, train, "[SEP]"), cfg.batch_size) if cfg.group_by_length else None

    def collate_fn(self, cfg, run_dir):
        return PaddingCollator(load_tokenizer(cfg.model, run_dir))

    def build_model(self, cfg, n_outputs, run_dir, pretrained):
        return create_text_model(cfg.model, n_outputs, run_dir, pretrained, cfg.pooling, cfg.dropout,
                                 cfg.get("backbone_dropout"))  # runs trained before the key: None

    def loss_fn(self, cfg, train):
        if cfg.loss == "bce":
            return lambda logits, y: torch.nn.functional.binary_cross_entropy_with_logits(logits.view(-1), y)
        if cfg.loss == "mse":
            return lambda logits, y: torch.nn.functional.mse_loss(logits.view(-1), y)
        raise ValueError(f"loss must be bce or mse, got {cfg.loss!r}")

    def activate(self, cfg, logits):
        out = logits.float().view(-1, 1)
        return out.sigmoid() if cfg.loss == "bce" else out


def cpc_titles(path: str) -> dict[str, str]:
    """code -> title from the Kaggle "cpc-codes" titles.csv (columns code, title, ...)."""
    titles = read_frame(Path(path), ["code", "title"])
    return dict(zip(titles["code"].astype(str), titles["title"].astype(str).str.lower()))


def other_targets(df: pd.DataFrame) -> pd.Series:
    """For each row, the other targets of its (anchor, context) group, joined by '; '."""
    groups = df.groupby(["anchor", "context"])["target"].agg(list)
    keys = list(zip(df["anchor"], df["context"]))
    return pd.Series([
        "; ".join(t for t in groups[k] if t != own) for k, own in zip(keys, df["target"])], index=df.index)

