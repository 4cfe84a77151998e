"""Grad-CAM for image runs (pytorch-grad-cam): where a run's models look on their out-of-fold images.

Each image is explained by the fold model that never trained on it, with the run's own valid-time pipeline
(no TTA), so the heatmap belongs to the very prediction stored in oof.csv.

    python -m competitions <c> gradcam run_name=x [run2=y] [n=8] [cam_target=predicted|true] [key=value ...]
    (its arguments are parsed in common/cli.py)
    make armyworm-gradcam RUN=x [RUN2=y] [ARGS="n=4 gradcam_layer=backbone.layer4"]

writes runs/<c>/x/plots/gradcam/:
    <group>/<id>.png     overlay at the model's input size. Groups, binary: correct_1, correct_0, false_negative,
                         false_positive; multiclass: correct, wrong. The n most confident rows of each group
                         (for the errors: the worst mistakes).
    <group>.png          contact sheet of the group
    compare_<y>.png      the first (up to 2) images of each group under run x and run y side by side (y's own
                         fold models); both runs explain the same class, so the heatmaps are comparable.

Which class is explained (cam_target): `predicted` (default) shows the evidence for what the model answered: for a
binary model the positive logit when p >= 0.5 and the negated logit otherwise (evidence for label 0), so a false
negative shows what looked healthy to it. `true` shows the evidence for the true label instead (for a false
negative: where the model did or did not see damage). Other keys are overrides of the run's config (data_dir,
image_dir, gradcam_layer, batch_size, ...) and apply to both runs.
"""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputTarget,
)
from torch import nn
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from common.errors import ConfigError, DataError, NotFound
from common.io import atomic_path, read_csv
from common.plots import plt, save  # the Agg backend: files only
from common.predict import fold_context, load_fold_model
from common.runs import Run
from common.task import Task, model_inputs
from common.vision import data_config

COMPARE_PER_GROUP = 2  # at most this many rows per group in the two-run sheet: 8 rows of 3 images fit a screen


# ---- target layer --------------------------------------------------------------------------------
def target_layer(model: nn.Module, path: str | None = None) -> nn.Module:
    """The module whose activations Grad-CAM weighs: `path` (e.g. backbone.layer4) if given, else the last
    feature stage timm declares for the backbone (feature_info[-1]: layer4 of a ResNet, blocks.6 of an
    EfficientNet), the last convolutional stage before global pooling."""
    if path:
        try:
            return model.get_submodule(path)
        except AttributeError:
            raise ConfigError(f"gradcam_layer={path!r}: the model has no such module; "
                              f"top-level modules: {', '.join(n for n, _ in model.named_children())}") from None
    backbone = getattr(model, "backbone", model)
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise ConfigError(f"{type(backbone).__name__} declares no feature stages (timm feature_info); "
                          f"set gradcam_layer=<module path>, e.g. backbone.<last conv stage>")
    prefix = "backbone." if backbone is not model else ""
    return model.get_submodule(prefix + info[-1]["module"])


# ---- which images --------------------------------------------------------------------------------
def pick_groups(oof: pd.DataFrame, kind: str, classes: list[str], n: int) -> dict[str, pd.DataFrame]:
    """The n most confident OOF rows of each group, with `predicted` (class index) and `confidence` added.
    Regression: the n closest and the n furthest predictions (relative error; the output itself is explained)."""
    if kind == "regression":
        y, p = oof["target"].to_numpy(dtype=float), oof["pred"].to_numpy(dtype=float)
        error = np.abs(p - y) / np.maximum(np.abs(y), 1e-9)
        frame = oof.assign(predicted=0, confidence=-error)
        return {"closest": frame.nlargest(n, "confidence", keep="first"),
                "furthest": frame.nsmallest(n, "confidence", keep="first")}
    y = oof["target"].astype(int).to_numpy()
    if kind == "binary":
        p = oof["pred"].to_numpy()
        predicted = (p >= 0.5).astype(int)
        confidence = np.abs(p - 0.5)
        masks = {"correct_1": (y == 1) & (predicted == 1), "correct_0": (y == 0) & (predicted == 0),
                 "false_negative": (y == 1) & (predicted == 0), "false_positive": (y == 0) & (predicted == 1)}
    elif kind == "multiclass":
        probs = oof[classes].to_numpy()
        predicted, confidence = probs.argmax(1), probs.max(1)
        masks = {"correct": predicted == y, "wrong": predicted != y}
    else:
        raise ConfigError(f"Grad-CAM has no groups for a {kind} task")
    frame = oof.assign(predicted=predicted, confidence=confidence)
    return {name: frame[mask].nlargest(n, "confidence", keep="first") for name, mask in masks.items()}


