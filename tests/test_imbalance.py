"""Imbalance options (common/imbalance.py): each one runs and changes what the model sees or how it is scored.
The label counts are the real DACON anomaly distribution (88 labels, hazelnut-good 391 ... wood-color 4)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from common.errors import ConfigError
from common.imbalance import (
    ClassificationLoss,
    balanced_sampler,
    class_weight_vector,
    focal_loss,
    minority_rows,
    per_label_f1,
    resample,
)
from common.task import TARGET, FoldContext
from competitions.mvtec.task import MvtecTask
from tests.conftest import shared_data

TASK = MvtecTask()


@pytest.fixture(scope="module")
def dacon():
    """The real DACON train labels (no images), with the engine's class index added."""
    df = pd.read_csv(shared_data("mvtec") / "dacon_original" / "train_df.csv")
    classes = sorted(df["label"].unique())
    df[TARGET] = df["label"].map({c: i for i, c in enumerate(classes)})
    return df


def test_weighted_sampler_draws_rare_labels_far_more_often_than_the_raw_counts(dacon):
    raw = dacon["label"].value_counts()
    assert raw["hazelnut-good"] == 391 and raw["wood-color"] == 4 and len(raw) == 88
    drawn = dacon["label"].iloc[list(balanced_sampler(dacon[TARGET], power=1.0, generator=torch.Generator().manual_seed(0)))].value_counts()
    assert drawn.sum() == len(dacon)  # an epoch is as long as before
    # Balanced: every label ~ 4277/88 = 49 draws instead of 4 ... 391.
    assert drawn["hazelnut-good"] < 100 and drawn["wood-color"] > 20
    assert drawn.reindex(raw.index, fill_value=0).std() < raw.std() / 4
    sqrt = dacon["label"].iloc[list(balanced_sampler(dacon[TARGET], power=0.5, generator=torch.Generator().manual_seed(0)))].value_counts()
    assert drawn["hazelnut-good"] < sqrt["hazelnut-good"] < raw["hazelnut-good"]  # in between


def test_upsampling_replicates_rare_labels_and_downsampling_thins_the_majority(dacon):
    up = resample(dacon, "label", upsample_to=60, downsample_to=None, seed=0)
    counts = up["label"].value_counts()
    assert counts.min() == 60 and counts["hazelnut-good"] == 391
    wood = up[up["label"] == "wood-color"]["index"].value_counts()
    assert len(wood) == 4 and wood.max() - wood.min() <= 1  # every image copied (almost) equally often

    down = resample(dacon, "label", upsample_to=None, downsample_to=100, seed=0)
    counts = down["label"].value_counts()
    assert counts.max() == 100 and counts["wood-color"] == 4 and down["index"].is_unique
    again = resample(dacon, "label", upsample_to=None, downsample_to=100, seed=0)
    assert down["index"].tolist() == again["index"].tolist()  # seeded


def test_task_resamples_and_samples_from_config(dacon):
    cfg = TASK.config(["upsample_to=30", "downsample_to=200"])
    frame = TASK.train_frame(cfg, dacon)
    assert frame[TARGET].value_counts().between(30, 200).all()
    assert TASK.train_frame(TASK.config(["upsample_to=null", "downsample_to=null"]), dacon) is dacon
    ctx = FoldContext(0, Path("."), Path("."))
    assert TASK.train_sampler(TASK.config(["sampler=null"]), dacon, ctx) is None
    assert len(TASK.train_sampler(TASK.config(["sampler=weighted"]), dacon, ctx)) == len(dacon)
    with pytest.raises(ConfigError, match="sampler must be"):
        TASK.train_sampler(TASK.config(["sampler=oversample"]), dacon, ctx)


def test_minority_rows_count_images_not_replicated_rows():
    df = pd.DataFrame({"index": [0, 1, 2, 3, 3, 3], "label": ["a", "a", "a", "b", "b", "b"]})
    assert minority_rows(df, "label", "index", below=2).tolist() == [False] * 3 + [True] * 3


