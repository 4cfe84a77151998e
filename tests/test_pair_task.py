"""A pair task (pure torch, seconds): folds by group over both members, fold state fitted in fit_fold and reloaded,
swap TTA, a tuned threshold, seed averaging. The toy task: tests/toys.py (PairTask); its fixture: conftest.py."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from common import api, cli, ensemble
from common.io import read_json
from common.metrics import get_metric, score_with_cut_from_other_folds, tune_threshold


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
    assert metrics["cv_cut_from_other_folds"] == pytest.approx(score_with_cut_from_other_folds(
        accuracy, oof.target.to_numpy(), oof.pred.to_numpy(), oof.fold.to_numpy()))
    submission = pd.read_csv(api.submit(pair_task, run))
    preds = pd.read_csv(run.test_preds_path).set_index("pair_id")["pred"]
    assert list(submission.similar) == list((preds.loc[submission.pair_id] >= threshold).astype(int))

    other = api.train(pair_task, pair_task.config(["run_name=cut2", "seed=7"]))
    blend = ensemble.blend(pair_task, [run, other], "cut-blend")
    blended = pd.read_csv(blend.oof_path)
    assert blend.threshold() == pytest.approx(tune_threshold(blended.target.to_numpy(), blended.pred.to_numpy(),
                                                             accuracy))
    assert json.loads(blend.blend_path.read_text())["runs"]
    assert blend.metrics()["cv_cut_from_other_folds"] == pytest.approx(score_with_cut_from_other_folds(
        accuracy, blended.target.to_numpy(), blended.pred.to_numpy(), blended.fold.to_numpy()))
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
    blend = cli.ensemble(pair_task, ["runs=s1 s2", "run_name=seeds"])
    assert blend.metrics()["cv"] >= max(a.metrics()["cv"], b.metrics()["cv"]) - 1e-12
    moved = api.train(pair_task, pair_task.config(["run_name=s3", "fold_seed=5"]))
    assert moved.folds_path.read_text() != a.folds_path.read_text()
    copied = api.train(pair_task, pair_task.config(["run_name=s4", "fold_seed=5", "folds_from=s1"]))
    assert copied.folds_path.read_text() == a.folds_path.read_text()
