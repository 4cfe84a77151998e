"""Pair tasks: "do these two items belong together?" when the training data is items grouped by a label
(programs by problem, photos by identity, questions by duplicate cluster).

- `PairSampler`: a per-epoch draw of (i, j, label) pairs, a share of them positives (same group), the negatives
  part random and part hard. It draws from a torch.Generator that the trainer re-seeds every epoch, so a resumed run
  sees the same pairs. A dataset's __getitem__ takes the tuple.
- `BiEncoder`: sentence-transformers style: one shared encoder, mean pooling, cosine similarity of the two
  embeddings. At inference it embeds every distinct item once (a cache keyed by the item's content hash), so
  a test of N pairs over M distinct items costs M forward passes, not 2N.
- `expand_neighbours`: query expansion (`query_expansion=k`): after a pass, each item's embedding takes in its k
  nearest items of the scored set before the pairs' cosines are taken (the refine_predictions hook).
- `pair_batch`: the collation for BiEncoder: the distinct items of a batch, padded once, and two index vectors.
- `SpecialTokens`, `fair_budget`, `head_tail`: a cross-encoder's pair input from pre-tokenized sides, the token
  budget split fairly between the two texts, each cut to its head and tail (tokenize each distinct text once).
- `CrossPairs`, `BiPairs` (`PairEncoding`): what differs between the two encoders (dataset item, collation,
  model, training loss, default loss, TTA views); PairTextTask picks one from `encoder=` (`PAIRINGS`).
- `PairTextTask`: the family of pair-of-texts competitions built on the above. A competition supplies its corpus
  (texts grouped by a label) and names its columns; the family scores fixed pairs drawn per group (`scored_pairs`),
  folds over groups (`group_folds`; a pair across two folds is in none), mines BM25 hard negatives per training
  fold (`common/bm25.py`), re-draws training pairs every epoch, and trains a cross-encoder or a bi-encoder.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from common.bm25 import bm25_hard_negatives, word_tokens
from common.errors import ConfigError, DataError
from common.folds import FoldSpec, make_folds
from common.io import read_csv, write_csv
from common.losses import multiple_negatives_ranking
from common.submission import check_sample_ids
from common.task import BOOKKEEPING, TARGET, read_frame
from common.text import SWAP, TEXT_DEFAULTS, PaddingCollator, TextTask, drop_pooler, load_tokenizer, mean_pool

GROUPS = "groups"  # a bi-encoder training batch's group code per distinct item (in_batch_pairs)


def text_key(text: str) -> int:
    """A stable 63-bit content hash: the key of an item in BiEncoder's embedding cache."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little") >> 1


