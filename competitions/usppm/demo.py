"""`make demo` for USPPPM: a small synthetic dataset in the raw layout, then train -> infer -> submit on the CPU.

The phrases are made from a small patent-like vocabulary; a target's score follows how many of the anchor's
words it keeps, so there is a real signal to learn and the CV score means something.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


WORDS = ("acid battery brake cable circuit coating engine fiber filter gear heater laser lens magnet membrane "
         "motor nozzle pump resin rotor sensor shaft spring valve wheel polymer signal carbon display antenna").split()
FILLERS = "improved assembly method device system layer unit apparatus process element".split()
CONTEXTS = ["A47", "B60", "C08", "F16", "G01", "H01", "H04"]
SCORES = [0.0, 0.25, 0.5, 0.75, 1.0]


def make_dataset(dest: Path, n_anchors: int = 60, targets_per_anchor: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(n_anchors):
        anchor_words = list(rng.choice(WORDS, size=3, replace=False))
        context = CONTEXTS[a % len(CONTEXTS)]
        for _ in range(targets_per_anchor):
            score = float(rng.choice(SCORES))
            keep = int(round(score * 3))  # 0..3 anchor words survive
            others = [w for w in WORDS if w not in anchor_words]
            words = anchor_words[:keep] + list(rng.choice(others, size=3 - keep, replace=False))
            target = " ".join(list(rng.permutation(words)) + [str(rng.choice(FILLERS))])
            rows.append({"anchor": " ".join(anchor_words), "target": target, "context": context, "score": score})
    df = pd.DataFrame(rows)
    df.insert(0, "id", [f"{i:016x}" for i in rng.integers(0, 2**62, len(df))])
    test_mask = df["anchor"].isin(df["anchor"].unique()[: n_anchors // 6])
    dest.mkdir(parents=True, exist_ok=True)
    df[~test_mask].to_csv(dest / "train.csv", index=False)
    df[test_mask].drop(columns="score").to_csv(dest / "test.csv", index=False)
    df.loc[test_mask, ["id"]].assign(score=0).to_csv(dest / "sample_submission.csv", index=False)
    return dest


# Quick CPU settings: `python -m competitions usppm demo key=value ...` overrides them.
SETTINGS = {"epochs": 2, "folds": 3, "batch_size": 16, "lr": 1e-4, "head_lr": 1e-3, "max_len": 32}
