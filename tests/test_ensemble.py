"""Ensembling on two real tiny USPPPM runs (120 rows, 2 folds, 1 epoch), and the weight and threshold searches
on synthetic predictions."""
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from common import api, cli, ensemble
from common.errors import ConfigError
from common.metrics import get_metric, tune_threshold
from common.submission import validate
from competitions.__main__ import main
from competitions.usppm.task import UsppmTask
from tests.conftest import shared_data

TASK = UsppmTask()


def metrics(runs_dir, name):
    return json.loads((runs_dir / "usppm" / name / "metrics.json").read_text())


def test_the_blend_scores_at_least_the_better_run_and_can_be_submitted(two_runs, workdir, capsys):
    result = cli.ensemble(TASK, ["runs=a b", "run_name=blend", f"runs_dir={two_runs}"])
    report = capsys.readouterr().out
    blend_dir = two_runs / "usppm/blend"
    saved = metrics(two_runs, "blend")
    assert saved == result.metrics() and result.dir == blend_dir
    recipe = json.loads((blend_dir / "blend.json").read_text())  # the recipe has its own file
    run_cv = {name: metrics(two_runs, name)["cv"] for name in "ab"}
    assert recipe["run_cv"] == pytest.approx(run_cv)
    assert saved["cv"] >= max(run_cv.values()) - 1e-12, "the blend must not be worse than its better run on OOF"
    weights = recipe["weights"]
    assert set(weights) <= {"a", "b"} and sum(weights.values()) == pytest.approx(1, abs=1e-5)
    for name in ["a", "b", "blend"]:  # the report names each run with its CV, and the blend's
        assert re.search(rf"^\s+{name}\s+-?\d\.\d{{5}}", report, re.M), report

    oof = pd.read_csv(blend_dir / "oof.csv")
    assert len(oof) == 120 and get_metric("pearson")(oof["target"], oof[["pred"]]) == pytest.approx(saved["cv"])
    # The test predictions are the same weighted mean of the runs' own test predictions.
    tests = {n: pd.read_csv(two_runs / f"usppm/{n}/test_preds.csv").set_index("id")["pred"] for n in weights}
    expected = sum(w * tests[n] for n, w in weights.items())
    blended = pd.read_csv(blend_dir / "test_preds.csv").set_index("id")["pred"]
    assert np.allclose(blended, expected.loc[blended.index])

    submission = cli.submit(TASK, ["run_name=blend", f"runs_dir={two_runs}"])
    validate(submission, shared_data("usppm") / "sample_submission.csv")
    with pytest.raises(ConfigError, match="is a blend: rescore its runs, then blend them again"):
        cli.rescore(TASK, ["run_name=blend", f"runs_dir={two_runs}"])


def test_rescoring_a_text_run_as_trained_gives_back_its_cv(two_runs, workdir):
    path, scores = api.rescore(TASK, "a", runs_dir=two_runs)
    assert path == two_runs / "usppm/a/oof_again.csv"
    assert scores["cv"] == pytest.approx(metrics(two_runs, "a")["cv"], abs=1e-6)


@pytest.mark.parametrize("args", [["rank=true"], ["method=scipy"], ["method=hill"], ["method=mean"]])
def test_rank_averaging_and_each_weight_search(two_runs, workdir, args):
    name = "blend-" + "-".join(a.split("=")[1] for a in args)
    cli.ensemble(TASK, ["runs=a b", f"run_name={name}", f"runs_dir={two_runs}", *args])
    saved = metrics(two_runs, name)
    recipe = json.loads((two_runs / f"usppm/{name}/blend.json").read_text())
    assert recipe["rank"] == ("rank=true" in args)
    assert sum(recipe["weights"].values()) == pytest.approx(1, abs=1e-5)
    if "rank=true" in args:  # ranks scaled to (0, 1]
        preds = pd.read_csv(two_runs / f"usppm/{name}/test_preds.csv")["pred"]
        assert preds.between(0, 1).all() and preds.max() == pytest.approx(1)
    if "method=hill" in args:  # hill climbing starts from the better run: never below it
        assert saved["cv"] >= max(recipe["run_cv"].values()) - 1e-12
    if "method=mean" in args:  # equal weights, nothing searched
        assert recipe["weights"] == {"a": 0.5, "b": 0.5} and recipe["method"] == "mean"


