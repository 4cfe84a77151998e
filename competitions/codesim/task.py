"""DACON 235900 code similarity: do two Python programs solve the same problem? (accuracy on 0/1 labels)

Raw layout: code/problemNNN/problemNNN_K.py (solutions grouped by problem), sample_train.csv (code1,code2,similar;
optional), test.csv (pair_id,code1,code2, source inline), sample_submission.csv (pair_id,similar).

The unit the leaderboard scores is a pair, so the train frame is a fixed, seeded set of scored pairs built from
code/ (every positive of a problem up to `valid_positives`, as many negatives with a problem of the same fold);
folds are drawn over problems and a pair takes its problems' fold (-1 when they differ: no problem, so no file,
is on both sides of a split). Training does not walk those rows: each fold mines BM25 hard negatives among its
training files (fit_fold) and a sampler draws `pairs_per_epoch` fresh pairs every epoch from ctx.generator.

Two models: encoder=cross (code1 [SEP] code2 through one transformer; a fair head+tail token budget; pair-swap
TTA) and encoder=bi (sentence-transformers style: one embedding per program, cosine similarity; each distinct
program is embedded once at inference). Both are scored with a cut tuned on the OOF (threshold.json).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from common.errors import ConfigError, DataError
from common.folds import FoldSpec, make_folds
from common.io import read_csv, write_csv
from common.pairs import (
    BiEncoder,
    PairSampler,
    SpecialTokens,
    bm25_hard_negatives,
    fair_budget,
    head_tail,
    pair_batch,
    text_key,
    word_tokens,
)
from common.pysource import Normalizer, decode_source
from common.task import TARGET, read_frame
from common.text import (
    SWAP,
    TEXT_DEFAULTS,
    PaddingCollator,
    TextTask,
    create_text_model,
    load_tokenizer,
)

TEST_COLUMNS = ["pair_id", "code1", "code2"]
POOL_FILE = "pairs_pool.csv"  # a fold's training files, their problems and BM25 hard negatives (fit_fold)
EXTRA = "sample_train"        # problem-name prefix of sample_train.csv texts that match no file in code/


class CodesimTask(TextTask):
    name = "codesim"
    kind = "binary"          # one logit (cross) or one cosine (bi); accuracy -> the cut is tuned on the OOF
    metric = "accuracy"
    id_column = "pair_id"
    target_column = "similar"
    config_path = Path(__file__).with_name("config.yaml")
    config_defaults = {
        **TEXT_DEFAULTS,
        "encoder": "cross",          # cross: code1 [SEP] code2 -> logit | bi: cosine of two program embeddings
        "head_share": 0.5,           # head+tail truncation: share of a program's token budget kept from its start
        # normalisation (competitions/codesim/README.md; common/pysource.py)
        "strip_comments": True,      # comments removed with Python's tokenizer (a '#' inside a string stays)
        "strip_docstrings": True,    # statements that are only a string literal removed
        "drop_blank_lines": True,
        "strip_trailing_space": True,
        "dedupe": True,              # identical files (after normalisation) within a problem kept once
        # the fixed scored pairs (OOF rows)
        "valid_positives": 10,       # per problem, at most this many of its same-problem pairs; as many negatives
        "sample_train": "sample_train.csv",  # DACON's labelled pairs under data_dir, added when present; null: off
        # training pairs, re-drawn every epoch from the fold's training files
        "pairs_per_epoch": 4000,     # pairs drawn per epoch (an epoch's length)
        "positive_share": 0.5,       # share of positives among them
        "hard_negatives": 5,         # BM25 top-k of other problems mined per training file (0: random negatives only)
        "hard_share": 0.5,           # share of negatives drawn from a file's hard negatives (the rest: random)
        "margin": 0.5,               # bi-encoder, loss=contrastive: negatives are pushed below this cosine
    }

    # ---- data ---------------------------------------------------------------------------------
    def load_train(self, cfg: DictConfig) -> pd.DataFrame:
        corpus, extra = load_corpus(cfg, self.data_dir(cfg))
        fold_of = problem_folds(corpus, cfg.folds, cfg.fold_seed)
        pairs = scored_pairs(corpus, fold_of, cfg.valid_positives, cfg.fold_seed)
        if extra is not None:
            pairs = pd.concat([pairs, extra], ignore_index=True)
        code = dict(zip(corpus["file"], corpus["code"]))
        pairs["code1"], pairs["code2"] = pairs["file1"].map(code), pairs["file2"].map(code)
        pairs["fold1"], pairs["fold2"] = pairs["problem1"].map(fold_of), pairs["problem2"].map(fold_of)
        return pairs

    def folds(self, cfg: DictConfig, train: pd.DataFrame) -> np.ndarray:
        """A pair's fold is its problems' fold (drawn over problems in load_train); -1 when they differ."""
        return np.where(train["fold1"] == train["fold2"], train["fold1"], -1).astype(int)

    def load_test(self, cfg: DictConfig, path: Path) -> pd.DataFrame:
        df = read_frame(path, TEST_COLUMNS, id_column=self.id_column)
        if Path(path).resolve() == (self.data_dir(cfg) / self.test_file).resolve():
            # the competition's own test file must list the sample submission's pairs (any other file: anything)
            check_sample_ids(df, path, self.sample_submission_path(cfg), self.id_column)
        normalise = normalizer(cfg)
        for col in ("code1", "code2"):  # an empty cell is an empty program: scored, not an error
            df[col] = [normalise(t) for t in df[col].tolist()]
        return df

    def texts(self, cfg: DictConfig, df: pd.DataFrame, sep: str) -> list:
        return list(zip(df["code1"], df["code2"]))

    # ---- per fold: the training files and their hard negatives ----------------------------------
    def fit_fold(self, cfg: DictConfig, train: pd.DataFrame, fold_dir: Path) -> pd.DataFrame:
        """The training files are every file of the problems in the fold's training rows (the problems of other
        folds: none of them has a file in this fold's scored pairs); BM25 mines hard negatives among them only."""
        corpus, _ = load_corpus(cfg, self.data_dir(cfg))
        problems = set(train["problem1"]) | set(train["problem2"])
        pool = corpus[corpus["problem"].isin(problems)].reset_index(drop=True)
        hard = bm25_hard_negatives([word_tokens(c) for c in pool["code"]], pool["problem"].to_numpy(),
                                   cfg.hard_negatives)
        pool["hard"] = [" ".join(pool["file"].iloc[h].tolist()) for h in (row[row >= 0] for row in hard)]
        write_csv(pool[["file", "problem", "hard"]], Path(fold_dir) / POOL_FILE)
        return self.load_fold(cfg, fold_dir)

    def load_fold(self, cfg: DictConfig, fold_dir: Path) -> pd.DataFrame | None:
        path = Path(fold_dir) / POOL_FILE
        if not path.is_file():
            return None  # runs without it predict just the same (the pool is for training only)
        return read_csv(path, keep_default_na=False)

    # ---- network ------------------------------------------------------------------------------
    def encoder(self, cfg: DictConfig) -> str:
        if cfg.encoder not in ("cross", "bi"):
            raise ConfigError(f"encoder must be cross or bi, got {cfg.encoder!r}")
        return cfg.encoder

    def dataset(self, cfg, df, mode, ctx):
        tokenizer = load_tokenizer(cfg.model, ctx.run_dir)
        if mode == "train":
            pool = ctx.state
            corpus, _ = load_corpus(cfg, self.data_dir(cfg))
            code = dict(zip(corpus["file"], corpus["code"]))
            programs = [code[f] for f in pool["file"]]
            return CodePairDataset(cfg, self.encoder(cfg), tokenizer, programs)
        programs, a, b = distinct_programs(df)
        targets = df[TARGET].to_numpy(dtype=np.float32) if TARGET in df else None
        swap = bool(cfg.tta) and mode == "test" and self.encoder(cfg) == "cross"  # the engine scores OOF without TTA
        return CodePairDataset(cfg, self.encoder(cfg), tokenizer, programs, a, b, targets, swap)

    def train_sampler(self, cfg, train, ctx):
        pool = ctx.state
        index = {f: i for i, f in enumerate(pool["file"])}
        hard = np.full((len(pool), max(int(cfg.hard_negatives), 1)), -1, dtype=np.int64)
        for i, names in enumerate(pool["hard"]):
            row = [index[n] for n in str(names).split()]
            hard[i, :len(row)] = row
        return PairSampler(pool["problem"].to_numpy(), cfg.pairs_per_epoch, cfg.positive_share, hard,
                           cfg.hard_share, ctx.generator)

    def collate_fn(self, cfg, ctx):
        tokenizer = load_tokenizer(cfg.model, ctx.run_dir)
        if self.encoder(cfg) == "bi":
            return lambda items: pair_batch(items, tokenizer.pad_token_id)
        return PaddingCollator(tokenizer)

    def build_model(self, cfg, n_outputs, ctx, pretrained):
        model = create_text_model(cfg.model, n_outputs, ctx.run_dir, pretrained, cfg.pooling, cfg.head_dropout,
                                  cfg.backbone_dropout)
        if self.encoder(cfg) == "bi":
            return BiEncoder(model.backbone)  # the cross-encoder's head is not used
        return model

    def loss_name(self, cfg: DictConfig) -> str:
        if self.encoder(cfg) == "cross":
            return super().loss_name(cfg)
        name = cfg.loss or "cosine"
        if name not in ("cosine", "contrastive"):
            raise ConfigError(f"encoder=bi takes loss=cosine (sentence-transformers' CosineSimilarityLoss: MSE of "
                              f"the cosine to the 0/1 label) or loss=contrastive, got {name!r}")
        return name

    def loss_fn(self, cfg, train, ctx):
        name = self.loss_name(cfg)
        if name == "cosine":
            return lambda cos, y: nn.functional.mse_loss(cos.view(-1).float(), y.float())
        if name == "contrastive":  # sentence-transformers' ContrastiveLoss on the cosine distance
            def contrastive(cos, y):
                d, y = 1 - cos.view(-1).float(), y.float()
                return 0.5 * (y * d.pow(2) + (1 - y) * nn.functional.relu(cfg.margin - d).pow(2)).mean()
            return contrastive
        return super().loss_fn(cfg, train, ctx)

    def activate(self, cfg, logits):
        if self.encoder(cfg) == "bi":  # the cosine, trained towards the 0/1 label: 0.5 is its natural cut
            return logits.float().view(-1, 1).clamp(0, 1)
        return super().activate(cfg, logits)

    def tta_views(self, cfg, batch):
        if self.encoder(cfg) == "bi":
            return [batch]  # cos(a, b) = cos(b, a): symmetric by construction
        return super().tta_views(cfg, batch)


