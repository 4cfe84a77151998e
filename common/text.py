"""Text side of the engine: TextTask (the family every text competition subclasses), a transformers cross-encoder
with a pooling head, datasets, dynamic padding, pair-swap TTA."""
from __future__ import annotations

import shutil
from abc import abstractmethod
from pathlib import Path

import pandas as pd
import torch
from accelerate import PartialState
from omegaconf import DictConfig
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.trainer_pt_utils import LengthGroupedSampler

from common.errors import ConfigError
from common.task import TARGET, Task
from common.tricks import multi_sample, set_gradient_checkpointing
from common.weights import resolve_text_model

# Config keys every text competition understands, on top of the engine's (common/config.py).
TEXT_DEFAULTS = {
    "max_len": 128,             # token budget per input; batches are padded to their own longest row
    "pooling": "mean",          # cls | mean | attention: how token states become one vector
    "head_dropout": 0.1,        # dropout before the linear head
    "backbone_dropout": None,   # every dropout inside the backbone; null keeps the checkpoint's own
    "loss": None,               # common/losses.py; null -> by kind: bce (binary), mse (regression), ce (multiclass)
    "group_by_length": False,   # batches of similar length (less padding; pays when lengths vary a lot)
}

BACKBONE_DIR = "backbone"  # run-folder copy of the backbone's config and tokenizer, so inference needs no hub
SWAP = "swap_"             # batch keys of the second view of a pair (the two texts swapped)


def load_tokenizer(model_name: str, run_dir: Path):
    saved = Path(run_dir) / BACKBONE_DIR
    source = saved if (saved / "tokenizer_config.json").is_file() else resolve_text_model(model_name)
    return AutoTokenizer.from_pretrained(source)


class TextDataset(torch.utils.data.Dataset):
    """Encodes texts (or (text, text) pairs) on the fly with `encode(text) -> dict`; padding happens per batch in
    the collator. swap=True also encodes each pair the other way round under the `swap_` keys (pair-swap TTA)."""

    def __init__(self, texts, encode, targets=None, swap: bool = False):
        self.texts, self.encode, self.targets, self.swap = list(texts), encode, targets, swap

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        text = self.texts[i]
        item = dict(self.encode(text))
        if self.swap:
            item.update({f"{SWAP}{k}": v for k, v in self.encode(tuple(reversed(text))).items()})
        item["index"] = i
        if self.targets is not None:
            item["target"] = self.targets[i]
        return item


