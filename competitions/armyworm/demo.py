"""`make armyworm-demo`: a small synthetic leaf dataset in Zindi's layout, then train -> infer -> submit on the CPU.

Each image is a green leaf-shaped ellipse on soil. Damaged leaves (label 1) carry feeding holes and bitten edges,
the cue the real task turns on, so there is a real signal to learn and the CV AUC means something.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd


SIZE = 64


def draw_leaf(rng: np.random.Generator, damaged: bool) -> np.ndarray:
    soil = rng.integers(60, 120)
    image = np.full((SIZE, SIZE, 3), (soil * 0.55, soil * 0.75, soil), dtype=np.float32)  # BGR brown
    image += rng.normal(0, 8, image.shape)
    center = (int(rng.integers(26, 38)), int(rng.integers(26, 38)))
    axes = (int(rng.integers(22, 30)), int(rng.integers(7, 12)))
    green = (rng.integers(20, 60), rng.integers(120, 190), rng.integers(30, 80))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    if damaged:  # holes inside the blade and bites out of its edge
        ys, xs = np.nonzero(mask)
        for k in rng.choice(len(xs), size=int(rng.integers(3, 7)), replace=False):
            cv2.circle(mask, (int(xs[k]), int(ys[k])), int(rng.integers(2, 4)), 0, -1)
    leaf = mask.astype(bool)
    image[leaf] = np.array(green, dtype=np.float32) + rng.normal(0, 6, (leaf.sum(), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_dataset(dest: Path, n_train: int = 120, n_test: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (dest / "Images").mkdir(parents=True, exist_ok=True)
    ids = [f"id_{i:05d}.jpg" for i in range(n_train + n_test)]
    labels = rng.integers(0, 2, len(ids))
    for name, label in zip(ids, labels):
        cv2.imwrite(str(dest / "Images" / name), draw_leaf(rng, bool(label)), [cv2.IMWRITE_JPEG_QUALITY, 95])
    pd.DataFrame({"Image_id": ids[:n_train], "Label": labels[:n_train]}).to_csv(dest / "Train.csv", index=False)
    pd.DataFrame({"Image_id": ids[n_train:]}).to_csv(dest / "Test.csv", index=False)
    # Zindi's sample submission names the target column Target.
    pd.DataFrame({"Image_id": ids[n_train:], "Target": 0}).to_csv(dest / "SampleSubmission.csv", index=False)
    return dest


# Quick CPU settings: `python -m competitions armyworm demo key=value ...` overrides them.
SETTINGS = {"image_size": 64, "epochs": 3, "folds": 3, "batch_size": 16, "tta": False}
