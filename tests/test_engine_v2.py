"""Engine v2 on two toy tasks that the first three competitions do not exercise (pure torch, seconds):
a pair task (folds by group over both members, fold state fitted in fit_fold and reloaded, swap TTA, a tuned
threshold) and an image + tabular regression (a scaler per fold, TTA on the image only, Grad-CAM). Plus the
function API, seed averaging and mid-epoch resume."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from common import api, ensemble, gradcam
from common.errors import NotFound
from common.folds import FoldSpec
from common.io import read_json, write_json
from common.metrics import get_metric, tune_threshold
from common.task import TARGET, Task
from common.vision import ImageTask, image_views

# ---- a pair task ---------------------------------------------------------------------------------------
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


@pytest.fixture
def pair_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_pair_data(tmp_path / "data")
    path = tmp_path / "pairs.yaml"
    path.write_text(f"data_dir: {data}\nepochs: 4\nbatch_size: 16\nfolds: 3\nlr: 2.0e-2\nwarmup: 0.0\n")
    return PairTask(path)


def test_pairs_are_folded_by_group_over_both_members_and_the_fold_state_never_sees_validation(pair_task):
    run = api.train(pair_task, pair_task.config(["run_name=pairs"]))
    folds = pd.read_csv(run.folds_path).merge(pd.read_csv(pair_task.config().data_dir + "/train.csv"), on="pair_id")
    train = pair_task.load_train(pair_task.config())
    folds = folds.merge(train[["pair_id", "group_a", "group_b"]], on="pair_id")
    in_fold = folds[folds.fold >= 0]
    group_folds = pd.concat([in_fold[["group_a", "fold"]].set_axis(["g", "f"], axis=1),
                             in_fold[["group_b", "fold"]].set_axis(["g", "f"], axis=1)]).groupby("g").f.nunique()
    assert (group_folds == 1).all(), "a group is on both sides of a split"
    assert ((folds.group_a != folds.group_b) & (folds.fold == -1)).any()   # pairs across folds: in no fold
    oof = pd.read_csv(run.oof_path)
    assert set(oof.pair_id) == set(in_fold.pair_id)                         # every in-fold pair scored once
    for fold in run.finished_folds():
        valid = in_fold[in_fold.fold == fold]
        fitted = set(read_json(run.fold_dir(fold) / "scaler.json")["items"])
        assert not fitted & (set(valid.a) | set(valid.b)), "fit_fold saw a validation item"


def test_fold_state_is_reloaded_at_infer_and_swap_tta_is_the_mean_of_both_orders(pair_task):
    run = api.train(pair_task, pair_task.config(["run_name=pairs"]))
    oof = pd.read_csv(run.oof_path).set_index("pair_id")
    # Predicting fold 0's validation rows with fold 0 alone, its state read back from disk, gives its OOF.
    valid = pd.read_csv(run.folds_path).query("fold == 0")
    rows = pair_task.config().data_dir + "/rows.csv"
    pd.read_csv(pair_task.config().data_dir + "/train.csv").set_index("pair_id").loc[valid.pair_id].reset_index() \
        .drop(columns="similar").to_csv(rows, index=False)
    only_fold0 = run.dir.parent / "fold0-only"
    only_fold0.mkdir()
    for name in ("config.yaml", "classes.json", "folds.csv"):
        (only_fold0 / name).write_bytes((run.dir / name).read_bytes())
    shutil.copytree(run.fold_dir(0), only_fold0 / "fold0")
    again = api.predict(pair_task, "fold0-only", rows).set_index("pair_id")["pred"]
    assert np.allclose(again.to_numpy(), oof.loc[again.index, "pred"].to_numpy(), atol=1e-6)

    plain = api.predict(pair_task, run, rows).set_index("pair_id")["pred"]
    swapped_rows = pd.read_csv(rows).rename(columns={"a": "b", "b": "a"})
    swapped_rows.to_csv(rows.replace("rows", "swapped"), index=False)
    swapped = api.predict(pair_task, run, rows.replace("rows", "swapped")).set_index("pair_id")["pred"]
    with_tta = api.predict(pair_task, run, rows, tta=True).set_index("pair_id")["pred"]
    assert not np.allclose(plain, swapped), "the toy model is not symmetric: swapping must matter"
    assert np.allclose(with_tta, (plain + swapped) / 2, atol=1e-6)


def test_a_tuned_threshold_is_saved_used_by_submit_and_re_tuned_by_a_blend(pair_task):
    run = api.train(pair_task, pair_task.config(["run_name=cut"]))
    metrics, threshold = run.metrics(), run.threshold()
    oof = pd.read_csv(run.oof_path)
    accuracy = get_metric("accuracy")
    assert threshold is not None and metrics["threshold"] == threshold
    assert metrics["cv"] == pytest.approx(accuracy(oof.target, (oof.pred >= threshold).astype(float)))
    assert metrics["cv"] >= metrics["cv_at_0.5"]
    submission = pd.read_csv(api.submit(pair_task, run))
    preds = pd.read_csv(run.test_preds_path).set_index("pair_id")["pred"]
    assert list(submission.similar) == list((preds.loc[submission.pair_id] >= threshold).astype(int))

    other = api.train(pair_task, pair_task.config(["run_name=cut2", "seed=7"]))
    blend = ensemble.blend(pair_task, [run, other], "cut-blend")
    blended = pd.read_csv(blend.oof_path)
    assert blend.threshold() == pytest.approx(tune_threshold(blended.target.to_numpy(), blended.pred.to_numpy(),
                                                             accuracy))
    assert json.loads(blend.blend_path.read_text())["runs"]
    submission = pd.read_csv(api.submit(pair_task, blend))
    preds = pd.read_csv(blend.test_preds_path).set_index("pair_id")["pred"]
    again = api.predict(pair_task, blend).set_index("pair_id")["pred"]  # a blend predicts through its runs
    assert np.allclose(again.loc[preds.index], preds)
    assert list(submission.similar) == list((preds.loc[submission.pair_id] >= blend.threshold()).astype(int))


def test_seed_averaging_two_seeds_share_folds_and_blend(pair_task):
    a = api.train(pair_task, pair_task.config(["run_name=s1", "seed=1"]))
    b = api.train(pair_task, pair_task.config(["run_name=s2", "seed=2"]))
    assert a.folds_path.read_text() == b.folds_path.read_text(), "the split follows fold_seed, not seed"
    assert not pd.read_csv(a.oof_path).pred.equals(pd.read_csv(b.oof_path).pred)
    blend = ensemble.command(pair_task, ["runs=s1 s2", "run_name=seeds"])
    assert blend.metrics()["cv"] >= max(a.metrics()["cv"], b.metrics()["cv"]) - 1e-12
    moved = api.train(pair_task, pair_task.config(["run_name=s3", "fold_seed=5"]))
    assert moved.folds_path.read_text() != a.folds_path.read_text()
    copied = api.train(pair_task, pair_task.config(["run_name=s4", "fold_seed=5", "folds_from=s1"]))
    assert copied.folds_path.read_text() == a.folds_path.read_text()


def test_the_function_api_runs_train_predict_submit_in_one_process_without_argv(pair_task, monkeypatch):
    monkeypatch.setattr("sys.argv", ["not-an-argument-list-anyone-reads"])
    run = api.train(pair_task, pair_task.config(["run_name=api", "epochs=1"]))
    preds = api.predict(pair_task, "api")
    path = api.submit(pair_task, run, out="sub.csv")
    assert len(preds) == 40 and list(preds.columns) == ["pair_id", "pred"]
    assert pd.read_csv(path).similar.isin([0, 1]).all()
    with pytest.raises(NotFound, match="run runs/pairs/nope not found"):  # a UserError, not SystemExit
        api.predict(pair_task, "nope")


class Killed(Exception):
    pass


def test_mid_epoch_resume_gives_the_same_oof_as_an_uninterrupted_run(pair_task):
    common = ["folds=2", "train_folds=[0]", "epochs=2", "checkpoint_every=3", "batch_size=8"]
    full = api.train(pair_task, pair_task.config(["run_name=whole", *common]))

    steps = {"n": 0}
    original = PairTask.train_loss

    def dies_at_step_5(self, cfg, model, batch, loss_fn):
        steps["n"] += 1
        if steps["n"] == 5:  # after the checkpoint at step 3, in the middle of epoch 1
            raise Killed
        return original(self, cfg, model, batch, loss_fn)
    PairTask.train_loss = dies_at_step_5
    try:
        with pytest.raises(Killed):
            api.train(pair_task, pair_task.config(["run_name=killed", *common]))
    finally:
        PairTask.train_loss = original
    state = json.loads((Path("runs/pairs/killed/fold0/last/trainer_state.json")).read_text())
    assert (state["epoch"], state["batch"], state["step"]) == (0, 3, 3)
    resumed = api.train(pair_task, pair_task.config(["run_name=killed", *common]))
    a, b = pd.read_csv(full.oof_path), pd.read_csv(resumed.oof_path)
    assert np.array_equal(a.pred.to_numpy(), b.pred.to_numpy()), "bit-for-bit on the CPU"
    assert resumed.metrics()["cv"] == full.metrics()["cv"]


# ---- an image + tabular regression -----------------------------------------------------------------------
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


@pytest.fixture
def growth_toy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    data = tmp_path / "growth"
    data.mkdir()
    rows = []
    for i in range(24):
        green = int(rng.integers(40, 250))
        image = np.zeros((16, 16, 3), np.uint8)
        image[4:12, 1:7, 1] = green  # off-centre: a flipped view differs
        image[:, :, 2] = np.linspace(0, 255, 16, dtype=np.uint8)
        cv2.imwrite(str(data / f"{i}.png"), image)
        rows.append({"img": f"{i}.png", "case": i % 4, "t": rng.normal(20, 3), "h": rng.normal(60, 5),
                     "weight": 1 + green / 10})
    pd.DataFrame(rows).to_csv(data / "train.csv", index=False)
    config = tmp_path / "growth.yaml"
    config.write_text(f"data_dir: {data}\nmodel: resnet18\nimage_size: 16\nepochs: 2\nbatch_size: 8\nfolds: 2\n"
                      f"lr: 1.0e-2\nwarmup: 0.0\ngradcam_layer: conv\n")
    return GrowthToy(config)


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