# ---- token budgets -------------------------------------------------------------------------------------------------
def fair_budget(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Tokens kept of each side: both whole if they fit, else half each, the unused part of a short side going to
    the long one."""
    if len_a + len_b <= budget:
        return len_a, len_b
    half = budget // 2
    if len_a <= half:
        return len_a, budget - len_a
    if len_b <= budget - half:
        return budget - len_b, len_b
    return half, budget - half


def head_tail(ids: list, n: int, head_share: float = 0.5) -> list:
    """The first round(n * head_share) and the last n - that tokens of ids (all of ids if it has at most n)."""
    if len(ids) <= n:
        return list(ids)
    head = round(n * head_share)
    return list(ids[:head]) + (list(ids[len(ids) - (n - head):]) if n > head else [])


class SpecialTokens:
    """Where a tokenizer puts its special tokens around one text and around a pair, read off by encoding two
    marker words (transformers 5 tokenizers no longer expose build_inputs_with_special_tokens). Then
    single(ids) / pair(ids_a, ids_b) build the model input of already tokenized texts, with token_type_ids when
    the tokenizer makes them: [CLS] a [SEP] b [SEP] for BERT, <s> a </s></s> b </s> for RoBERTa."""

    def __init__(self, tokenizer):
        a = tokenizer("x", add_special_tokens=False)["input_ids"]
        b = tokenizer("y", add_special_tokens=False)["input_ids"]
        single, pair = tokenizer("x"), tokenizer("x", "y")
        ids = pair["input_ids"]
        i = _find(ids, a, 0)
        j = _find(ids, b, i + len(a))
        self.prefix, self.middle, self.suffix = ids[:i], ids[i + len(a):j], ids[j + len(b):]
        types = pair.get("token_type_ids")
        self.types = None if types is None else (types[0], types[j])  # first side's type (with the specials), second's
        s = single["input_ids"]
        k = _find(s, a, 0)
        self.single_prefix, self.single_suffix = s[:k], s[k + len(a):]
        self.pair_extra = len(self.prefix) + len(self.middle) + len(self.suffix)
        self.single_extra = len(self.single_prefix) + len(self.single_suffix)

    def single(self, ids: list) -> list:
        return self.single_prefix + list(ids) + self.single_suffix

    def pair(self, ids_a: list, ids_b: list) -> dict:
        first = self.prefix + list(ids_a) + self.middle
        input_ids = first + list(ids_b) + self.suffix
        out = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}
        if self.types is not None:
            out["token_type_ids"] = [self.types[0]] * len(first) + [self.types[1]] * (len(input_ids) - len(first))
        return out


def _find(seq: list, sub: list, start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    raise ValueError("cannot find a marker word in the tokenizer's output")


# ---- per-epoch pair sampling --------------------------------------------------------------------------------------
class PairSampler(torch.utils.data.Sampler):
    """Yields `n_pairs` tuples (i, j, label) per epoch over items with group labels `groups`.

    positive_share of them are positives: an item drawn uniformly from the items whose group has another, and a
    different item of its group. The rest are negatives: with probability hard_share a random pick among the
    item's hard negatives (rows of `hard`, -1 padded), else a random item of another group. The two sides are
    swapped at random. All randomness comes from `generator` at the start of each epoch (one seed drawn from it),
    so re-seeding the generator replays the epoch."""

    def __init__(self, groups: Sequence, n_pairs: int, positive_share: float = 0.5, hard: np.ndarray | None = None,
                 hard_share: float = 0.5, generator: torch.Generator | None = None):
        if not 0 <= positive_share <= 1 or not 0 <= hard_share <= 1:
            raise ValueError(f"positive_share and hard_share must be in [0, 1], got {positive_share}, {hard_share}")
        codes, self.groups = np.unique(np.asarray(groups), return_inverse=True)
        if len(codes) < 2:
            raise ValueError(f"pairs need items of at least 2 groups, got {len(codes)}")
        self.n_pairs, self.positive_share, self.hard_share = int(n_pairs), positive_share, hard_share
        self.hard = hard
        self.generator = generator if generator is not None else torch.Generator()
        self.members = [np.flatnonzero(self.groups == g) for g in range(len(codes))]
        self.anchors = np.flatnonzero([len(self.members[g]) > 1 for g in self.groups])  # items with a partner
        if positive_share > 0 and not len(self.anchors):
            raise ValueError("positive pairs need a group with at least 2 items")

    def __len__(self) -> int:
        return self.n_pairs

    def __iter__(self):
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
        rng = np.random.default_rng(seed)
        n = len(self.groups)
        for _ in range(self.n_pairs):
            if rng.random() < self.positive_share:
                i = int(self.anchors[rng.integers(len(self.anchors))])
                mates = self.members[self.groups[i]]
                j = int(mates[mates != i][rng.integers(len(mates) - 1)])
                label = 1
            else:
                i, j = int(rng.integers(n)), -1
                if self.hard is not None and rng.random() < self.hard_share:
                    row = self.hard[i][self.hard[i] >= 0]
                    if len(row):
                        j = int(row[rng.integers(len(row))])
                while j < 0 or self.groups[j] == self.groups[i]:
                    j = int(rng.integers(n))
                label = 0
            yield (i, j, label) if rng.random() < 0.5 else (j, i, label)


# ---- bi-encoder ---------------------------------------------------------------------------------------------------
def pair_batch(items: list[dict], pad_id: int) -> dict:
    """Collate items {"ids_a", "ids_b" (token id lists), "key_a", "key_b" (content keys), "index", ["target"],
    ["group_a", "group_b"]} into BiEncoder's inputs: the batch's distinct items once (input_ids, attention_mask,
    keys, and their groups when the items carry them) and, per pair, the positions a and b of its two sides."""
    keys, rows, groups, pos = [], [], [], {}
    a, b = [], []
    for it in items:
        for side, out in (("a", a), ("b", b)):
            key = it[f"key_{side}"]
            if key not in pos:
                pos[key] = len(keys)
                keys.append(key)
                rows.append(it[f"ids_{side}"])
                groups.append(it.get(f"group_{side}", -1))
            out.append(pos[key])
    width = max(1, max(len(r) for r in rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, ids in enumerate(rows):
        input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, :len(ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "keys": torch.tensor(keys, dtype=torch.long),
             "a": torch.tensor(a, dtype=torch.long), "b": torch.tensor(b, dtype=torch.long),
             "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}
    if "target" in items[0]:
        batch["target"] = torch.tensor([float(it["target"]) for it in items])
    if "group_a" in items[0]:
        batch[GROUPS] = torch.tensor(groups, dtype=torch.long)
    return batch


def encoder_inputs(batch: dict) -> dict:
    """A bi-encoder training batch without its bookkeeping and group codes: what BiEncoder takes."""
    return {k: v for k, v in batch.items() if k not in (*BOOKKEEPING, GROUPS)}


def in_batch_pairs(batch: dict) -> tuple[dict, torch.Tensor]:
    """Every pair of the batch's distinct items, labelled 1 when their groups agree: BiEncoder's inputs with a and b
    replaced (the same forward pass embeds them all), and the labels. 16 sampled pairs hold ~30 distinct items, so
    ~430 labelled pairs for the cost of 16: the sampled pairs are among them."""
    inputs = encoder_inputs(batch)
    groups = batch[GROUPS]
    a, b = torch.triu_indices(len(groups), len(groups), offset=1, device=groups.device)
    inputs.update(a=a, b=b)
    return inputs, (groups[a] == groups[b]).float()


def ranking_loss(model: nn.Module, batch: dict, scale: float) -> torch.Tensor:
    """loss=mnrl: the batch's sampled positive pairs, one per group (a second pair of a group would be a false
    negative of the first), ranked by sentence-transformers' MultipleNegativesRankingLoss: each anchor against every
    other pair's positive. The batch's distinct items are embedded once."""
    if GROUPS not in batch:
        raise ConfigError("loss=mnrl needs in_batch_pairs=true (the batch's group codes tell its pairs apart)")
    emb = model(**{k: v for k, v in encoder_inputs(batch).items() if k not in ("a", "b")})
    a, b, groups = batch["a"], batch["b"], batch[GROUPS]
    positive = (batch["target"] > 0).nonzero().view(-1).tolist()
    first, seen = [], set()
    for k in positive:
        group = int(groups[a[k]])
        if group not in seen:
            seen.add(group)
            first.append(k)
    if len(first) < 2:  # nothing to rank against: a step without loss, gradients kept in the graph
        return emb.sum() * 0
    first = torch.tensor(first, device=a.device)
    return multiple_negatives_ranking(emb[a[first]], emb[b[first]], scale)


class EmbeddingCache:
    """Each distinct item embedded once, by content key: embed(input_ids=, attention_mask=) -> unit vectors is called
    only for the keys it has not seen, in chunks, each cut to its own longest row. The torch BiEncoder (eval mode)
    and its ONNX Runtime twin (BiEncoder.onnx_runner) share it."""

    def __init__(self, embed: Callable, chunk: int = 64):
        self.embed, self.chunk = embed, chunk
        self.store: dict[int, torch.Tensor] = {}

    def clear(self) -> None:
        self.store = {}

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        new = [r for r, k in enumerate(keys.tolist()) if k not in self.store]
        if new:
            rows = torch.tensor(new, device=input_ids.device)
            ids, mask = input_ids[rows], attention_mask[rows]
            width = int(mask.sum(1).max().clamp(min=1))  # the new items may be shorter than the batch
            for s in range(0, len(new), self.chunk):
                part = slice(s, s + self.chunk)
                out = self.embed(input_ids=ids[part, :width], attention_mask=mask[part, :width])
                for r, e in zip(new[part], out):
                    self.store[int(keys[r])] = e.detach()
        return torch.stack([self.store[int(k)] for k in keys.tolist()])


def cosine_of_sides(emb: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(pairs, 1): the cosine of each pair's two unit embeddings."""
    return (emb[a] * emb[b]).sum(-1, keepdim=True)


