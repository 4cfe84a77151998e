"""Text side of the engine: transformers cross-encoder with a pooling head, datasets, dynamic padding."""
from __future__ import annotations

from pathlib import Path

import torch
from accelerate import PartialState
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.trainer_pt_utils import LengthGroupedSampler

from common.weights import resolve_text_model

BACKBONE_DIR = "backbone"  # run-folder copy of the backbone's config and tokenizer, so inference needs no hub


def load_tokenizer(model_name: str, run_dir: Path):
    saved = Path(run_dir) / BACKBONE_DIR
    source = saved if (saved / "tokenizer_config.json").is_file() else resolve_text_model(model_name)
    return AutoTokenizer.from_pretrained(source)


class TextDataset(torch.utils.data.Dataset):
    """Tokenizes texts (or (text, text) pairs) on the fly; padding happens per batch in the collator."""

    def __init__(self, texts, tokenizer, max_len: int, targets=None):
        self.texts, self.tokenizer, self.max_len, self.targets = list(texts), tokenizer, max_len, targets

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        text = self.texts[i]
        pair = (text,) if isinstance(text, str) else tuple(text)
        item = dict(self.tokenizer(*pair, truncation=True, max_length=self.max_len))
        item["index"] = i
        if self.targets is not None:
            item["target"] = self.targets[i]
        return item


class PaddingCollator:
    """Dynamic padding: each batch is padded to its own longest sequence, not to max_len."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items):
        extra = {k: [it.pop(k) for it in items] for k in ("index", "target") if k in items[0]}
        batch = dict(self.tokenizer.pad(items, return_tensors="pt"))
        batch["index"] = torch.tensor(extra["index"])
        if "target" in extra:
            batch["target"] = torch.tensor(extra["target"])
        return batch


def length_grouped_sampler(texts: list[str], batch_size: int) -> LengthGroupedSampler:
    """Batches of similar length (the HF Trainer's group_by_length): with dynamic padding, less padding to compute.
    Lengths are counted in characters, a close proxy for tokens. The shuffle draws from torch's global RNG, which
    the trainer seeds per epoch, so a resumed run sees the same batches."""
    return LengthGroupedSampler(batch_size, lengths=[len(t) for t in texts])


class AttentionPool(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, hidden, mask):
        w = self.score(hidden).squeeze(-1).float().masked_fill(mask == 0, -1e4).softmax(-1)
        return (w.unsqueeze(-1).to(hidden.dtype) * hidden).sum(1)


class CrossEncoder(nn.Module):
    """Backbone -> pooling (cls | mean | attention) -> dropout -> linear head."""

    def __init__(self, backbone: nn.Module, n_outputs: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("cls", "mean", "attention"):
            raise ValueError(f"pooling must be cls, mean or attention, got {pooling!r}")
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # BERT's pooler is unused here; unused parameters break DDP
        self.backbone, self.pooling = backbone, pooling
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
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            pooled = self.head["pool"](hidden, attention_mask)
        return self.head["fc"](self.head["dropout"](pooled))


def create_text_model(model_name: str, n_outputs: int, run_dir: Path, pretrained: bool,
                      pooling: str = "mean", dropout: float = 0.1,
                      backbone_dropout: float | None = None) -> CrossEncoder:
    """pretrained=True loads the backbone weights (and saves its config + tokenizer into the run);
    pretrained=False rebuilds the architecture from the run's copy, for loading a fold checkpoint offline.
    backbone_dropout (None keeps the checkpoint's own) sets every dropout inside the backbone; 0 is a common
    choice for regression targets (+0.010 Pearson on USPPPM fold 0, competitions/usppm/README.md)."""
    saved = Path(run_dir) / BACKBONE_DIR
    if pretrained:
        source = resolve_text_model(model_name)
        backbone = AutoModel.from_pretrained(source)
        if PartialState().is_main_process and not (saved / "config.json").is_file():
            backbone.config.save_pretrained(saved)
            AutoTokenizer.from_pretrained(source).save_pretrained(saved)
        PartialState().wait_for_everyone()
    else:
        if not (saved / "config.json").is_file():
            raise FileNotFoundError(f"{saved}: no saved backbone config; was this run trained?")
        backbone = AutoModel.from_config(AutoConfig.from_pretrained(saved))
    if backbone_dropout is not None:
        for module in backbone.modules():
            if isinstance(module, nn.Dropout):  # covers attention dropout too: HF attention reads .p
                module.p = float(backbone_dropout)
    return CrossEncoder(backbone, n_outputs, pooling, dropout)
