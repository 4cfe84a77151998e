"""An image + tabular regression (pure torch, seconds): a scaler fitted per fold, TTA on the image only, Grad-CAM.
The toy task: tests/toys.py (GrowthToy); its fixture: conftest.py."""
import numpy as np
import pandas as pd
import pytest
import torch

from common import api, gradcam
from common.io import read_json
from common.vision import image_views


def test_image_plus_tabular_scaler_per_fold_tta_on_the_image_only_and_grad_cam(growth_toy):
    task = growth_toy
    run = api.train(task, task.config(["run_name=fusion"]))
    folds = pd.read_csv(run.folds_path).merge(pd.read_csv(task.config().data_dir + "/train.csv"), on="img")
    assert (folds.groupby("case").fold.nunique() == 1).all()
    for fold in (0, 1):  # each fold's scaler comes from its own training cases
        train = folds[folds.fold != fold]
        assert read_json(run.fold_dir(fold) / "scaler.json")["mean"] == pytest.approx(train[["t", "h"]].mean().tolist())

    batch = {"image": torch.rand(2, 3, 16, 16), "features": torch.rand(2, 2), "index": torch.arange(2)}
    views = task.tta_views(task.config(["tta=true", "tta_transforms=[hflip]"]), batch)
    assert len(views) == 2 and all(v["features"] is batch["features"] for v in views)
    assert torch.equal(views[1]["image"], batch["image"].flip(-1))
    test = task.config().data_dir + "/train.csv"
    with_tta = api.predict(task, run, test, tta=True)
    assert with_tta.pred.notna().all() and not np.allclose(with_tta.pred, api.predict(task, run, test).pred)

    out = gradcam.gradcam(task, run, n=3)  # regression: the closest and the furthest OOF predictions
    assert {p.name for p in out.glob("*.png")} == {"closest.png", "furthest.png"}
    oof = pd.read_csv(run.oof_path)
    inputs, cams = gradcam.explain(task, run, run.config(), oof, np.zeros(len(oof), int), task.load_train(run.config()))
    assert inputs.shape == (24, 16, 16, 3) and cams.shape == (24, 16, 16) and np.isfinite(cams).all()
    assert (cams.std(axis=(1, 2)) > 0).any(), "every heatmap is flat"
    assert image_views(batch, ["vflip"])[1]["features"] is batch["features"]