class PaddingCollator:
    """Dynamic padding: each batch is padded to its own longest sequence, not to max_len (the swap_ keys of
    pair-swap TTA are padded on their own)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items):
        extra = {k: [it.pop(k) for it in items] for k in ("index", "target") if k in items[0]}
        swapped = [{k[len(SWAP):]: it.pop(k) for k in list(it) if k.startswith(SWAP)} for it in items]
        batch = dict(self.tokenizer.pad(items, return_tensors="pt"))
        if swapped[0]:
            batch.update({f"{SWAP}{k}": v for k, v in self.tokenizer.pad(swapped, return_tensors="pt").items()})
        batch["index"] = torch.tensor(extra["index"])
        if "target" in extra:
            batch["target"] = torch.tensor(extra["target"])
        return batch


def length_grouped_sampler(texts: list, batch_size: int, generator: torch.Generator) -> LengthGroupedSampler:
    """Batches of similar length (the HF Trainer's group_by_length): with dynamic padding, less padding to compute.
    Lengths are counted in characters, a close proxy for tokens. The shuffle draws from the fold's generator, which
    the trainer re-seeds every epoch, so a resumed run sees the same batches."""
    lengths = [len(t) if isinstance(t, str) else sum(map(len, t)) for t in texts]
    return LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the token states the attention mask keeps."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def drop_pooler(backbone: nn.Module) -> None:
    """BERT's pooler is unused by these heads, and unused parameters break DDP."""
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None


class AttentionPool(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, hidden, mask):
        w = self.score(hidden).squeeze(-1).float().masked_fill(mask == 0, -1e4).softmax(-1)
        return (w.unsqueeze(-1).to(hidden.dtype) * hidden).sum(1)


class CrossEncoder(nn.Module):
    """Backbone -> pooling (cls | mean | attention) -> dropout -> linear head."""

    def __init__(self, backbone: nn.Module, n_outputs: int, pooling: str = "mean", dropout: float = 0.1,
                 dropout_samples: int = 1):
        super().__init__()
        if pooling not in ("cls", "mean", "attention"):
            raise ConfigError(f"pooling must be cls, mean or attention, got {pooling!r}")
        drop_pooler(backbone)
        self.backbone, self.pooling, self.dropout_samples = backbone, pooling, dropout_samples
        hidden = backbone.config.hidden_size
        # Everything outside the backbone counts as head (its own learning rate, head_lr).
        self.head = nn.ModuleDict({"pool": AttentionPool(hidden) if pooling == "attention" else nn.Identity(),
                                   "dropout": nn.Dropout(dropout), "fc": nn.Linear(hidden, n_outputs)})

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "mean":
            pooled = mean_pool(hidden, attention_mask)
        else:
            pooled = self.head["pool"](hidden, attention_mask)
        return multi_sample(lambda x: self.head["fc"](self.head["dropout"](x)), pooled, self.dropout_samples,
                            self.training)


def create_text_model(model_name: str, n_outputs: int, run_dir: Path, pretrained: bool,
                      pooling: str = "mean", dropout: float = 0.1,
                      backbone_dropout: float | None = None, dropout_samples: int = 1,
                      gradient_checkpointing: bool = False) -> CrossEncoder:
    """pretrained=True loads the backbone weights (and saves its config + tokenizer into the run);
    pretrained=False rebuilds the architecture from the run's copy, for loading a fold checkpoint offline.
    backbone_dropout (None keeps the checkpoint's own) sets every dropout inside the backbone; 0 is a common
    choice for regression targets (+0.010 Pearson on USPPPM fold 0, competitions/usppm/README.md)."""
    saved = Path(run_dir) / BACKBONE_DIR
    if pretrained:
        source = resolve_text_model(model_name)
        backbone = AutoModel.from_pretrained(source)
        if PartialState().is_main_process and not (saved / "config.json").is_file():
            tmp = saved.with_name(f".{BACKBONE_DIR}.tmp")  # written whole, then renamed: never half a tokenizer
            shutil.rmtree(tmp, ignore_errors=True)
            backbone.config.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
            shutil.rmtree(saved, ignore_errors=True)
            tmp.rename(saved)
        PartialState().wait_for_everyone()
    else:
        if not (saved / "config.json").is_file():
            raise FileNotFoundError(f"{saved}: no saved backbone config; was this run trained?")
        backbone = AutoModel.from_config(AutoConfig.from_pretrained(saved))
    if backbone_dropout is not None:
        for module in backbone.modules():
            if isinstance(module, nn.Dropout):  # covers attention dropout too: HF attention reads .p
                module.p = float(backbone_dropout)
    if gradient_checkpointing:
        set_gradient_checkpointing(backbone)
    return CrossEncoder(backbone, n_outputs, pooling, dropout, dropout_samples)


# ---- the text task --------------------------------------------------------------------------------
class TextTask(Task):
    """A Task whose inputs are texts. A competition implements load_train / load_test and `texts`; it may override
    `encode` (how one text or pair becomes token ids). Tokenizer, dynamic padding, pooling, head and pair-swap TTA
    live here; losses are the registry's (common/losses.py: bce or mse, ce for multiclass)."""

    config_defaults = TEXT_DEFAULTS

    @abstractmethod
    def texts(self, cfg: DictConfig, df: pd.DataFrame, sep: str, state=None) -> list:
        """One model input per row: a string, or a (text, text) pair tokenized as a pair. sep is the tokenizer's
        separator token, for joining several fields into one string; state is what fit_fold / load_fold gave the
        fold (None outside a fold)."""

    def encode(self, cfg: DictConfig, tokenizer, text) -> dict:
        pair = (text,) if isinstance(text, str) else tuple(text)
        return tokenizer(*pair, truncation=True, max_length=cfg.max_len)

    def dataset(self, cfg, df, mode, ctx):
        tokenizer = load_tokenizer(cfg.model, ctx.run_dir)
        texts = self.texts(cfg, df, tokenizer.sep_token, ctx.state)
        targets = None
        if TARGET in df:
            targets = torch.tensor(df[TARGET].to_numpy(), dtype=torch.long if self.kind == "multiclass"
                                   else torch.float32)
        swap = bool(cfg.tta) and mode != "train" and len(texts) > 0 and not isinstance(texts[0], str)
        return TextDataset(texts, lambda t: self.encode(cfg, tokenizer, t), targets, swap=swap)

    def collate_fn(self, cfg, ctx):
        return PaddingCollator(load_tokenizer(cfg.model, ctx.run_dir))

    def train_sampler(self, cfg, train, ctx):
        if not cfg.group_by_length:
            return None
        return length_grouped_sampler(self.texts(cfg, train, "[SEP]", ctx.state), cfg.batch_size, ctx.generator)

    def predict_order(self, cfg, df, ctx):
        lengths = [len(t) if isinstance(t, str) else sum(map(len, t)) for t in self.texts(cfg, df, "[SEP]", ctx.state)]
        return sorted(range(len(lengths)), key=lambda i: -lengths[i])  # characters: a close proxy for tokens

    def build_model(self, cfg, n_outputs, ctx, pretrained):
        return create_text_model(cfg.model, n_outputs, ctx.run_dir, pretrained, cfg.pooling, cfg.head_dropout,
                                 cfg.backbone_dropout, cfg.get("multi_sample_dropout") or 1,
                                 bool(cfg.get("gradient_checkpointing")))

    def tta_views(self, cfg, batch):
        """Pair-swap TTA: (a, b) and (b, a), for pair texts (the dataset encodes both when tta is on)."""
        if not cfg.tta:
            return [batch]
        swapped = {k[len(SWAP):]: v for k, v in batch.items() if k.startswith(SWAP)}
        if not swapped:
            raise ConfigError(f"{self.name}: tta=true swaps the two texts of a pair; these inputs are single texts")
        plain = {k: v for k, v in batch.items() if not k.startswith(SWAP)}
        return [plain, {**swapped, **{k: v for k, v in plain.items() if k in ("index", "target")}}]
