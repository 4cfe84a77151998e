"""Optuna studies on the real USPPPM sample: two workers on one journal, a killed study resuming, pruning.
Trials are tiny (60 rows, one fold of two, max_len 16)."""
import os
import re
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from common import tune
from common import cli
from common.config import command_section
from common.metrics import pearson
from competitions.__main__ import main
from competitions.usppm.task import UsppmTask
from tests.conftest import REPO, shared_data
from tests.toykit import ToyTask, make_data

TASK = UsppmTask()
TINY = ["limit=60", "folds=2", "max_len=16", "batch_size=32"]


def tune_command(workdir, *args):
    """The tune command line in a fresh process (as `make usppm-tune` runs it), in workdir."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "competitions", "usppm", "tune", f"data_dir={shared_data('usppm')}", *TINY, *args]
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def journal_study(workdir, name):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(workdir / f"runs/usppm/{name}/journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


def finished(study):
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_two_workers_on_one_journal_finish_exactly_n_trials(workdir):
    args = ["epochs=1", "run_name=duo", "tune.storage=journal", "tune.n_trials=4", "tune.pruner=none"]
    workers = [tune_command(workdir, *args) for _ in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out[-3000:]

    study = journal_study(workdir, "duo")
    done = finished(study)
    assert len(done) == 4, [(t.number, t.state) for t in study.get_trials()]
    assert not [t for t in study.get_trials() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.user_attrs["pid"] for t in done}) == 2, "both workers ran trials"
    run_names = [t.user_attrs["run_name"] for t in done]
    assert len(set(run_names)) == 4, "no trial ran twice"
    trained = sorted(p.parent.name for p in (workdir / "runs/usppm").glob("duo-t*/metrics.json"))
    assert trained == sorted(run_names), "every finished trial is a run folder, and nothing else was trained"

    study_folds = pd.read_csv(workdir / "runs/usppm/duo/folds.csv")
    for t in done:
        run = workdir / "runs/usppm" / t.user_attrs["run_name"]
        assert pd.read_csv(run / "folds.csv").equals(study_folds), "trials share the study's folds"
        assert pd.read_json(run / "metrics.json", typ="series")["cv"] == pytest.approx(t.value)
    for plot in ["history", "param_importances", "parallel_coordinate"]:
        assert (workdir / f"runs/usppm/duo/plots/{plot}.png").stat().st_size > 10_000, plot
    best = TASK.config([f"experiment={workdir / 'runs/usppm/duo/best.yaml'}"])
    assert best.lr == pytest.approx(study.best_params["lr"]) and best.pooling == study.best_params["pooling"]


def test_a_killed_study_resumes_and_retries_the_killed_trial_where_it_stopped(workdir):
    args = ["epochs=2", "run_name=res", "tune.storage=journal", "tune.n_trials=2", "tune.pruner=none"]
    worker = tune_command(workdir, *args)
    epoch_1_of_trial_1 = workdir / "runs/usppm/res-t1/fold0/last/trainer_state.json"
    deadline = time.time() + 600
    while not epoch_1_of_trial_1.is_file():
        assert worker.poll() is None, worker.communicate()[0][-3000:]
        assert time.time() < deadline, "trial 1 never finished its first epoch"
        time.sleep(0.2)
    worker.kill()  # SIGKILL: no handler runs, the trial stays RUNNING in the journal
    worker.wait()
    assert [t.state for t in journal_study(workdir, "res").get_trials()] == [TrialState.COMPLETE, TrialState.RUNNING]

    again = tune_command(workdir, *args)
    out = again.communicate(timeout=900)[0]
    assert again.returncode == 0, out[-3000:]
    assert "trial 1 (res-t1) was killed with its process; queued for retry" in out
    trials = journal_study(workdir, "res").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["run_name"] == "res-t1"
    history = pd.read_csv(workdir / "runs/usppm/res-t1/fold0/history.csv")
    assert list(history["epoch"]) == [1, 2], "the retry resumed after epoch 1 instead of starting over"
    assert "fold 0: resuming after epoch 1" in out


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # optuna on the diverged trial's NaN scores: expected
def test_a_diverging_trial_is_pruned_after_its_first_epoch(workdir):
    data = shared_data("usppm")
    cfg = OmegaConf.load(TASK.config_path)
    cfg.tune.space = {"lr": {"type": "float", "low": 1e-6, "high": 1e11, "log": True},
                      "head_lr": {"type": "float", "low": 1e-6, "high": 1e11, "log": True}}
    config = workdir / "config.yaml"
    OmegaConf.save(cfg, config)
    (workdir / "runs/usppm/prune").mkdir(parents=True)
    study = optuna.create_study(study_name="prune", direction="maximize",
                                storage=f"sqlite:///{workdir / 'runs/usppm/prune/study.db'}")  # tune's default
    study.enqueue_trial({"lr": 1e-4, "head_lr": 1e-3})
    study.enqueue_trial({"lr": 1e10, "head_lr": 1e10})  # diverges: NaN loss, NaN Pearson

    study = cli.tune(TASK, ["--config", str(config), f"data_dir={data}", *TINY, "epochs=2", "run_name=prune",
                             "tune.n_trials=2", "tune.startup_trials=1"])
    good, bad = study.get_trials()
    assert good.state == TrialState.COMPLETE and sorted(good.intermediate_values) == [1, 2]
    assert bad.state == TrialState.PRUNED and sorted(bad.intermediate_values) == [1], "stopped before epoch 2"
    assert list(pd.read_csv(workdir / "runs/usppm/prune-t1/fold0/history.csv")["epoch"]) == [1]
    assert OmegaConf.load(workdir / "runs/usppm/prune/best.yaml").lr == pytest.approx(1e-4)


def test_a_run_trained_from_best_yaml_reports_its_cv_on_the_folds_the_study_did_not_score(workdir, capsys):
    task = ToyTask()  # the toy competition: a study in seconds
    common = [f"data_dir={make_data(workdir / 'data')}", "epochs=1"]
    cli.tune(task, [*common, "run_name=study", "tune.n_trials=2", "tune.pruner=none", "tune.folds=[1]"])
    best = workdir / "runs/toy/study/best.yaml"
    assert OmegaConf.load(best).tuned_on_folds == [1]

    run = cli.train(task, [*common, f"experiment={best}", "run_name=chosen"])
    metrics, oof = run.metrics(), pd.read_csv(run.oof_path)
    other = oof[oof["fold"] != 1]
    assert metrics["tuned_on_folds"] == [1] and sorted(other["fold"].unique()) == [0, 2]
    assert metrics["cv_untuned_folds"] == pytest.approx(pearson(other["target"], other["pred"]))
    assert (f"folds [1] chose this setting; cv on the other folds: {metrics['cv_untuned_folds']:.4f}"
            in capsys.readouterr().out)


def test_a_competition_without_a_tune_section_gets_the_defaults():
    cfg = OmegaConf.create({"lr": 3e-4, "folds": 5})
    settings = command_section("tune", tune.TUNE_DEFAULTS, cfg, {"n_trials": 7, "pruner": "hyperband"})
    assert settings.n_trials == 7 and settings.pruner == "hyperband" and list(settings.folds) == [0]
    (key, dist), = tune.search_space(cfg, settings).items()
    assert key == "lr" and dist.log and dist.low == pytest.approx(3e-5) and dist.high == pytest.approx(3e-3)


@pytest.mark.parametrize("args, message", [
    (["tune.n_trail=3"], "unknown config key 'n_trail'"),
    (["tune.space.seed.type=int", "tune.space.seed.low=1", "tune.space.seed.high=3"], "cannot change 'seed'"),
    (["tune.space.nope.type=int", "tune.space.nope.low=1", "tune.space.nope.high=3"], "'nope' is not a config key"),
    (["tune.space.lr.low=0"], r"tune.space.lr: .* not a valid float range"),
    (["tune.pruner=sometimes"], "tune.pruner must be median, hyperband or none"),
    (["tune.folds=[3]"], r"tune.folds \[3\] must be among the 2 folds"),
])
def test_bad_tune_settings_are_named_and_nothing_is_written(workdir, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:  # the command line: one line, exit 2
        main(["usppm", "tune", f"data_dir={shared_data('usppm')}", "folds=2", *args])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (workdir / "runs").exists()