def cam_targets(kind: str, classes: np.ndarray) -> list:
    """pytorch-grad-cam targets for the explained class of each image. A binary model has one logit: class 1 is
    the logit, class 0 its negation (BinaryClassifierOutputTarget); a regression output is explained as it is."""
    if kind == "regression":
        return [ClassifierOutputTarget(0) for _ in classes]
    if kind == "binary":
        return [BinaryClassifierOutputTarget(int(c)) for c in classes]
    return [ClassifierOutputTarget(int(c)) for c in classes]


# ---- heatmaps ------------------------------------------------------------------------------------
def explain(task: Task, run: Run, cfg: DictConfig, rows: pd.DataFrame, explained: np.ndarray,
            images: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of each row (id_column, fold) by its out-of-fold model for class `explained[i]`.
    images: the task's train frame (id -> image path). Returns the inputs as the model saw them,
    (N, H, W, 3) floats in [0, 1], and the heatmaps, (N, H, W) in [0, 1]."""
    rows = rows.reset_index(drop=True)
    by_id = images.set_index(images[task.id_column].astype(str))
    missing = rows[~rows[task.id_column].astype(str).isin(by_id.index)]
    if len(missing):
        raise DataError(f"{len(missing)} OOF id(s) of {run.dir} are not in the train file, "
                        f"e.g. {missing[task.id_column].iloc[0]!r}; pass the run's data_dir=")
    frame = by_id.loc[rows[task.id_column].astype(str)].reset_index(drop=True)
    norm = data_config(cfg.model)
    mean, std = np.array(norm["mean"]), np.array(norm["std"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_outputs = len(run.classes())
    inputs, cams = [None] * len(rows), [None] * len(rows)
    for fold, part in tqdm(rows.groupby("fold"), desc=f"Grad-CAM {run.name}", leave=False):
        ctx = fold_context(task, cfg, run, int(fold))  # the fold's own fitted state (scalers) for other inputs
        dataset = task.dataset(cfg, frame.loc[part.index].reset_index(drop=True), "valid", ctx)
        collate = task.collate_fn(cfg, ctx) or default_collate
        model = load_fold_model(task, cfg, run, ctx, n_outputs).to(device).eval()
        layer = target_layer(model, cfg.gradcam_layer)
        for start in range(0, len(part), cfg.batch_size):
            positions = range(start, min(start + cfg.batch_size, len(part)))
            batch = collate([dataset[i] for i in positions])
            index = part.index[start:start + cfg.batch_size]
            x = batch["image"].to(device)
            others = {k: v.to(device) for k, v in model_inputs(batch).items() if k != "image"}
            cam = GradCAM(model=ImageInput(model, others), target_layers=[layer])
            try:  # not `with GradCAM(...)`: its __exit__ swallows IndexError
                heat = cam(input_tensor=x, targets=cam_targets(task.kind, explained[index]))
            except ValueError as e:  # e.g. a ViT block: tokens, not a feature map
                raise ConfigError(f"Grad-CAM on {type(layer).__name__} failed ({e}); set gradcam_layer= "
                                  f"to a convolutional module with (N, C, H, W) outputs") from None
            finally:
                cam.activations_and_grads.release()
            for i, image, h in zip(index, x.cpu(), heat):
                inputs[i] = np.clip(image.permute(1, 2, 0).float().numpy() * std + mean, 0, 1)
                cams[i] = h
    return np.stack(inputs).astype(np.float32), np.stack(cams)


class ImageInput(nn.Module):
    """The model as a function of its image alone, the batch's other inputs (features, ...) held fixed: Grad-CAM
    calls model(x) with the image only."""

    def __init__(self, model: nn.Module, others: dict):
        super().__init__()
        self.model, self.others = model, others

    def forward(self, image):
        return self.model(image=image, **self.others)


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    return show_cam_on_image(image, heat, use_rgb=True)


def save_png(array: np.ndarray, path: Path) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


def safe_name(name) -> str:
    """An id or run name as a file name: path separators and odd characters become _."""
    return re.sub(r"[^\w.-]+", "_", str(name))


def overlay_name(image_id) -> str:
    return Path(safe_name(image_id)).with_suffix(".png").name  # id_x.jpg -> id_x.png


# ---- sheets --------------------------------------------------------------------------------------
def contact_sheet(images: list[np.ndarray], titles: list[str], title: str, path: Path, cols: int = 4) -> Path:
    cols = min(cols, len(images))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, t in zip(axes.flat, images, titles):
        ax.imshow(image)
        ax.set_title(t, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def comparison_sheet(inputs: np.ndarray, columns: list[tuple[str, list[np.ndarray], list[str]]],
                     row_labels: list[str], path: Path) -> Path:
    """One row per image: the input, then each run's overlay (columns: (run name, overlays, per-row titles))."""
    n_cols = 1 + len(columns)
    fig, axes = plt.subplots(len(inputs), n_cols, figsize=(2.2 * n_cols, 2.3 * len(inputs)), squeeze=False)
    for r, image in enumerate(inputs):
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(row_labels[r], fontsize=7)
        for c, (name, overlays, titles) in enumerate(columns, start=1):
            axes[r, c].imshow(overlays[r])
            axes[r, c].set_title(f"{name}: {titles[r]}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    return save(fig, path)


def gradcam(task: Task, run: Run, n: int = 8, cam_target: str = "predicted", run2: str | None = None,
            overrides: dict | None = None) -> Path:
    """Overlays and contact sheets of the run's OOF images by group (and a comparison with run2); returns the
    folder. overrides: run config keys ({"data_dir": ..., "image_dir", "gradcam_layer", "batch_size" ...})."""
    own = {"n": n, "cam_target": cam_target, "run2": run2}
    overrides = dict(overrides or {})
    cfg = run.config(overrides)
    if not run.oof_path.is_file():
        raise NotFound(f"{run.dir}: no oof.csv; Grad-CAM explains out-of-fold images of a finished run")
    classes = run.classes()
    groups = pick_groups(read_csv(run.oof_path), task.kind, classes, own["n"])
    picked = pd.concat([g.assign(group=name) for name, g in groups.items()], ignore_index=True)
    if picked.empty:
        raise DataError(f"{run.oof_path}: no rows to explain")
    explained = picked["predicted" if own["cam_target"] == "predicted" or task.kind == "regression"
                       else "target"].astype(int).to_numpy()
    images = task.load_train(cfg)
    inputs, cams = explain(task, run, cfg, picked, explained, images)
    overlays = [overlay(i, c) for i, c in zip(inputs, cams)]

    out_dir = run.plots_dir / "gradcam"
    for name in groups:
        shutil.rmtree(out_dir / name, ignore_errors=True)  # no overlays left over from an earlier call
        (out_dir / f"{name}.png").unlink(missing_ok=True)
        rows = np.flatnonzero(picked["group"].to_numpy() == name)
        if not len(rows):
            print(f"Grad-CAM: no {name.replace('_', ' ')} in {run.oof_path}")
            continue
        for i in rows:
            save_png(overlays[i], out_dir / name / overlay_name(picked[task.id_column].iloc[i]))
        contact_sheet([overlays[i] for i in rows],
                      [f"{picked[task.id_column].iloc[i]}\n{_caption(picked.iloc[i], cams[i], task.kind, classes)}"
                       for i in rows],
                      f"{run.name}: {name.replace('_', ' ')} (Grad-CAM, {own['cam_target']} class)",
                      out_dir / f"{name}.png")
    print(f"Grad-CAM of {len(picked)} OOF images: {out_dir}")

    if own["run2"]:
        per_group = min(own["n"], COMPARE_PER_GROUP)
        compare_runs(task, run, own["run2"], overrides, picked, explained, inputs, cams, images, out_dir, per_group)
    return out_dir


def compare_runs(task: Task, run: Run, run2_name: str, overrides: dict, picked: pd.DataFrame,
                 explained: np.ndarray, inputs: np.ndarray, cams: np.ndarray, images: pd.DataFrame,
                 out_dir: Path, per_group: int) -> Path:
    """The first `per_group` images of each group under both runs. Run 2 explains the same class with its own
    out-of-fold model of each image (its folds may differ from run 1's; its OOF must cover the images)."""
    run2 = Run.open(task.name, run2_name, str(run.dir.parent.parent))
    cfg2 = run2.config(overrides)
    if run2.dir == run.dir:
        raise ConfigError(f"run2={run2_name} is the run being explained; name a different run to compare")
    classes = run.classes()
    if run2.classes() != classes:
        raise DataError(f"{run.dir} and {run2.dir} predict different classes ({classes} vs {run2.classes()})")
    sel = picked.groupby("group", sort=False).head(per_group).index.to_numpy()
    oof2 = read_csv(run2.oof_path)
    oof2.index = oof2[task.id_column].astype(str)
    ids = picked[task.id_column].astype(str).iloc[sel]
    missing = ids[~ids.isin(oof2.index)]
    if len(missing):
        raise DataError(f"{run2.oof_path}: no OOF prediction for {len(missing)} of the compared images, e.g. "
                        f"{missing.iloc[0]!r}; compare runs trained on the same data")
    rows2 = oof2.loc[ids].reset_index(drop=True)
    inputs2, cams2 = explain(task, run2, cfg2, rows2, explained[sel], images)
    columns = []
    for r, rows, ins, hs in [(run, picked.iloc[sel], inputs[sel], cams[sel]), (run2, rows2, inputs2, cams2)]:
        columns.append((r.name, [overlay(i, h) for i, h in zip(ins, hs)],
                        [_caption(row, h, task.kind, classes) for (_, row), h in zip(rows.iterrows(), hs)]))
    row_labels = [f"{picked['group'].iloc[i]}\n{picked[task.id_column].iloc[i]}" for i in sel]
    path = comparison_sheet(inputs[sel], columns, row_labels, out_dir / f"compare_{safe_name(run2.name)}.png")
    print(f"Grad-CAM comparison with {run2.dir}: {path}")
    return path


def _caption(row: pd.Series, cam: np.ndarray, kind: str, classes: list[str]) -> str:
    """True label and prediction of an OOF row (p(class 1) for binary, the predicted class and its p otherwise);
    `flat` marks a heatmap of zeros: no region raised the explained score (Grad-CAM keeps positive evidence only)."""
    flat = " (flat)" if cam.max() <= 0 else ""
    if kind == "regression":
        return f"y={float(row['target']):.4g} p={float(row['pred']):.4g}{flat}"
    if kind == "binary":
        return f"y={int(row['target'])} p={float(row['pred']):.3f}{flat}"
    probs = row[classes].to_numpy(dtype=float)
    return f"y={classes[int(row['target'])]} pred={classes[int(probs.argmax())]} p={probs.max():.2f}{flat}"