def test_class_weights_favour_rare_labels_and_cover_labels_absent_from_the_fold():
    targets = np.array([0] * 90 + [1] * 9 + [3] * 1)  # class 2 is missing from this fold, class 4 too
    w = class_weight_vector(targets, n_classes=5, mode="balanced")
    assert len(w) == 5 and w[3] > w[1] > w[0] and w[2] == w[4] == 1.0
    assert torch.allclose(class_weight_vector(targets, 5, "sqrt") ** 2, w)
    assert class_weight_vector(targets, 5, None) is None


def test_losses_differ_as_they_should():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 4), torch.randint(0, 4, (16,))
    targets = np.array([0] * 30 + [1] * 3 + [2] * 3 + [3] * 3)
    ce = ClassificationLoss()(logits, target)
    assert torch.allclose(ce, F.cross_entropy(logits, target))
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), ce)  # focal with gamma 0 is cross-entropy
    assert ClassificationLoss(loss="focal", gamma=2.0)(logits, target) < ce  # easy rows count less
    weighted = ClassificationLoss(targets, class_weights="balanced")(logits, target)
    expected = F.cross_entropy(logits, target, weight=class_weight_vector(targets, 4, "balanced"))
    assert torch.allclose(weighted, expected) and not torch.allclose(weighted, ce)
    smooth = ClassificationLoss(label_smoothing=0.1)(logits, target)
    assert torch.allclose(smooth, F.cross_entropy(logits, target, label_smoothing=0.1))
    focal_smooth = ClassificationLoss(targets, "balanced", loss="focal", label_smoothing=0.1)(logits, target)
    focal_weighted = ClassificationLoss(targets, "balanced", loss="focal")(logits, target)
    assert torch.isfinite(focal_smooth) and not torch.allclose(focal_smooth, focal_weighted)  # smoothing reaches focal
    with pytest.raises(ValueError, match="loss must be"):
        ClassificationLoss(loss="hinge")


def test_task_loss_from_config(dacon):
    loss = TASK.loss_fn(TASK.config(["loss=focal", "focal_gamma=1.5", "class_weights=balanced",
                                     "label_smoothing=0.05"]), dacon, None)
    assert (loss.loss, loss.gamma, loss.class_weights, loss.label_smoothing) == ("focal", 1.5, "balanced", 0.05)
    assert loss.weight(88, "cpu").shape == (88,)


class Recorder(nn.Module):
    """Remembers the inputs it saw."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, image):
        self.seen = image
        return self.linear(image)


def test_mixup_feeds_mixed_images_and_mixes_the_loss():
    torch.manual_seed(1)
    image = torch.eye(3)[[0, 1, 2, 0]]
    batch = {"image": image, "target": torch.tensor([0, 1, 1, 0]), "index": torch.arange(4)}
    model, loss_fn = Recorder(), nn.CrossEntropyLoss()
    cfg = TASK.config(["mixup_alpha=0.4"])
    torch.manual_seed(3)
    loss = TASK.train_loss(cfg, model, batch, loss_fn)
    seen = model.seen
    assert not torch.equal(seen, image)
    # Rows are convex mixes of two rows of the batch: non-negative, summing to one.
    assert (seen >= 0).all() and torch.allclose(seen.sum(1), torch.ones(4))
    torch.manual_seed(3)  # the same lambda and permutation, computed by hand
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(4)
    assert torch.allclose(seen, lam * image + (1 - lam) * image[perm])
    logits = model.linear(seen)
    assert torch.allclose(loss, lam * loss_fn(logits, batch["target"]) + (1 - lam) * loss_fn(logits, batch["target"][perm]))
    # Off: the batch goes in untouched.
    TASK.train_loss(TASK.config(["mixup_alpha=0"]), model, batch, loss_fn)
    assert torch.equal(model.seen, image)


def test_per_label_f1_lists_every_label_worst_first():
    table = per_label_f1([0, 0, 1, 2, 2], [0, 0, 2, 2, 2], ["a", "b", "c"])
    assert table["label"].tolist() == ["b", "c", "a"]
    assert table.set_index("label")["f1"].round(3).to_dict() == {"a": 1.0, "b": 0.0, "c": 0.8}
    assert table.set_index("label")["support"].to_dict() == {"a": 2, "b": 1, "c": 2}
