"""Toy tasks of the engine tests (pure torch, seconds): a pair task (items in groups; folds by group over both members,
a scaler fitted in fit_fold, swap TTA, accuracy with a tuned cut) and an image + tabular regression (growth-like:
a scaler per fold, TTA on the image only, Grad-CAM). Their fixtures are in conftest.py."""
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

from common.folds import FoldSpec
from common.io import read_json, write_json
from common.task import TARGET, Task
from common.vision import ImageTask

N_ITEMS, DIM = 60, 4  # 60 items in 12 groups; a pair is similar when both items share a group


def make_pair_data(root: Path) -> Path:
    """Items with a group and a feature vector; pairs of items labelled 1 when their groups match. The label
    depends on the difference of the two vectors (symmetric), the features carry a per-column offset (what the
    fold's scaler removes)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, DIM)) * 3
    groups = np.arange(N_ITEMS) % 12
    x = centres[groups] + rng.normal(scale=0.5, size=(N_ITEMS, DIM)) + np.array([100.0, -50.0, 20.0, 7.0])
    items = pd.DataFrame(x, columns=[f"x{i}" for i in range(DIM)]).assign(item=range(N_ITEMS), group=groups)
    pairs = []
    for a in range(N_ITEMS):
        for b in rng.choice(N_ITEMS, size=6, replace=False):
            if a != b:
                pairs.append((a, int(b)))
        pairs.append((a, int(rng.choice(np.flatnonzero(groups == groups[a])))))
    df = pd.DataFrame(pairs, columns=["a", "b"]).drop_duplicates()
    df = df[df.a != df.b].reset_index(drop=True)
    df.insert(0, "pair_id", [f"p{i}" for i in range(len(df))])
    df["similar"] = (groups[df.a] == groups[df.b]).astype(int)
    root.mkdir(parents=True, exist_ok=True)
    items.to_csv(root / "items.csv", index=False)
    df.to_csv(root / "train.csv", index=False)
    test = df.sample(40, random_state=1).drop(columns="similar")
    test.to_csv(root / "test.csv", index=False)
    test[["pair_id"]].assign(similar=-1).to_csv(root / "sample_submission.csv", index=False)
    return root


class PairModel(nn.Module):
    """Scores (left, right) from |left - right| and, deliberately asymmetric, from left alone."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(2 * DIM, 16), nn.ReLU())
        self.head = nn.Linear(16, 1)

    def forward(self, left, right):
        return self.head(self.backbone(torch.cat([(left - right).abs(), left], -1)))


class PairTask(Task):
    name, kind, metric, id_column, target_column = "pairs", "binary", "accuracy", "pair_id", "similar"

    def __init__(self, config_path: Path):
        self.config_path = config_path

    def load_train(self, cfg):
        return self._attach(cfg, pd.read_csv(Path(cfg.data_dir) / "train.csv"))

    def load_test(self, cfg, path):
        return self._attach(cfg, pd.read_csv(path))

    def _attach(self, cfg, df):
        items = pd.read_csv(Path(cfg.data_dir) / "items.csv").set_index("item")
        return df.assign(group_a=items.group.loc[df.a].to_numpy(), group_b=items.group.loc[df.b].to_numpy())

    def folds(self, cfg, train):
        """Groups to folds; a pair whose two groups land in different folds is in no fold."""
        group_fold = pd.Series(np.arange(12) % cfg.folds, index=np.random.default_rng(cfg.fold_seed).permutation(12))
        fa, fb = group_fold.loc[train.group_a].to_numpy(), group_fold.loc[train.group_b].to_numpy()
        return np.where(fa == fb, fa, -1)

    def fit_fold(self, cfg, train, fold_dir):
        """Mean and std of the features of the items the fold trains on: never of a validation item."""
        items = pd.read_csv(Path(cfg.data_dir) / "items.csv").set_index("item")
        seen = items.loc[np.union1d(train.a, train.b)].filter(like="x")
        state = {"mean": seen.mean().tolist(), "std": seen.std().tolist(), "items": sorted(map(int, seen.index))}
        write_json(state, fold_dir / "scaler.json")
        return state

    def load_fold(self, cfg, fold_dir):
        return read_json(fold_dir / "scaler.json")

    def dataset(self, cfg, df, mode, ctx):
        items = pd.read_csv(Path(cfg.data_dir) / "items.csv").set_index("item").filter(like="x")
        scaled = torch.tensor(((items - ctx.state["mean"]) / ctx.state["std"]).to_numpy(), dtype=torch.float32)
        y = torch.tensor(df[TARGET].to_numpy(), dtype=torch.float32) if TARGET in df else None
        return [{"left": scaled[a], "right": scaled[b], "index": i, **({"target": y[i]} if y is not None else {})}
                for i, (a, b) in enumerate(zip(df.a, df.b))]

    def build_model(self, cfg, n_outputs, ctx, pretrained):
        return PairModel()

    def tta_views(self, cfg, batch):
        if not cfg.tta:
            return [batch]
        return [batch, {**batch, "left": batch["right"], "right": batch["left"]}]


