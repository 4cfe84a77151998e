"""A test set the size of DACON's, to time `submit` at real scale (README, Results: real scale).

python -m competitions.codesim.scale DEST [CORPUS] [SAMPLE_SUBMISSION]
writes DEST/test.csv (pair_id,code1,code2: one pair per id of the official sample_submission.csv, 179,700 rows,
half same-problem, the programs' source inline as DACON ships it), DEST/sample_submission.csv and DEST/code (a link to
the corpus's code/ folder), so `submit data_dir=DEST` runs as on DACON's files. The pairs are drawn from the corpus
with a fixed seed: every program recurs many times, which is what the bi-encoder's embed-once cache is for.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from common.io import read_csv, write_csv

CORPUS = Path("../shared/data/code_similarity/atcoder_python_grouped")
SAMPLE = Path("../shared/data/code_similarity/dacon_235900/sample_submission.csv")


def build(dest: Path, corpus: Path = CORPUS, sample: Path = SAMPLE, seed: int = 0) -> Path:
    """Write DEST/test.csv, DEST/sample_submission.csv and DEST/code; returns the test file's path."""
    ids = read_csv(sample)["pair_id"].to_numpy()
    files = sorted((corpus / "code").glob("*/*.py"))
    if not files:
        raise FileNotFoundError(f"{corpus / 'code'}: no problem folders with .py files")
    problem = np.array([f.parent.name for f in files])
    source = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    rng = np.random.default_rng(seed)
    a = rng.integers(len(files), size=len(ids))
    b = rng.integers(len(files), size=len(ids))
    same = rng.random(len(ids)) < 0.5
    for k in np.flatnonzero(same):  # another program of the same problem (every problem has at least 2)
        mates = np.flatnonzero((problem == problem[a[k]]) & (np.arange(len(files)) != a[k]))
        b[k] = rng.choice(mates)
    dest.mkdir(parents=True, exist_ok=True)
    test = pd.DataFrame({"pair_id": ids, "code1": [source[i] for i in a], "code2": [source[j] for j in b]})
    write_csv(test, dest / "test.csv")
    write_csv(read_csv(sample), dest / "sample_submission.csv")
    if not (dest / "code").exists():
        (dest / "code").symlink_to((corpus / "code").resolve())
    return dest / "test.csv"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m competitions.codesim.scale DEST [CORPUS] [SAMPLE_SUBMISSION]")
    paths = [Path(p) for p in sys.argv[1:4]]
    print(build(*paths))
