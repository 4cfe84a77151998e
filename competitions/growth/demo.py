"""`make growth-demo`: a small synthetic greenhouse in DACON 235897's layout, then train -> infer -> submit on the CPU.

Each case is one plant photographed once a day from the top: green leaf ellipses on a grey tray that grow with the
day's light. Its meta/CASExx_NN.csv is a day of per-minute sensor readings under the real Korean headers (a coarse
10-minute log, to keep the files small), and label.csv holds the weight in grams, which follows the leaf area with
case-to-case noise. So both the image (leaf pixels) and the meta (light) carry real signal.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from competitions.growth.sensors import META_COLUMNS

SIZE = 96
HEADERS = [META_COLUMNS[c][0] for c in ("time", "temp_in", "humid_in", "co2", "ec", "spray", "light_total",
                                        "light_white", "light_red", "light_blue")]


def draw_plant(rng: np.random.Generator, area_share: float) -> np.ndarray:
    """A grey tray with a rosette of green ellipses covering about `area_share` of the picture."""
    tray = int(rng.integers(170, 220))
    image = np.full((SIZE, SIZE, 3), tray, np.float32) + rng.normal(0, 4, (SIZE, SIZE, 3))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    n_leaves = int(rng.integers(3, 7))
    radius = np.sqrt(area_share * SIZE * SIZE / (np.pi * n_leaves * 0.5))
    centre = np.array([SIZE / 2, SIZE / 2]) + rng.normal(0, 3, 2)
    for k in range(n_leaves):
        angle = 2 * np.pi * k / n_leaves + rng.normal(0, 0.2)
        at = centre + 0.6 * radius * np.array([np.cos(angle), np.sin(angle)])
        cv2.ellipse(mask, (int(at[0]), int(at[1])), (max(1, int(radius)), max(1, int(radius * 0.5))),
                    float(np.degrees(angle)), 0, 360, 255, -1)
    leaf = mask > 0
    image[leaf] = np.array([40, 150, 50], np.float32) + rng.normal(0, 8, (int(leaf.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def sensor_day(rng: np.random.Generator, day: pd.Timestamp, light: float) -> pd.DataFrame:
    """One day every 10 minutes: lights on 06-22 h at `light` (estimated light units per row)."""
    t = pd.date_range(day, periods=144, freq="10min")
    on = ((t.hour >= 6) & (t.hour < 22)).astype(float)
    total = on * light * (1 + rng.normal(0, 0.02, len(t)))
    df = pd.DataFrame({
        "시간": t.strftime("%Y-%m-%d %H:%M:%S"),
        "내부온도관측치": 24 + 3 * on + rng.normal(0, 0.5, len(t)),
        "내부습도관측치": 60 - 10 * on + rng.normal(0, 2, len(t)),
        "CO2관측치": 450 + rng.normal(0, 20, len(t)),
        "EC관측치": 1.2 + rng.normal(0, 0.05, len(t)),
        "최근분무량": np.where(rng.random(len(t)) < 0.05, 12.0, 0.0),
        "총추정광량": total, "백색광추정광량": 0.8 * total, "적색광추정광량": 0.13 * total, "청색광추정광량": 0.07 * total,
    })
    df.iloc[rng.integers(0, len(t), 3), 1] = np.nan  # a sensor drop-out or two, as in the real logs
    return df[HEADERS]


def make_dataset(dest: Path, n_cases: int = 8, days: int = 8, n_test: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    dest = Path(dest)

    def plant(folder: Path, name: str, day: int, light: float, vigour: float) -> float:
        """Write the photo and the day's log; return the weight (g)."""
        share = min(0.5, 0.01 * vigour * np.exp(0.35 * day) * light / 300)
        cv2.imwrite(str(folder / "image" / f"{name}.png"), cv2.cvtColor(draw_plant(rng, share), cv2.COLOR_RGB2BGR))
        sensor_day(rng, pd.Timestamp("2022-03-01") + pd.Timedelta(days=day), light).to_csv(
            folder / "meta" / f"{name}.csv", index=False)
        return round(float(400 * share ** 1.2 * rng.lognormal(0, 0.05)), 3)

    for c in range(1, n_cases + 1):
        case = dest / "train" / f"CASE{c:02d}"
        (case / "image").mkdir(parents=True, exist_ok=True)
        (case / "meta").mkdir(parents=True, exist_ok=True)
        light, vigour = rng.uniform(200, 400), rng.uniform(0.7, 1.3)
        names = [f"CASE{c:02d}_{d + 1:02d}" for d in range(days)]
        weights = [plant(case, n, d, light, vigour) for d, n in enumerate(names)]
        pd.DataFrame({"img_name": [f"{n}.png" for n in names], "leaf_weight": weights}).to_csv(
            case / "label.csv", index=False)
    test = dest / "test"
    (test / "image").mkdir(parents=True, exist_ok=True)
    (test / "meta").mkdir(parents=True, exist_ok=True)
    names = [f"{i:03d}" for i in range(1, n_test + 1)]
    for n in names:
        plant(test, n, int(rng.integers(0, days)), rng.uniform(200, 400), rng.uniform(0.7, 1.3))
    pd.DataFrame({"img_name": [f"{n}.png" for n in names], "leaf_weight": 0}).to_csv(
        dest / "sample_submission.csv", index=False)
    return dest


# The default model (gbm: NMAE 0.20 here; fusion at 64 px, 3 epochs: 0.94).
SETTINGS = {"folds": 4}
