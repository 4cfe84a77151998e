"""growth's leaf pixels: a colour mask of the plant (excess green or HSV thresholds) -> pixel count, area share and
colour statistics of the plant; overlays of the mask on the photo for a person to check (the worst OOF rows)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from common.errors import ConfigError
from common.io import atomic_path
from common.vision import read_image

# growth's config keys of the leaf-pixel features and overlays, with their defaults.
LEAF_DEFAULTS = {
    "leaf_features": True,        # add leaf-pixel features (mask from colour) for gbm / fusion
    "mask_method": "exg",         # exg: 2G - R - B > mask_threshold (0-255 scale) | hsv: inside hsv_lower..hsv_upper
    "mask_threshold": 20,         # excess-green cut: 9-14 % more pixels than 2 hand masks (test_growth.py)
    "hsv_lower": [30, 60, 30],    # OpenCV HSV (H 0-179): green hues, some saturation, not black
    "hsv_upper": [90, 255, 255],
    "mask_open": 0,               # morphological opening kernel (px) to remove specks; 0 -> off
    "mask_overlays": 8,           # after training: overlays of the N worst OOF rows in plots/leaf_masks/; 0 -> off
}


def leaf_mask(image: np.ndarray, method: str = "exg", threshold: float = 20, hsv_lower=(30, 60, 30),
              hsv_upper=(90, 255, 255), open_px: int = 0) -> np.ndarray:
    """Boolean plant mask of an RGB uint8 image. exg: excess green 2G - R - B above `threshold` (0-255 scale);
    hsv: OpenCV HSV inside [hsv_lower, hsv_upper]. open_px > 0 removes specks smaller than the kernel."""
    if method == "exg":
        rgb = image.astype(np.int16)
        mask = (2 * rgb[..., 1] - rgb[..., 0] - rgb[..., 2]) > threshold
    elif method == "hsv":
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        mask = cv2.inRange(hsv, np.array(hsv_lower, np.uint8), np.array(hsv_upper, np.uint8)) > 0
    else:
        raise ConfigError(f"mask_method must be exg or hsv, got {method!r}")
    if open_px:
        kernel = np.ones((int(open_px), int(open_px)), np.uint8)
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel) > 0
    return mask


LEAF_FEATURES = ["leaf_px", "leaf_px_log", "leaf_share", "leaf_px_loose", "leaf_px_strict", "leaf_hull_px",
                 "leaf_r", "leaf_g", "leaf_b", "leaf_h", "leaf_s", "leaf_v", "leaf_exg", "leaf_exg_std", "image_px"]


def leaf_features(image: np.ndarray, mask: np.ndarray, threshold: float = 20) -> dict:
    """Pixel count, area share, convex-hull area and colour statistics of the plant pixels. leaf_px_loose /
    _strict count excess green at threshold -/+ 10: how sharp the plant's edge is."""
    n = int(mask.sum())
    rgb = image.astype(np.int16)
    exg = 2 * rgb[..., 1] - rgb[..., 0] - rgb[..., 2]
    out = {"leaf_px": float(n), "leaf_px_log": float(np.log1p(n)), "leaf_share": n / mask.size,
           "leaf_px_loose": float((exg > threshold - 10).sum()), "leaf_px_strict": float((exg > threshold + 10).sum()),
           "image_px": float(mask.size), "leaf_hull_px": 0.0}
    if n:
        points = cv2.findNonZero(mask.astype(np.uint8))
        out["leaf_hull_px"] = float(cv2.contourArea(cv2.convexHull(points)))
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[mask].mean(axis=0)
        r, g, b = image[mask].mean(axis=0)
        out.update(leaf_r=r, leaf_g=g, leaf_b=b, leaf_h=hsv[0], leaf_s=hsv[1], leaf_v=hsv[2],
                   leaf_exg=float(exg[mask].mean()), leaf_exg_std=float(exg[mask].std()))
    else:
        out.update({k: np.nan for k in ("leaf_r", "leaf_g", "leaf_b", "leaf_h", "leaf_s", "leaf_v", "leaf_exg",
                                        "leaf_exg_std")})
    return {k: float(v) for k, v in out.items()}


def mask_args(cfg: DictConfig) -> dict:
    return {"method": cfg.mask_method, "threshold": cfg.mask_threshold, "hsv_lower": tuple(cfg.hsv_lower),
            "hsv_upper": tuple(cfg.hsv_upper), "open_px": cfg.mask_open}


def image_leaf_features(path: str | Path, cfg: DictConfig) -> dict:
    image = read_image(path)
    return leaf_features(image, leaf_mask(image, **mask_args(cfg)), cfg.mask_threshold)


def save_overlay(image: np.ndarray, mask: np.ndarray, path: str | Path, title: str = "") -> Path:
    """The photo beside the photo with the mask tinted magenta and outlined: does the mask cover the plant?"""
    tinted = image.copy()
    tinted[mask] = (0.5 * tinted[mask] + 0.5 * np.array([255, 0, 255])).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(tinted, contours, -1, (255, 255, 0), 1)
    sheet = np.concatenate([image, np.full((image.shape[0], 4, 3), 255, np.uint8), tinted], axis=1)
    if title:
        sheet = np.concatenate([np.full((18, sheet.shape[1], 3), 255, np.uint8), sheet], axis=0)
        cv2.putText(sheet, title, (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        Path(tmp).write_bytes(buf.tobytes())
    return Path(path)


def save_worst_overlays(cfg: DictConfig, oof: pd.DataFrame, image_paths: dict, id_column: str,
                        plots_dir: str | Path) -> None:
    """The mask_overlays worst out-of-fold rows (relative error), each photo beside its leaf mask, in
    plots_dir/leaf_masks/: was the mask or the model wrong? image_paths: {id: photo}."""
    err = (oof["pred"] - oof["target"]).abs() / oof["target"].abs().clip(lower=1e-9)
    for _, row in oof.assign(err=err).nlargest(int(cfg.mask_overlays), "err").iterrows():
        image = read_image(image_paths[str(row[id_column])])
        save_overlay(image, leaf_mask(image, **mask_args(cfg)),
                     Path(plots_dir) / "leaf_masks" / f"{Path(str(row[id_column])).stem}.png",
                     f"y {row['target']:.0f} p {row['pred']:.0f}")
