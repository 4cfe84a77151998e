"""Fall Armyworm end to end on the real images (../shared/data/armyworm, downscaled to 384 px): a few dozen leaves at
64 px, 3 epochs, 2 folds, with the offline tf_efficientnet_lite0 (enough to learn: OOF AUC 0.81 where 1 step per fold
gave 0.61); then submission, any-list inference, Grad-CAM."""
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from common import cli
from common.cli import gradcam as gradcam_command
from common.gradcam import explain
from common.io import DataError
from common.runs import Run
from competitions.armyworm import demo
from competitions.armyworm.task import ArmywormTask
from tests.conftest import shared_data

TASK = ArmywormTask()
QUICK = ["limit=48", "image_size=64", "epochs=3", "folds=2", "batch_size=8"]


def test_train_submit_infer_and_gradcam_end_to_end(workdir):
    data = shared_data("armyworm")
    cli.train(TASK, [f"data_dir={data}", "run_name=e2e", *QUICK])
    run = Run(workdir / "runs/armyworm/e2e")
    for name in ["folds.csv", "fold0/model.safetensors", "fold1/model.safetensors", "plots/roc_curve.png",
                 "plots/learning_curves.png"]:
        assert (run.dir / name).is_file(), name

    # AUC on the out-of-fold probabilities, stratified folds.
    oof = pd.read_csv(run.oof_path)
    assert list(oof.columns) == ["Image_id", "fold", "target", "pred"] and len(oof) == 48
    assert oof["pred"].between(0, 1).all()
    per_fold = oof.groupby("fold")["target"].mean()
    assert (per_fold - oof["target"].mean()).abs().max() < 0.05, "folds are not stratified on Label"
    metrics = run.metrics()
    assert metrics["metric"] == "roc_auc" and metrics["greater_is_better"] is True
    assert metrics["cv"] == pytest.approx(roc_auc_score(oof["target"], oof["pred"]))
    assert metrics["cv"] > 0.6, "the model did not learn"
    assert metrics["folds"] == pytest.approx([roc_auc_score(g["target"], g["pred"]) for _, g in oof.groupby("fold")])

    # Submission: the sample file row for row, its target column (this copy says Label) holding probabilities.
    sub = pd.read_csv(cli.submit(TASK, ["run_name=e2e", "tta=false", "batch_size=64"]))
    sample = pd.read_csv(data / "SampleSubmission.csv")
    assert list(sub.columns) == list(sample.columns) == ["Image_id", "Label"]
    assert (sub["Image_id"] == sample["Image_id"]).all()
    assert sub["Label"].between(0, 1).all() and sub["Label"].nunique() > 100

    # Any list of leaves (here labelled rows), images found through image_dir=, written to out=, with ttach TTA.
    few = pd.read_csv(data / "Train.csv").iloc[:6]
    (workdir / "leaves").mkdir()
    for name in few["Image_id"]:
        shutil.copy(data / "Images" / name, workdir / "leaves" / name)
    few.to_csv(workdir / "few.csv", index=False)
    args = ["run_name=e2e", f"test_file={workdir}/few.csv", f"image_dir={workdir}/leaves"]
    with_tta = pd.read_csv(cli.infer(TASK, [*args, "tta=true", f"out={workdir}/few_tta.csv"]))
    plain = pd.read_csv(cli.infer(TASK, [*args, "tta=false", f"out={workdir}/few_plain.csv"]))
    assert list(with_tta.columns) == ["Image_id", "Label"] and list(with_tta["Image_id"]) == list(few["Image_id"])
    assert with_tta["Label"].between(0, 1).all()
    assert not np.allclose(with_tta["Label"], plain["Label"]), "tta=true did not change the predictions"

    # Grad-CAM: overlays of the model's input size in four groups, one sheet per group, and a second run
    # (another input size and the paper's Dropout(0.4) head) compared on the same images.
    cli.train(TASK, [f"data_dir={data}", "run_name=e2e96", *QUICK, "image_size=96", "head_dropout=0.4", "epochs=1"])
    out = gradcam_command(TASK, ["run_name=e2e", "run2=e2e96", "n=3"])
    overlays = sorted(out.glob("*/*.png"))
    assert overlays and {p.parent.name for p in overlays} <= {"correct_1", "correct_0", "false_negative",
                                                               "false_positive"}
    for p in overlays:
        assert Image.open(p).size == (64, 64), p
        assert (out / f"{p.parent.name}.png").is_file()
    assert (out / "compare_e2e96.png").is_file()

    # The heatmaps themselves: input-sized, scaled to [0, 1], not constant.
    cfg = run.config()
    inputs, cams = explain(TASK, run, cfg, oof, (oof["pred"] >= 0.5).astype(int).to_numpy(), TASK.load_train(cfg))
    assert inputs.shape == (48, 64, 64, 3) and cams.shape == (48, 64, 64)
    spread = cams.std(axis=(1, 2))
    assert (spread > 0).mean() >= 0.5, "most heatmaps are flat"
    assert np.allclose(cams[spread > 0].max(axis=(1, 2)), 1, atol=1e-5)


def test_submission_target_column_comes_from_the_sample_file(tmp_path):
    # Zindi's SampleSubmission.csv says Target, re-uploads say Label: read it from the file.
    demo.make_dataset(tmp_path, n_train=6, n_test=3)
    cfg = TASK.config([f"data_dir={tmp_path}"])
    assert TASK.submission_columns(cfg) == ("Image_id", "Target")
    assert TASK.test_path(cfg) == tmp_path / "Test.csv"
    train = TASK.load_train(cfg)
    assert len(train) == 6 and set(train["Label"]) <= {0, 1}
    assert len(TASK.load_test(cfg, TASK.test_path(cfg))) == 3


def test_paper_setups_load_as_experiments():
    for name, model in [("resnet50", "resnet50"), ("efficientnet_b0", "efficientnet_b0")]:
        cfg = TASK.config([f"experiment={name}"])
        assert (cfg.model, cfg.image_size, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.epochs) == \
            (model, 224, 32, "adam", 1e-3, 25)
    assert TASK.config(["experiment=resnet50", "head_dropout=0.4"]).head_dropout == 0.4
    assert TASK.config([]).model == "tf_efficientnet_lite0"  # the CPU default has offline weights


@pytest.mark.parametrize("train_csv, message", [
    ("Image_id,Label\nid_a.jpg,1\nid_b.jpg,2\n", r"Train.csv: column 'Label' must be 0 or 1; 1 row\(s\).*row 2: '2'"),
    ("Image_id,Label\nid_a.jpg,yes\n", r"column 'Label' must be 0 or 1"),
    ("Image_id,Target\nid_a.jpg,1\n", r"Train.csv: missing column\(s\) 'Label'"),
    ("Image_id,Label\nid_a.jpg,1\nid_zz.jpg,0\n", r"Train.csv: 1 image\(s\) missing on disk.*id_zz.jpg \(data row 2\)"),
])
def test_bad_train_file_is_named(tmp_path, train_csv, message):
    demo.make_dataset(tmp_path, n_train=2, n_test=1)
    (tmp_path / "Images" / "id_00000.jpg").rename(tmp_path / "Images" / "id_a.jpg")
    (tmp_path / "Images" / "id_00001.jpg").rename(tmp_path / "Images" / "id_b.jpg")
    (tmp_path / "Train.csv").write_text(train_csv)
    with pytest.raises(DataError, match=message):
        TASK.load_train(TASK.config([f"data_dir={tmp_path}"]))
