"""Pair tasks: "do these two items belong together?" when the training data is items grouped by a label
(programs by problem, photos by identity, questions by duplicate cluster).

- `bm25_hard_negatives`: for every item, the k items of OTHER groups that BM25 (rank-bm25's Okapi scores) ranks
  highest with the item as the query: the negatives that look most alike.
- `PairSampler`: a per-epoch draw of (i, j, label) pairs, a share of them positives (same group), the negatives
  part random and part hard. It draws from a torch.Generator that the trainer re-seeds every epoch, so a resumed run
  sees the same pairs. A dataset's __getitem__ takes the tuple.
- `BiEncoder`: sentence-transformers style: one shared encoder, mean pooling, cosine similarity of the two
  embeddings. At inference it embeds every distinct item once (a cache keyed by the item's content hash), so
  a test of N pairs over M distinct items costs M forward passes, not 2N.
- `pair_batch`: the collation for BiEncoder: the distinct items of a batch, padded once, and two index vectors.
- `SpecialTokens`, `fair_budget`, `head_tail`: a cross-encoder's pair input from pre-tokenized sides, the token
  budget split fairly between the two texts, each cut to its head and tail (tokenize each distinct text once).
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import torch
from rank_bm25 import BM25Okapi
from scipy import sparse
from torch import nn

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")


def word_tokens(text: str) -> list[str]:
    """BM25 terms of a text: identifiers, keywords and numbers (punctuation is noise for code and prose alike)."""
    return _WORD.findall(text)


def text_key(text: str) -> int:
    """A stable 63-bit content hash: the key of an item in BiEncoder's embedding cache."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little") >> 1


# ---- BM25 hard negatives ------------------------------------------------------------------------------------------
def bm25_index(docs: Sequence[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
    """rank-bm25's Okapi index and its scores as a sparse term x doc matrix W, so that a query's scores are
    counts(query) @ W, exactly BM25Okapi.get_scores (which sums over the query's tokens, repeats included)."""
    docs = [list(d) if len(d) else ["<empty>"] for d in docs]  # rank-bm25 divides by the mean length
    bm25 = BM25Okapi(docs, k1=k1, b=b, epsilon=epsilon)
    vocab = {w: i for i, w in enumerate(bm25.idf)}
    rows, cols, vals = [], [], []
    for d, freqs in enumerate(bm25.doc_freqs):
        norm = bm25.k1 * (1 - bm25.b + bm25.b * bm25.doc_len[d] / bm25.avgdl)
        for w, tf in freqs.items():
            rows.append(vocab[w])
            cols.append(d)
            vals.append(bm25.idf[w] * tf * (bm25.k1 + 1) / (tf + norm))
    weights = sparse.csr_matrix((vals, (rows, cols)), shape=(len(vocab), len(docs)))
    return bm25, vocab, weights


def bm25_scores(queries: Sequence[list[str]], vocab: dict, weights) -> np.ndarray:
    """Dense (n_queries, n_docs) BM25 scores of each query against the index."""
    rows, cols = [], []
    for q, tokens in enumerate(queries):
        for w in tokens:
            if w in vocab:
                rows.append(q)
                cols.append(vocab[w])
    counts = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(queries), len(vocab)))
    return np.asarray((counts @ weights).todense())


def bm25_hard_negatives(docs: Sequence[list[str]], groups: Sequence, k: int, chunk: int = 512,
                        **bm25_args) -> np.ndarray:
    """(n, k) positions of the k highest-scoring documents of other groups for each document used as the query,
    best first; -1 where fewer than k exist. Chunked sparse products: practical for tens of thousands of files."""
    n = len(docs)
    groups = np.asarray(groups)
    out = np.full((n, max(k, 0)), -1, dtype=np.int64)
    if k <= 0 or n == 0:
        return out
    _, vocab, weights = bm25_index(docs, **bm25_args)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        # rounded: rank-bm25 and a sparse product sum in different orders; equal scores must stay equal (ties)
        scores = np.round(bm25_scores(docs[start:stop], vocab, weights), 9)
        scores[groups[start:stop, None] == groups[None, :]] = -np.inf  # same group: not a negative (self included)
        kk = min(k, n)
        kth = -np.partition(-scores, kk - 1, axis=1)[:, kk - 1]  # the k-th best score of each row
        for r in range(stop - start):
            # everything tied with the k-th best, best first, ties broken by position (a stable, exact top-k)
            cand = np.flatnonzero((scores[r] >= kth[r]) & np.isfinite(scores[r]))
            cand = cand[np.lexsort((cand, -scores[r, cand]))][:kk]
            out[start + r, :len(cand)] = cand
    return out


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
    """Collate items {"ids_a", "ids_b" (token id lists), "key_a", "key_b" (content keys), "index", ["target"]}
    into BiEncoder's inputs: the batch's distinct items once (input_ids, attention_mask, keys) and, per pair, the
    positions a and b of its two sides among them."""
    keys, rows, pos = [], [], {}
    a, b = [], []
    for it in items:
        for side, out in (("a", a), ("b", b)):
            key = it[f"key_{side}"]
            if key not in pos:
                pos[key] = len(keys)
                keys.append(key)
                rows.append(it[f"ids_{side}"])
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
    return batch


class BiEncoder(nn.Module):
    """Siamese encoder: backbone -> mean pooling over the mask -> L2-normalised embedding; the output is the
    cosine similarity of the two sides, shape (batch, 1). In eval mode, embeddings are cached by content key;
    the cache is emptied whenever the mode changes or weights are loaded, so it never outlives its weights."""

    def __init__(self, backbone: nn.Module, chunk: int = 64):
        super().__init__()
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # unused; unused parameters break DDP
        self.backbone, self.chunk = backbone, chunk
        self.cache: dict[int, torch.Tensor] = {}
        self.register_load_state_dict_post_hook(lambda module, keys: module.cache.clear())

    def train(self, mode: bool = True):
        self.cache = {}
        return super().train(mode)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return nn.functional.normalize(pooled.float(), dim=-1)

    def forward(self, input_ids, attention_mask, keys, a, b):
        if self.training:
            emb = self.embed(input_ids, attention_mask)
        else:
            new = [r for r, k in enumerate(keys.tolist()) if k not in self.cache]
            if new:
                rows = torch.tensor(new, device=input_ids.device)
                ids, mask = input_ids[rows], attention_mask[rows]
                width = int(mask.sum(1).max().clamp(min=1))  # the new items may be shorter than the batch
                for s in range(0, len(new), self.chunk):
                    out = self.embed(ids[s:s + self.chunk, :width], mask[s:s + self.chunk, :width])
                    for r, e in zip(new[s:s + self.chunk], out):
                        self.cache[int(keys[r])] = e.detach()
            emb = torch.stack([self.cache[int(k)] for k in keys.tolist()])
        return (emb[a] * emb[b]).sum(-1, keepdim=True)