def test_runs_on_other_folds_are_refused_by_name(two_runs, workdir, capsys):
    other = two_runs / "usppm/b-shifted"
    shutil.copytree(two_runs / "usppm/b", other)
    folds = pd.read_csv(other / "folds.csv")
    folds["fold"] = 1 - folds["fold"]
    folds.to_csv(other / "folds.csv", index=False)
    with pytest.raises(SystemExit) as exit_info:  # the command line: one line, exit 2
        main(["usppm", "ensemble", "runs=a b-shifted", "run_name=refused", f"runs_dir={two_runs}"])
    assert exit_info.value.code == 2
    assert "run b-shifted does not share the folds of run a (120 of 120 rows" in capsys.readouterr().err
    assert not (two_runs / "usppm/refused").exists()


@pytest.mark.parametrize("args, message", [
    (["runs=a"], "two or more different runs"),
    (["runs=a a"], "two or more different runs"),
    (["runs=a nope"], "run .*nope not found"),
    (["runs=a b", "method=magic"], "method must be auto, scipy, hill or mean"),
    (["runs=a b", "weights=1"], "unknown config key 'weights'"),
    (["runs=a b", "run_name=a"], "is a trained run, not a blend"),
    (["runs=a b", "class_bias=true"], "class_bias=true is for multiclass tasks scored on labels; usppm is regression"),
])
def test_bad_ensemble_arguments_are_named(two_runs, workdir, capsys, args, message):
    with pytest.raises(SystemExit):
        main(["usppm", "ensemble", *args, f"runs_dir={two_runs}"])
    assert re.search(message, capsys.readouterr().err)


def test_hill_climbing_finds_the_complementary_blend_for_a_ranking_metric():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    signal = y + rng.normal(0, 1, len(y))
    half_noise = [signal + rng.normal(0, 2, len(y)) for _ in range(2)]  # two noisy views of the same signal
    preds = [p.reshape(-1, 1) for p in [*half_noise, rng.normal(size=len(y))]]  # and one useless run
    auc = get_metric("roc_auc")
    w, method = ensemble.search_weights(y, preds, auc, "auto")
    assert w.min() >= 0 and w.sum() == pytest.approx(1)
    assert w[0] > 0.2 and w[1] > 0.2 and w[2] < 0.1, w
    assert auc(y, ensemble.combine(preds, w)) > max(auc(y, p) for p in preds) + 0.02


def test_a_blend_made_before_threshold_json_is_applied_as_it_was_made():
    """Old blends moved their tuned cut t onto 0.5 (recipe key `threshold`); they still predict the same labels."""
    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.3).astype(int)
    p = np.clip(0.25 * y + rng.normal(0.2, 0.1, len(y)), 0, 1)  # calibrated badly: the best cut is far below 0.5
    accuracy = get_metric("accuracy")
    t = tune_threshold(y, p, accuracy)
    assert 0.2 < t < 0.45 and accuracy(y, (p >= t).astype(float)) > accuracy(y, p) + 0.1
    moved = ensemble.move_threshold(p, t)
    assert accuracy(y, moved) == pytest.approx(accuracy(y, (p >= t).astype(float)))
    assert np.all(np.diff(moved[np.argsort(p)]) >= 0), "the order of the predictions is kept"
    spec = {"runs": ["x"], "weights": {"x": 1.0}, "rank": False, "threshold": t}
    assert np.allclose(ensemble.apply_blend([p.reshape(-1, 1)], spec)[:, 0], moved)
