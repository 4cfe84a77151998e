"""DACON 235900 code similarity: do two Python programs solve the same problem? (accuracy on 0/1 labels)

Raw layout: code/problemNNN/problemNNN_K.py (solutions grouped by problem), sample_train.csv (code1,code2,similar;
optional), test.csv (pair_id,code1,code2, source inline), sample_submission.csv (pair_id,similar).

What is its own: reading code/ (and sample_train.csv) into programs grouped by problem, and the normalisation of
Python source (normalise.py). Scored pairs, folds over problems, BM25 hard negatives, the per-epoch sampler and
both encoders (cross, bi) are the pair-text family's (PairTextTask, common/pairs.py). The cut is tuned on the
OOF (threshold.json): accuracy counts labels.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from common.errors import DataError
from common.pairs import PAIR_DEFAULTS, PairTextTask
from common.task import read_frame
from competitions.codesim.normalise import Normalizer, decode_source

EXTRA = "sample_train"  # problem-name prefix of sample_train.csv texts that match no file in code/


class CodesimTask(PairTextTask):
    name = "codesim"
    metric = "accuracy"
    id_column = "pair_id"
    target_column = "similar"
    item_column, group_column, text_column = "file", "problem", "code"  # test pairs: code1, code2
    made_up_prefix = EXTRA
    config_path = Path(__file__).with_name("config.yaml")
    config_defaults = {
        **PAIR_DEFAULTS,
        # normalisation (competitions/codesim/README.md; normalise.py)
        "strip_comments": True,      # comments removed with Python's tokenizer (a '#' inside a string stays)
        "strip_docstrings": True,    # statements that are only a string literal removed
        "drop_blank_lines": True,
        "strip_trailing_space": True,
        "dedupe": True,              # identical files (after normalisation) within a problem kept once
        "sample_train": "sample_train.csv",  # DACON's labelled pairs under data_dir, added when present; null: off
    }

    def corpus(self, cfg: DictConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        return load_corpus(cfg, self.data_dir(cfg))

    def clean_text(self, cfg: DictConfig) -> Normalizer:
        """A test file's programs are normalised as code/'s are."""
        return Normalizer(comments=cfg.strip_comments, docstrings=cfg.strip_docstrings,
                          blank_lines=cfg.drop_blank_lines, trailing_space=cfg.strip_trailing_space)


# ---- reading code/ and sample_train.csv ---------------------------------------------------------------------------
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