# ---- reading code/ and sample_train.csv ---------------------------------------------------------------------------
def normalizer(cfg: DictConfig) -> Normalizer:
    return Normalizer(comments=cfg.strip_comments, docstrings=cfg.strip_docstrings,
                      blank_lines=cfg.drop_blank_lines, trailing_space=cfg.strip_trailing_space)


def load_corpus(cfg: DictConfig, data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(programs, sample_train pairs or None); cached, so callers must not modify them."""
    return _load_corpus(str(data_dir), cfg.strip_comments, cfg.strip_docstrings, cfg.drop_blank_lines,
                        cfg.strip_trailing_space, cfg.dedupe, cfg.sample_train)


@lru_cache(maxsize=4)
def _load_corpus(data_dir: str, comments: bool, docstrings: bool, blank_lines: bool, trailing_space: bool,
                 dedupe: bool, sample_train: str | None):
    """One row per program: file (its name, problemNNN_K.py), problem, code (normalised). sample_train.csv's
    texts that match no file join as extra programs; its pairs are returned beside them."""
    code_dir = Path(data_dir) / "code"
    if not code_dir.is_dir():
        raise DataError(f"{code_dir}: folder not found (expected code/problemNNN/problemNNN_K.py)")
    normalise = Normalizer(comments, docstrings, blank_lines, trailing_space)
    rows, undecodable, duplicates = [], 0, 0
    for problem_dir in sorted(p for p in code_dir.iterdir() if p.is_dir()):
        seen = set()
        for path in sorted(problem_dir.glob("*.py"), key=_natural):
            text, clean = decode_source(path.read_bytes())
            undecodable += not clean
            code = normalise(text)
            if dedupe and code in seen:
                duplicates += 1
                continue
            seen.add(code)
            rows.append({"file": path.name, "problem": problem_dir.name, "code": code})
    corpus = pd.DataFrame(rows, columns=["file", "problem", "code"])
    if corpus["problem"].nunique() < 2:
        raise DataError(f"{code_dir}: {corpus['problem'].nunique()} problem folder(s) with .py files; pairs need "
                        f"at least 2 (code/problemNNN/problemNNN_K.py)")
    dup = corpus["file"].duplicated()
    if dup.any():
        raise DataError(f"{code_dir}: file name {corpus['file'][dup].iloc[0]!r} appears in two problem folders")
    extra_pairs = None
    if sample_train and (Path(data_dir) / sample_train).is_file():
        corpus, extra_pairs = _add_sample_train(corpus, Path(data_dir) / sample_train, normalise)
    print(f"codesim: {len(corpus)} programs in {corpus['problem'].nunique()} problems from {code_dir}"
          f"{f' and {sample_train}' if extra_pairs is not None else ''}; {duplicates} duplicate(s) dropped; "
          f"{normalise.fallbacks} did not tokenize (plain text rule); {undecodable} not valid UTF-8")
    return corpus, extra_pairs


def _natural(path: Path):
    stem = path.stem.rsplit("_", 1)
    return (stem[0], int(stem[1])) if len(stem) == 2 and stem[1].isdigit() else (path.stem, 0)


def _add_sample_train(corpus: pd.DataFrame, path: Path, normalise: Normalizer):
    """DACON's labelled pairs. A text found in code/ (after normalisation) is that file; a new text becomes a
    program of its own, in its partner's problem when the pair is similar and that is known, else in a problem of
    its own (similar pairs of two new texts share one)."""
    df = read_frame(path, ["code1", "code2", "similar"])
    bad = ~pd.to_numeric(df["similar"], errors="coerce").isin([0, 1])
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise DataError(f"{path}: column 'similar' must be 0 or 1; data row {row + 1} has {df['similar'].iloc[row]!r}")
    known = {c: (f, p) for f, p, c in zip(corpus["file"], corpus["problem"], corpus["code"])}
    new_rows, pairs = [], []
    for r, (c1, c2, y) in enumerate(zip(df["code1"], df["code2"], df["similar"].astype(int)), start=1):
        c1, c2 = normalise(c1), normalise(c2)
        sides = [known.get(c1), known.get(c2)]
        for s, c in enumerate((c1, c2)):
            if sides[s] is None:
                other = sides[1 - s]
                problem = other[1] if (y and other) else f"{EXTRA}_r{r}" + ("" if y else "ab"[s])
                sides[s] = known[c] = (f"{path.name}:{r}:code{s + 1}", problem)
                new_rows.append({"file": sides[s][0], "problem": problem, "code": c})
        (f1, p1), (f2, p2) = sides
        pairs.append({"pair_id": f"{path.name}:{r}", "file1": f1, "file2": f2, "problem1": p1, "problem2": p2,
                      "similar": int(y)})
    corpus = pd.concat([corpus, pd.DataFrame(new_rows, columns=corpus.columns)], ignore_index=True)
    return corpus, pd.DataFrame(pairs)


# ---- folds by problem and the fixed scored pairs ------------------------------------------------------------------
def problem_folds(corpus: pd.DataFrame, n_folds: int, seed: int) -> dict:
    """problem -> fold. The problems of code/ are split K-fold (shuffled with fold_seed, sizes within one);
    sample_train's own problems take a fold from a hash of their name (they come and go with that file)."""
    problems = pd.Series(corpus["problem"].unique())
    real = problems[~problems.str.startswith(EXTRA)].reset_index(drop=True)
    if len(real) < n_folds:
        raise DataError(f"{len(real)} problems cannot fill {n_folds} folds (folds are drawn over problems)")
    folds = make_folds(pd.DataFrame({"problem": real}), FoldSpec(), n_folds, seed)
    fold_of = dict(zip(real, folds.tolist()))
    for p in problems[problems.str.startswith(EXTRA)]:
        digest = hashlib.blake2b(f"{seed}:{p}".encode(), digest_size=8).digest()
        fold_of[p] = int.from_bytes(digest, "little") % n_folds
    return fold_of


def scored_pairs(corpus: pd.DataFrame, fold_of: dict, valid_positives: int, seed: int) -> pd.DataFrame:
    """Balanced, seeded pairs: per problem, its same-problem pairs (at most valid_positives, drawn at random) and
    as many negatives, each a file of the problem with a file of another problem in the same fold. Sides are
    put in random order."""
    rng = np.random.default_rng(seed)
    real = corpus[~corpus["problem"].str.startswith(EXTRA)]
    by_problem = {p: g["file"].tolist() for p, g in real.groupby("problem", sort=True)}
    by_fold: dict[int, list[str]] = {}
    for p in by_problem:
        by_fold.setdefault(fold_of[p], []).append(p)
    problem_of = dict(zip(real["file"], real["problem"]))
    rows = []
    for p, files in by_problem.items():
        positives = list(combinations(files, 2))
        if len(positives) > valid_positives:
            positives = [positives[i] for i in sorted(rng.choice(len(positives), valid_positives, replace=False))]
        others = [q for q in by_fold[fold_of[p]] if q != p] or [q for q in by_problem if q != p]
        negatives = []
        for _ in positives:
            q = others[rng.integers(len(others))]
            negatives.append((files[rng.integers(len(files))], by_problem[q][rng.integers(len(by_problem[q]))]))
        for (f1, f2), y in [(pair, 1) for pair in positives] + [(pair, 0) for pair in negatives]:
            if rng.random() < 0.5:
                f1, f2 = f2, f1
            rows.append({"pair_id": f"{f1}|{f2}", "file1": f1, "file2": f2, "problem1": problem_of[f1],
                         "problem2": problem_of[f2], "similar": y})
    pairs = pd.DataFrame(rows)
    return pairs.drop_duplicates("pair_id").reset_index(drop=True)


def check_sample_ids(df: pd.DataFrame, path: Path, sample_path: Path, id_column: str) -> None:
    """The test file and the sample submission must list the same pair ids in the same order."""
    if not sample_path.is_file():
        return
    sample = read_frame(sample_path, [id_column])
    ids, expected = df[id_column].astype(str).to_numpy(), sample[id_column].astype(str).to_numpy()
    n = min(len(ids), len(expected))
    differs = np.flatnonzero(ids[:n] != expected[:n])
    if len(differs):
        row = int(differs[0])
        raise DataError(f"{path}: data row {row + 1} has {id_column} {ids[row]!r} where {sample_path} has "
                        f"{expected[row]!r} (the test file and the sample submission must list the same pairs)")
    if len(ids) != len(expected):
        longer, shorter = (path, sample_path) if len(ids) > len(expected) else (sample_path, path)
        raise DataError(f"{longer}: data row {n + 1} onwards ({abs(len(ids) - len(expected))} rows) are not in "
                        f"{shorter}")


# ---- pairs -> model inputs ----------------------------------------------------------------------------------------
def distinct_programs(df: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each distinct program once, and the positions of every pair's two sides among them."""
    codes = pd.concat([df["code1"], df["code2"]], ignore_index=True).fillna("").astype(str)
    position, programs = pd.factorize(codes)
    return list(programs), position[:len(df)], position[len(df):]


class CodePairDataset(torch.utils.data.Dataset):
    """Pairs of programs for either encoder. Each distinct program is tokenized once (in one batched call).

    Scoring (valid/test): item k is the pair at order[k], longest first, so batches hold similar lengths (less
    padding); its 'index' is the pair's row, which is where the engine puts the prediction. Training: item
    (i, j, label) from PairSampler, i and j positions among the programs.
    cross: input_ids of [CLS] a [SEP] b [SEP], the budget max_len split fairly, each side cut to head + tail
    (and the swapped pair under swap_ keys for TTA). bi: each side's ids (max_len each) and content key."""

    def __init__(self, cfg, encoder: str, tokenizer, programs: list[str], a=None, b=None, targets=None,
                 swap: bool = False):
        self.encoder, self.max_len, self.head_share, self.swap = encoder, int(cfg.max_len), cfg.head_share, swap
        self.special = SpecialTokens(tokenizer)
        extra = self.special.pair_extra if encoder == "cross" else self.special.single_extra
        self.budget = self.max_len - extra
        if self.budget < 2:
            raise ConfigError(f"max_len={self.max_len} leaves no room for code after {extra} special tokens")
        self.ids = tokenize_all(tokenizer, programs)
        self.keys = [text_key(p) for p in programs]
        self.a, self.b, self.targets = a, b, targets
        if a is not None:
            cost = np.array([len(i) for i in self.ids])
            self.order = np.argsort(-(cost[a] + cost[b]) if encoder == "cross" else -np.maximum(cost[a], cost[b]),
                                    kind="stable")

    def __len__(self):
        return 0 if self.a is None else len(self.a)

    def __getitem__(self, k):
        if isinstance(k, tuple):  # training: (i, j, label) from the sampler
            i, j, label = k
            item = self.encode(i, j)
            item.update(index=0, target=float(label))
            return item
        row = int(self.order[k])
        item = self.encode(int(self.a[row]), int(self.b[row]))
        if self.swap:
            item.update({f"{SWAP}{key}": v for key, v in self.encode(int(self.b[row]), int(self.a[row])).items()})
        item["index"] = row
        if self.targets is not None:
            item["target"] = float(self.targets[row])
        return item

    def encode(self, i: int, j: int) -> dict:
        if self.encoder == "bi":
            return {"ids_a": self.special.single(head_tail(self.ids[i], self.budget, self.head_share)),
                    "ids_b": self.special.single(head_tail(self.ids[j], self.budget, self.head_share)),
                    "key_a": self.keys[i], "key_b": self.keys[j]}
        n_a, n_b = fair_budget(len(self.ids[i]), len(self.ids[j]), self.budget)
        return self.special.pair(head_tail(self.ids[i], n_a, self.head_share),
                                 head_tail(self.ids[j], n_b, self.head_share))


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