def expand_neighbours(emb: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Average query expansion (Chum et al., 2007): each unit embedding plus its k most similar others of the set,
    weighted by their cosine (a negative one counts 0), renormalised. Items of one group pull each other together
    when the set holds several of them; the similarity matrix is built `chunk` rows at a time."""
    k = min(k, len(emb) - 1)
    if k < 1:
        return emb
    out = emb.clone()
    for s in range(0, len(emb), chunk):
        sim = emb[s:s + chunk] @ emb.T
        rows = torch.arange(len(sim), device=emb.device)
        sim[rows, rows + s] = -float("inf")  # not itself
        weight, nearest = sim.topk(k, dim=1)
        out[s:s + chunk] += (weight.clamp(min=0).unsqueeze(-1) * emb[nearest]).sum(1)
    return nn.functional.normalize(out, dim=-1)


def embed_each_text(cache: EmbeddingCache, data: PairTextDataset, device) -> torch.Tensor:
    """(texts, dim): every distinct text of `data` through the embedding cache, which already holds those a pass
    over the data embedded (under several processes, each process's share; the rest are embedded here)."""
    rows = [data.special.single(head_tail(ids, data.budget, data.head_share)) for ids in data.ids]
    width = max(1, max(len(r) for r in rows))
    input_ids = torch.full((len(rows), width), data.pad_id or 0, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, ids in enumerate(rows):
        input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, :len(ids)] = 1
    return cache(input_ids.to(device), attention_mask.to(device), torch.tensor(data.keys, dtype=torch.long))


class BiEncoder(nn.Module):
    """Siamese encoder: backbone -> mean pooling over the mask -> L2-normalised embedding; the output is the
    cosine similarity of the two sides, shape (batch, 1). In eval mode, embeddings are cached by content key;
    the cache is emptied whenever the mode changes or weights are loaded, so it never outlives its weights."""

    def __init__(self, backbone: nn.Module, chunk: int = 64):
        super().__init__()
        drop_pooler(backbone)
        self.backbone, self.chunk = backbone, chunk
        self.cache = EmbeddingCache(self.embed, chunk)
        self.register_load_state_dict_post_hook(lambda module, keys: module.cache.clear())

    def train(self, mode: bool = True):
        self.cache.clear()
        return super().train(mode)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return nn.functional.normalize(mean_pool(hidden, attention_mask).float(), dim=-1)

    def forward(self, input_ids, attention_mask, keys, a=None, b=None):
        """The cosine of each pair (a[k], b[k]) of the batch's distinct items; without a and b (training), the
        items' embeddings (loss=mnrl ranks them)."""
        if self.training:
            emb = self.embed(input_ids, attention_mask)
            if a is None:
                return emb
        else:
            emb = self.cache(input_ids, attention_mask, keys)
        return cosine_of_sides(emb, a, b)

    # ONNX Runtime (common/onnx_runtime.py): the embedding network is exported, the cache and cosine stay here.
    def onnx_module(self) -> nn.Module:
        return Embedder(self)

    def onnx_runner(self, embed: Callable) -> Callable:
        return CachedBiEncoder(embed, self.chunk)


class Embedder(nn.Module):
    """A BiEncoder's embedding network alone: (input_ids, attention_mask) -> unit embeddings, what ONNX exports."""

    def __init__(self, encoder: BiEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        return self.encoder.embed(input_ids, attention_mask)


class CachedBiEncoder:
    """BiEncoder's prediction around an exported embedding network: called as the torch model is, each distinct
    item embedded once."""

    def __init__(self, embed: Callable, chunk: int):
        self.cache = EmbeddingCache(embed, chunk)

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask, keys, a, b):
        return cosine_of_sides(self.cache(input_ids, attention_mask, keys), a, b)


# ---- fixed scored pairs and folds over groups ---------------------------------------------------------------------
def _made_up(groups: pd.Series, prefix: str | None) -> pd.Series:
    """Which groups were made up for labelled pairs' texts that match no corpus item (their names start with prefix)."""
    return groups.astype(str).str.startswith(prefix) if prefix else pd.Series(False, index=groups.index)


def group_folds(groups: Sequence, n_folds: int, seed: int, made_up_prefix: str | None = None,
                noun: str = "group") -> dict:
    """group -> fold. The corpus's groups are split K-fold (shuffled with seed, sizes within one); made-up groups
    (see _made_up) take a fold from a hash of their name, so they come and go without moving the others."""
    groups = pd.Series(pd.Series(groups).unique())
    made_up = _made_up(groups, made_up_prefix)
    real = groups[~made_up].reset_index(drop=True)
    if len(real) < n_folds:
        raise DataError(f"{len(real)} {noun}s cannot fill {n_folds} folds (folds are drawn over {noun}s)")
    fold_of = dict(zip(real, make_folds(pd.DataFrame({noun: real}), FoldSpec(), n_folds, seed).tolist()))
    for g in groups[made_up]:
        digest = hashlib.blake2b(f"{seed}:{g}".encode(), digest_size=8).digest()
        fold_of[g] = int.from_bytes(digest, "little") % n_folds
    return fold_of


def scored_pairs(corpus: pd.DataFrame, fold_of: dict, per_group: int, seed: int, item: str = "item",
                 group: str = "group", id_column: str = "pair_id", target: str = "similar",
                 made_up_prefix: str | None = None) -> pd.DataFrame:
    """Balanced, seeded pairs of corpus items: per group, its same-group pairs (at most per_group, drawn at random)
    and as many negatives, each an item of the group with an item of another group in the same fold. Sides are put
    in random order. Columns: id_column ('<item1>|<item2>'), item1, item2, group1, group2, target (1 same group)."""
    rng = np.random.default_rng(seed)
    real = corpus[~_made_up(corpus[group], made_up_prefix)]
    by_group = {g: rows[item].tolist() for g, rows in real.groupby(group, sort=True)}
    by_fold: dict[int, list] = {}
    for g in by_group:
        by_fold.setdefault(fold_of[g], []).append(g)
    group_of = dict(zip(real[item], real[group]))
    rows = []
    for g, items in by_group.items():
        positives = list(combinations(items, 2))
        if len(positives) > per_group:
            positives = [positives[i] for i in sorted(rng.choice(len(positives), per_group, replace=False))]
        others = [h for h in by_fold[fold_of[g]] if h != g] or [h for h in by_group if h != g]
        negatives = []
        for _ in positives:
            h = others[rng.integers(len(others))]
            negatives.append((items[rng.integers(len(items))], by_group[h][rng.integers(len(by_group[h]))]))
        for (i1, i2), y in [(pair, 1) for pair in positives] + [(pair, 0) for pair in negatives]:
            if rng.random() < 0.5:
                i1, i2 = i2, i1
            rows.append({id_column: f"{i1}|{i2}", f"{item}1": i1, f"{item}2": i2, f"{group}1": group_of[i1],
                         f"{group}2": group_of[i2], target: y})
    pairs = pd.DataFrame(rows)
    return pairs.drop_duplicates(id_column).reset_index(drop=True)


# ---- pairs -> model inputs ----------------------------------------------------------------------------------------
def distinct_texts(df: pd.DataFrame, columns: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each distinct text of the two columns once, and the positions of every row's two sides among them."""
    first, second = columns
    texts = pd.concat([df[first], df[second]], ignore_index=True).fillna("").astype(str)
    position, distinct = pd.factorize(texts)
    return list(distinct), position[:len(df)], position[len(df):]


def tokenize_all(tokenizer, texts: list[str], chunk: int = 2048) -> list[list[int]]:
    """Token ids of every text, no special tokens, no truncation (head+tail cuts later)."""
    import transformers
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "longer than the maximum length": we cut later
    try:
        out = []
        for s in range(0, len(texts), chunk):
            out += tokenizer(texts[s:s + chunk], add_special_tokens=False)["input_ids"]
        return out
    finally:
        transformers.logging.set_verbosity(level)


class PairTextDataset(torch.utils.data.Dataset):
    """Pairs of texts for either encoder: `pairing` (CrossPairs or BiPairs) builds each item. Each distinct text is
    tokenized once (in one batched call).

    Scoring (valid/test): item k is the pair at order[k], longest first, so batches hold similar lengths (less
    padding); its 'index' is the pair's row, which is where the engine puts the prediction. Training: item
    (i, j, label) from PairSampler, i and j positions among the texts. swap=True adds the swapped pair under swap_
    keys (TTA); training with `groups` (in_batch_pairs), each side's group code."""

    def __init__(self, tokenizer, texts: list[str], pairing: PairEncoding, max_len: int,
                 head_share: float = 0.5, a=None, b=None, targets=None, swap: bool = False, groups=None):
        self.pairing, self.max_len, self.head_share, self.swap = pairing, int(max_len), head_share, swap
        self.groups = groups  # training, bi: each text's group code, for in_batch_pairs
        self.special, self.pad_id = SpecialTokens(tokenizer), tokenizer.pad_token_id
        extra = pairing.special_tokens(self.special)
        self.budget = self.max_len - extra
        if self.budget < 2:
            raise ConfigError(f"max_len={self.max_len} leaves no room for text after {extra} special tokens")
        self.ids = tokenize_all(tokenizer, texts)
        self.keys = [text_key(t) for t in texts]
        self.a, self.b, self.targets = a, b, targets
        if a is not None:
            cost = np.array([len(i) for i in self.ids])
            self.order = np.argsort(-pairing.cost(cost[a], cost[b]), kind="stable")

    def __len__(self):
        return 0 if self.a is None else len(self.a)

    def __getitem__(self, k):
        if isinstance(k, tuple):  # training: (i, j, label) from the sampler
            i, j, label = k
            item = self.pairing.encode(self, i, j)
            item.update(index=0, target=float(label))
            if self.groups is not None:
                item.update(group_a=int(self.groups[i]), group_b=int(self.groups[j]))
            return item
        row = int(self.order[k])
        item = self.pairing.encode(self, int(self.a[row]), int(self.b[row]))
        if self.swap:
            swapped = self.pairing.encode(self, int(self.b[row]), int(self.a[row]))
            item.update({f"{SWAP}{key}": v for key, v in swapped.items()})
        item["index"] = row
        if self.targets is not None:
            item["target"] = float(self.targets[row])
        return item


# ---- the two encoders ---------------------------------------------------------------------------------------------
class PairEncoding(ABC):
    """What differs between the pair family's encoders; PairTextTask picks one from `encoder=` (PAIRINGS) and its
    hooks ask it. `family` is PairTextTask's super(): the text family's hooks, which an encoder defers to where it
    does what any text task does."""

    loss_kind: str               # the kind of output, for the loss registry (common/losses.py)
    default_loss: str            # loss= unset
    in_batch_pairs: bool         # can train on every pair of a batch's distinct texts
    expands: bool                # has text embeddings for query_expansion to average

    @abstractmethod
    def special_tokens(self, special: SpecialTokens) -> int:
        """How many special tokens an item adds (the rest of max_len is text)."""

    @abstractmethod
    def cost(self, len_a: np.ndarray, len_b: np.ndarray) -> np.ndarray:
        """What a scored pair costs to run, from its texts' token counts: pairs go longest first."""

    @abstractmethod
    def encode(self, data: PairTextDataset, i: int, j: int) -> dict:
        """The model inputs of the pair of texts i, j of data."""

    def swaps(self, cfg: DictConfig, mode: str) -> bool:
        """Whether items of this mode also hold the swapped pair (TTA)."""
        return False

    @abstractmethod
    def collate(self, tokenizer):
        """The batch collator of this encoder's items."""

    def model(self, text_model: nn.Module) -> nn.Module:
        """The network, from the text family's (backbone + pooling head)."""
        return text_model

    def train_loss(self, family, cfg, model, batch, loss_fn):
        return family.train_loss(cfg, model, batch, loss_fn)

    def tta_views(self, family, cfg, batch):
        return family.tta_views(cfg, batch)

    def refine_predictions(self, family, cfg, model, data: PairTextDataset, preds: np.ndarray, accelerator):
        """The predictions of a whole pass, changed where the encoder scores better with all of them in sight."""
        return preds


class CrossPairs(PairEncoding):
    """encoder=cross: one transformer reads both texts, [CLS] a [SEP] b [SEP], the max_len budget split fairly and
    each side cut to head + tail; one logit through the text family's head, BCE; pair-swap TTA (tta=true)."""

    loss_kind, default_loss = "binary", "bce"
    in_batch_pairs = False  # it scores only the pairs it reads
    expands = False         # no embedding of a single text

    def special_tokens(self, special: SpecialTokens) -> int:
        return special.pair_extra

    def cost(self, len_a: np.ndarray, len_b: np.ndarray) -> np.ndarray:
        return len_a + len_b

    def encode(self, data: PairTextDataset, i: int, j: int) -> dict:
        n_a, n_b = fair_budget(len(data.ids[i]), len(data.ids[j]), data.budget)
        return data.special.pair(head_tail(data.ids[i], n_a, data.head_share),
                                 head_tail(data.ids[j], n_b, data.head_share))

    def swaps(self, cfg: DictConfig, mode: str) -> bool:
        return bool(cfg.tta) and mode == "test"  # the engine scores OOF without TTA

    def collate(self, tokenizer):
        return PaddingCollator(tokenizer)


class BiPairs(PairEncoding):
    """encoder=bi: sentence-transformers style, one encoder embeds each text (max_len each), mean pooling,
    L2-normalised; the output is the cosine of the two embeddings (BiEncoder), trained with loss=cosine or
    contrastive (in_batch_pairs=true: over every pair of a batch's distinct texts) or mnrl (ranking_loss);
    symmetric, so nothing to average at TTA."""

    loss_kind, default_loss = "pair_embedding", "cosine"
    in_batch_pairs = True
    expands = True

    def special_tokens(self, special: SpecialTokens) -> int:
        return special.single_extra

    def cost(self, len_a: np.ndarray, len_b: np.ndarray) -> np.ndarray:
        return np.maximum(len_a, len_b)  # each side is embedded on its own

    def encode(self, data: PairTextDataset, i: int, j: int) -> dict:
        return {"ids_a": data.special.single(head_tail(data.ids[i], data.budget, data.head_share)),
                "ids_b": data.special.single(head_tail(data.ids[j], data.budget, data.head_share)),
                "key_a": data.keys[i], "key_b": data.keys[j]}

    def collate(self, tokenizer):
        return lambda items: pair_batch(items, tokenizer.pad_token_id)

    def model(self, text_model: nn.Module) -> nn.Module:
        return BiEncoder(text_model.backbone)  # the cross-encoder's head is not used

    def train_loss(self, family, cfg, model, batch, loss_fn):
        if family.loss_name(cfg) == "mnrl":
            return ranking_loss(model, batch, cfg.mnrl_scale)
        if GROUPS not in batch:
            return family.train_loss(cfg, model, batch, loss_fn)
        inputs, y = in_batch_pairs(batch)
        cos = model(**inputs).view(-1)
        # positives and negatives weigh half each (a batch has ~30x more negatives); a class it lacks adds nothing
        parts = [loss_fn(cos[side], y[side]) for side in (y > 0, y == 0) if side.any()]
        return sum(parts) / len(parts)

    def tta_views(self, family, cfg, batch):
        return [batch]  # cos(a, b) = cos(b, a): symmetric by construction

    def refine_predictions(self, family, cfg, model, data, preds, accelerator):
        """query_expansion=k: every scored pair's cosine again, after each text's embedding was averaged with its
        k nearest texts of the data (expand_neighbours). Only the whole pass knows them all, so this runs after it."""
        k = int(cfg.query_expansion)
        if not k or data.a is None:
            return preds
        with accelerator.autocast():
            emb = embed_each_text(model.cache, data, accelerator.device)
        emb = expand_neighbours(emb.float(), k)
        cos = cosine_of_sides(emb, torch.as_tensor(data.a, device=emb.device), torch.as_tensor(data.b, device=emb.device))
        return family.activate(cfg, cos).cpu().numpy().reshape(preds.shape)


PAIRINGS = {"cross": CrossPairs(), "bi": BiPairs()}  # encoder= -> what differs between the two encoders


# ---- the pair-text family -----------------------------------------------------------------------------------------
# Config keys of every pair-of-texts competition, on top of the text family's.
PAIR_DEFAULTS = {
    **TEXT_DEFAULTS,
    "encoder": "cross",          # cross: text1 [SEP] text2 -> logit | bi: cosine of two text embeddings
    "head_share": 0.5,           # head+tail truncation: share of a text's token budget kept from its start
    # the fixed scored pairs (OOF rows)
    "valid_positives": 10,       # per group, at most this many of its same-group pairs; as many negatives
    # training pairs, re-drawn every epoch from the fold's training items
    "pairs_per_epoch": 4000,     # pairs drawn per epoch (an epoch's length)
    "positive_share": 0.5,       # share of positives among them
    "hard_negatives": 5,         # BM25 top-k of other groups mined per training item (0: random negatives only)
    "hard_share": 0.5,           # share of negatives drawn from an item's hard negatives (the rest: random)
    "margin": 0.5,               # bi-encoder, loss=contrastive: negatives are pushed below this cosine
    "mnrl_scale": 20.0,          # bi-encoder, loss=mnrl: cosines are multiplied by this before the softmax
    "in_batch_pairs": False,     # bi-encoder: the loss over every pair of a batch's distinct items (labelled by
                                 # group; positives and negatives weigh half each), not only the sampled pairs
    "query_expansion": 0,        # bi-encoder: score pairs after each text's embedding took in its k nearest texts of
                                 # the file being scored (expand_neighbours); 0: off
}


class PairTextTask(TextTask):
    """"Do these two texts belong together?", learned from a corpus of texts grouped by a label.

    The unit the leaderboard scores is a pair, so the train frame is a fixed, seeded set of scored pairs built from
    the corpus (scored_pairs); folds are drawn over groups and a pair takes its groups' fold (-1 when they differ:
    no group, so no item, is on both sides of a split). Training does not walk those rows: each fold mines BM25
    hard negatives among its training items (fit_fold) and a PairSampler draws `pairs_per_epoch` fresh pairs every
    epoch from ctx.generator. encoder=cross (one transformer over both texts, a fair head+tail token budget,
    pair-swap TTA) or encoder=bi (one embedding per text, cosine; each distinct text embedded once at inference).

    A competition implements `corpus` (and `clean_text` if texts are normalised), names its columns, and sets
    `made_up_prefix` if its corpus has groups made up for labelled pairs (they get no scored pairs of their own)."""

    kind = "binary"              # one logit (cross) or one cosine (bi)
    item_column = "item"         # an item's unique name in the corpus
    group_column = "group"       # the label items are grouped by: same group = a positive pair
    text_column = "text"         # the corpus's text; a pair's two texts are <text_column>1 and <text_column>2
    made_up_prefix: str | None = None
    pool_file = "pairs_pool.csv"  # a fold's training items, their groups and BM25 hard negatives (fit_fold)
    config_defaults = PAIR_DEFAULTS

    @abstractmethod
    def corpus(self, cfg: DictConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """(items: item_column, group_column, text_column; labelled pairs in load_train's format or None). Called
        by every fold and loader: cache it; callers do not modify it."""

    def clean_text(self, cfg: DictConfig) -> Callable[[object], str]:
        """How a test file's text is prepared, the same way as the corpus's (an empty cell: '')."""
        return lambda text: "" if pd.isna(text) else str(text)

    @property
    def pair_columns(self) -> tuple[str, str]:
        return f"{self.text_column}1", f"{self.text_column}2"

    # ---- data ---------------------------------------------------------------------------------
    def load_train(self, cfg: DictConfig) -> pd.DataFrame:
        corpus, extra = self.corpus(cfg)
        item, group = self.item_column, self.group_column
        fold_of = group_folds(corpus[group], cfg.folds, cfg.fold_seed, self.made_up_prefix, noun=group)
        pairs = scored_pairs(corpus, fold_of, cfg.valid_positives, cfg.fold_seed, item, group, self.id_column,
                             self.target_column, self.made_up_prefix)
        if extra is not None:
            pairs = pd.concat([pairs, extra], ignore_index=True)
        text = dict(zip(corpus[item], corpus[self.text_column]))
        for side, column in zip("12", self.pair_columns):
            pairs[column] = pairs[f"{item}{side}"].map(text)
        pairs["fold1"], pairs["fold2"] = pairs[f"{group}1"].map(fold_of), pairs[f"{group}2"].map(fold_of)
        return pairs

    def folds(self, cfg: DictConfig, train: pd.DataFrame) -> np.ndarray:
        """A pair's fold is its groups' fold (drawn over groups in load_train); -1 when they differ."""
        return np.where(train["fold1"] == train["fold2"], train["fold1"], -1).astype(int)

    def load_test(self, cfg: DictConfig, path: Path) -> pd.DataFrame:
        df = read_frame(path, [self.id_column, *self.pair_columns], id_column=self.id_column)
        if Path(path).resolve() == (self.data_dir(cfg) / self.test_file).resolve():
            # the competition's own test file must list the sample submission's pairs (any other file: anything)
            check_sample_ids(df, path, self.sample_submission_path(cfg), self.id_column)
        clean = self.clean_text(cfg)
        for col in self.pair_columns:  # an empty cell is an empty text: scored, not an error
            df[col] = [clean(t) for t in df[col].tolist()]
        return df

    def texts(self, cfg: DictConfig, df: pd.DataFrame, sep: str, state=None) -> list:
        return list(zip(*(df[c] for c in self.pair_columns)))

    # ---- per fold: the training items and their hard negatives ----------------------------------
    def fit_fold(self, cfg: DictConfig, train: pd.DataFrame, fold_dir: Path) -> pd.DataFrame:
        """The training items are every item of the groups in the fold's training rows (the groups of other folds:
        none of them has an item in this fold's scored pairs); BM25 mines hard negatives among them only."""
        corpus, _ = self.corpus(cfg)
        item, group = self.item_column, self.group_column
        groups = set(train[f"{group}1"]) | set(train[f"{group}2"])
        pool = corpus[corpus[group].isin(groups)].reset_index(drop=True)
        hard = bm25_hard_negatives([word_tokens(t) for t in pool[self.text_column]], pool[group].to_numpy(),
                                   cfg.hard_negatives)
        pool["hard"] = [" ".join(pool[item].iloc[h].tolist()) for h in (row[row >= 0] for row in hard)]
        write_csv(pool[[item, group, "hard"]], Path(fold_dir) / self.pool_file)
        return self.load_fold(cfg, fold_dir)

    def load_fold(self, cfg: DictConfig, fold_dir: Path) -> pd.DataFrame | None:
        path = Path(fold_dir) / self.pool_file
        if not path.is_file():
            return None  # runs without it predict just the same (the pool is for training only)
        return read_csv(path, keep_default_na=False)

    # ---- network ------------------------------------------------------------------------------
    def check_config(self, cfg: DictConfig) -> None:
        super().check_config(cfg)
        self.pairing(cfg)
        self.in_batch(cfg)

    def pairing(self, cfg: DictConfig) -> PairEncoding:
        """The encoder `encoder=` names (CrossPairs or BiPairs): everything that differs between the two."""
        if cfg.encoder not in PAIRINGS:
            raise ConfigError(f"encoder must be one of {', '.join(PAIRINGS)}, got {cfg.encoder!r}")
        pairing = PAIRINGS[cfg.encoder]
        k = int(cfg.query_expansion)  # checked here, before any training: the expansion itself runs at predict time
        if k < 0:
            raise ConfigError(f"query_expansion must be 0 (off) or a number of neighbours, got {k}")
        if k and not pairing.expands:
            raise ConfigError("query_expansion needs encoder=bi (it averages the texts' embeddings); a cross-encoder "
                              "has none: set query_expansion=0")
        return pairing

    def dataset(self, cfg, df, mode, ctx):
        tokenizer = load_tokenizer(cfg.model, ctx.run_dir)
        pairing = self.pairing(cfg)
        if mode == "train":  # the fold's pool; items come from train_sampler as (i, j, label)
            corpus, _ = self.corpus(cfg)
            text = dict(zip(corpus[self.item_column], corpus[self.text_column]))
            texts = [text[name] for name in ctx.state[self.item_column]]
            groups = pd.factorize(ctx.state[self.group_column])[0] if self.in_batch(cfg) else None
            return PairTextDataset(tokenizer, texts, pairing, cfg.max_len, cfg.head_share, groups=groups)
        texts, a, b = distinct_texts(df, self.pair_columns)
        targets = df[TARGET].to_numpy(dtype=np.float32) if TARGET in df else None
        return PairTextDataset(tokenizer, texts, pairing, cfg.max_len, cfg.head_share, a, b, targets,
                               pairing.swaps(cfg, mode))

    def train_sampler(self, cfg, train, ctx):
        pool = ctx.state
        index = {name: i for i, name in enumerate(pool[self.item_column])}
        hard = np.full((len(pool), max(int(cfg.hard_negatives), 1)), -1, dtype=np.int64)
        for i, names in enumerate(pool["hard"]):
            row = [index[n] for n in str(names).split()]
            hard[i, :len(row)] = row
        return PairSampler(pool[self.group_column].to_numpy(), cfg.pairs_per_epoch, cfg.positive_share, hard,
                           cfg.hard_share, ctx.generator)

    def collate_fn(self, cfg, ctx):
        return self.pairing(cfg).collate(load_tokenizer(cfg.model, ctx.run_dir))

    def build_model(self, cfg, n_outputs, ctx, pretrained):
        return self.pairing(cfg).model(super().build_model(cfg, n_outputs, ctx, pretrained))

    def default_loss(self, cfg: DictConfig) -> str:
        return self.pairing(cfg).default_loss

    def loss_kind(self, cfg: DictConfig) -> str:
        return self.pairing(cfg).loss_kind

    def in_batch(self, cfg: DictConfig) -> bool:
        if cfg.in_batch_pairs and not self.pairing(cfg).in_batch_pairs:
            raise ConfigError("in_batch_pairs=true needs encoder=bi (a cross-encoder scores only the pairs it reads)")
        return bool(cfg.in_batch_pairs)

    def train_loss(self, cfg, model, batch, loss_fn):
        return self.pairing(cfg).train_loss(super(), cfg, model, batch, loss_fn)

    def tta_views(self, cfg, batch):
        return self.pairing(cfg).tta_views(super(), cfg, batch)

    def refine_predictions(self, cfg, model, dataset, preds, accelerator):
        return self.pairing(cfg).refine_predictions(super(), cfg, model, dataset, preds, accelerator)
