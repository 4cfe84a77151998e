"""`make demo` for DACON MVTec anomaly: a small synthetic image set in the DACON layout (train_df.csv, test_df.csv,
sample_submission.csv, train/, test/), then train -> infer -> submit on the CPU in about a minute.

Three drawn "products" at 64 px, each with a good state and rare defect states, imbalanced like the real data:
a disc (scratch, hole), a striped tile (color), and a transistor whose defect is being misplaced, which is why the
config never turns or mirrors transistor images (augment_exclude)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd


SIZE = 64
# label -> (class, state, train images); test gets half as many
LABELS = {"disc-good": 40, "disc-scratch": 10, "disc-hole": 8, "tile-good": 30, "tile-color": 8,
          "transistor-good": 24, "transistor-misplaced": 8}


def draw(label: str, rng: np.random.Generator) -> np.ndarray:
    """One BGR image of `label`, with random jitter so no two are alike."""
    image = np.full((SIZE, SIZE, 3), int(rng.integers(20, 50)), np.uint8)
    c = SIZE // 2 + rng.integers(-3, 4, size=2)
    kind, state = label.split("-")
    if kind == "disc":
        cv2.circle(image, tuple(int(v) for v in c), 20, (170, 170, 170), -1)
        if state == "scratch":
            a, b = rng.integers(18, 46, size=2), rng.integers(18, 46, size=2)
            cv2.line(image, tuple(int(v) for v in a), tuple(int(v) for v in b), (250, 250, 250), 2)
        elif state == "hole":
            cv2.circle(image, tuple(int(v) for v in c + rng.integers(-8, 9, size=2)), 4, (0, 0, 0), -1)
    elif kind == "tile":
        colour = (40, 90, 200) if state == "color" else (140, 120, 90)
        for x in range(int(rng.integers(0, 8)), SIZE, 8):
            cv2.line(image, (x, 0), (x, SIZE), colour, 3)
    else:  # transistor: a body with three legs; misplaced = shifted to a side and turned
        body = np.zeros_like(image)
        cv2.rectangle(body, (22, 14), (42, 34), (60, 60, 60), -1)
        for x in (26, 32, 38):
            cv2.line(body, (x, 34), (x, 54), (200, 200, 200), 2)
        if state == "misplaced":
            angle, shift = float(rng.choice([90, 180, 270])), rng.integers(-10, 11, size=2)
        else:
            angle, shift = float(rng.normal(0, 3)), rng.integers(-2, 3, size=2)
        m = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), angle, 1.0)
        m[:, 2] += shift
        body = cv2.warpAffine(body, m, (SIZE, SIZE))
        image = np.where(body.any(-1, keepdims=True), body, image)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def make_dataset(dest: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        (dest / split).mkdir(parents=True, exist_ok=True)
    train = [label for label, n in LABELS.items() for _ in range(n)]
    test = [label for label, n in LABELS.items() for _ in range(max(2, n // 2))]
    frames = {}
    for split, labels, first in (("train", train, 10000), ("test", test, 20000)):
        labels = [labels[i] for i in rng.permutation(len(labels))]
        names = [f"{first + i}.png" for i in range(len(labels))]
        for name, label in zip(names, labels):
            cv2.imwrite(str(dest / split / name), draw(label, rng))
        frames[split] = pd.DataFrame({"index": range(len(labels)), "file_name": names, "label": labels})
    train_df = frames["train"]
    train_df[["class", "state"]] = train_df["label"].str.split("-", expand=True)
    train_df[["index", "file_name", "class", "state", "label"]].to_csv(dest / "train_df.csv", index=False)
    frames["test"][["index", "file_name"]].to_csv(dest / "test_df.csv", index=False)
    frames["test"][["index"]].assign(label="disc-good").to_csv(dest / "sample_submission.csv", index=False)
    return dest


# Quick CPU settings: `python -m competitions mvtec demo key=value ...` overrides them.
SETTINGS = {"epochs": 5, "folds": 2, "image_size": 64, "batch_size": 16, "lr": 1e-3, "head_lr": 1e-2,
            "tta": True}