class Killed(Exception):
    pass


@contextmanager
def dies_at_step(n: int):
    """PairTask's training raises Killed at its n-th batch, as if the process died there."""
    steps = {"n": 0}
    original = PairTask.train_loss

    def train_loss(self, cfg, model, batch, loss_fn):
        steps["n"] += 1
        if steps["n"] == n:
            raise Killed
        return original(self, cfg, model, batch, loss_fn)
    PairTask.train_loss = train_loss
    try:
        yield
    finally:
        PairTask.train_loss = original


class FusionModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 + 2, 1)

    def forward(self, image, features):
        pooled = self.conv(image).relu().mean((2, 3))
        return self.head(torch.cat([pooled, features], -1))


class GrowthToy(ImageTask):
    name, kind, metric, id_column, target_column = "growthtoy", "regression", "nmae", "img", "weight"
    fold_spec = FoldSpec(group="case")

    def __init__(self, config_path):
        self.config_path = config_path

    def load_train(self, cfg):
        df = pd.read_csv(Path(cfg.data_dir) / "train.csv")
        return self.attach_images(cfg, df, df.img, Path(cfg.data_dir), Path(cfg.data_dir) / "train.csv")

    def load_test(self, cfg, path):
        df = pd.read_csv(path)
        return self.attach_images(cfg, df, df.img, Path(cfg.data_dir), path)

    def fit_fold(self, cfg, train, fold_dir):
        state = {"mean": train[["t", "h"]].mean().tolist(), "std": train[["t", "h"]].std().tolist()}
        write_json(state, fold_dir / "scaler.json")
        return state

    def load_fold(self, cfg, fold_dir):
        return read_json(fold_dir / "scaler.json")

    def dataset(self, cfg, df, mode, ctx):
        images = super().dataset(cfg, df, mode, ctx)
        features = torch.tensor(((df[["t", "h"]] - ctx.state["mean"]) / ctx.state["std"]).to_numpy(),
                                dtype=torch.float32)
        return [{**images[i], "features": features[i]} for i in range(len(df))]

    def build_model(self, cfg, n_outputs, ctx, pretrained):
        return FusionModel()


def make_growth_data(root: Path) -> Path:
    """24 off-centre green squares (a flipped view differs) in 4 cases; weight grows with the green; two sensor
    columns t, h that the fold's scaler standardises. Returns the config file of a GrowthToy."""
    rng = np.random.default_rng(0)
    data = root / "growth"
    data.mkdir(parents=True)
    rows = []
    for i in range(24):
        green = int(rng.integers(40, 250))
        image = np.zeros((16, 16, 3), np.uint8)
        image[4:12, 1:7, 1] = green
        image[:, :, 2] = np.linspace(0, 255, 16, dtype=np.uint8)
        cv2.imwrite(str(data / f"{i}.png"), image)
        rows.append({"img": f"{i}.png", "case": i % 4, "t": rng.normal(20, 3), "h": rng.normal(60, 5),
                     "weight": 1 + green / 10})
    pd.DataFrame(rows).to_csv(data / "train.csv", index=False)
    config = root / "growth.yaml"
    config.write_text(f"data_dir: {data}\nmodel: resnet18\nimage_size: 16\nepochs: 2\nbatch_size: 8\nfolds: 2\n"
                      f"lr: 1.0e-2\nwarmup: 0.0\ngradcam_layer: conv\n")
    return config
