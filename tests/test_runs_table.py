"""Runs you can compare: the local leaderboard of runs (make <c>-runs), trackers through Accelerate (TensorBoard and
MLflow written and read back with their own readers), optuna-dashboard answering on loopback."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pandas as pd
import pytest

from common import api, cli, leaderboard
from common.errors import ConfigError
from common.metrics import accuracy, get_metric, tune_threshold
from common.runs import Run
from tests.conftest import REPO


def test_the_runs_table_is_best_first_shows_what_differs_and_never_scores_an_unfinished_run(pair_task, capsys):
    a = api.train(pair_task, pair_task.config(["run_name=a", "epochs=2"]))
    b = api.train(pair_task, pair_task.config(["run_name=b", "epochs=2", "lr=5e-2", "seed=3"]))
    api.ensemble(pair_task, [a, b], "blend")  # the blend and its test predictions
    shutil.copytree(a.dir, a.dir.parent / "killed")          # as a killed run leaves it: no metrics, 2 of 3 folds
    (a.dir.parent / "killed/metrics.json").unlink()
    (a.dir.parent / "killed/fold2/done.json").unlink()
    api.submit(pair_task, b)

    capsys.readouterr()  # the training's lines: what follows is the table's print alone
    table = cli.runs(pair_task, [])
    printed = capsys.readouterr().out
    finished = table[table.status != "unfinished (2/3 folds)"]
    assert list(finished.cv) == sorted(finished.cv, reverse=True), "accuracy: higher first"
    killed = table.set_index("run").loc["killed"]
    assert table.run.iloc[-1] == "killed" and pd.isna(killed.cv) and killed.folds == ""
    assert "unfinished (2/3 folds)" in printed
    assert {"lr", "seed"} <= set(table.columns) and not {"data_dir", "run_name", "folds_from"} & set(table.columns)
    rows = table.set_index("run")
    assert rows.loc["b", "lr"] == 0.05 and rows.loc["a", "lr"] == 0.02
    assert rows.loc["b", "submission"] and not rows.loc["a", "submission"] and rows.loc["blend", "test_preds"]
    weights = Run(a.dir.parent / "blend").blend_spec()["weights"]
    assert rows.loc["blend", "blend"] == ", ".join(f"{n} {w:.2f}" for n, w in weights.items())
    assert rows.loc["blend", "status"] == "blend"
    assert rows.loc["a", "folds"] == ", ".join(f"{s:.4f}" for s in a.metrics()["folds"])
    assert "cv_last" in printed.splitlines()[1] and pd.isna(rows.loc["blend", "cv_last"])
    # cv_last: the folds' last-epoch OOF, cut where it scores best, as the CV's own OOF is (a thresholded task)
    last = pd.concat([pd.read_csv(a.fold_dir(f) / "oof_last.csv") for f in range(3)])
    cut = tune_threshold(last["target"].to_numpy(), last["pred"].to_numpy(), get_metric("accuracy"))
    assert rows.loc["a", "cv_last"] == pytest.approx(accuracy(last["target"], last["pred"] >= cut))

    only = cli.runs(pair_task, ["where=status == 'finished' and lr < 0.03", "top=1", "out=runs.csv"])
    assert list(only.run) == ["a"] and pd.read_csv("runs.csv").run.tolist() == ["a"]
    assert "lr" not in only.columns, "a key that does not differ between the runs shown is not a column"
    by_lr = leaderboard.runs_table(pair_task, sort="-lr", where="status == 'finished'")
    assert list(by_lr.run[:2]) == ["b", "a"]
    with pytest.raises(ConfigError, match="sort='nope': no such column"):
        leaderboard.runs_table(pair_task, sort="nope")


def test_a_lower_is_better_metric_sorts_ascending(growth_toy):
    api.train(growth_toy, growth_toy.config(["run_name=slow", "lr=1e-3", "epochs=1"]))
    api.train(growth_toy, growth_toy.config(["run_name=fast", "lr=3e-2", "epochs=2"]))
    table = leaderboard.runs_table(growth_toy)
    assert list(table.cv) == sorted(table.cv) and {"lr", "epochs"} <= set(table.columns)


def test_tensorboard_events_and_an_mlflow_run_are_written_and_read_back(pair_task):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = api.train(pair_task, pair_task.config(["run_name=tb", "epochs=2", "tracker=tensorboard"]))
    events = EventAccumulator(str(run.dir / "tensorboard" / "pairs"))  # the scalars; hparams sit in a subfolder
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"fold0/train_loss", "fold0/lr", "fold2/valid_accuracy", "cv"} <= tags
    assert len(events.Scalars("fold1/valid_accuracy")) == 2                       # one per epoch
    assert events.Scalars("cv")[0].value == pytest.approx(run.metrics()["cv"])

    from mlflow.tracking import MlflowClient
    run = api.train(pair_task, pair_task.config(["run_name=ml", "epochs=2", "tracker=mlflow"]))
    client = MlflowClient(f"sqlite:///{(run.dir / 'mlflow.db').resolve()}")
    (logged,) = client.search_runs([client.get_experiment_by_name("pairs").experiment_id])
    assert logged.info.run_name == "ml" and logged.data.params["lr"] == "0.02"
    assert logged.data.metrics["cv"] == pytest.approx(run.metrics()["cv"])
    assert len(client.get_metric_history(logged.info.run_id, "fold0/valid_accuracy")) == 2


def test_wandb_without_set_up_says_what_to_do(pair_task, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(pair_task.config_path.parent))  # no ~/.netrc
    with pytest.raises(ConfigError, match="tracker=wandb (needs the wandb package|: no W&B login)"):
        api.train(pair_task, pair_task.config(["run_name=wb", "tracker=wandb"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_dashboard_serves_the_study_on_loopback_and_stops(tmp_path):
    study_dir = tmp_path / "runs/usppm/st"
    study_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="st", storage=f"sqlite:///{study_dir / 'study.db'}")
    study.optimize(lambda t: t.suggest_float("lr", 1e-5, 1e-3, log=True), n_trials=3)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-m", "competitions", "usppm", "dashboard", "run_name=st",
                               f"port={port}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert f"http://127.0.0.1:{port}/" in server.stdout.readline()
        deadline, status = time.time() + 60, None
        while time.time() < deadline and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    status, body = response.status, response.read().decode()
            except OSError:
                time.sleep(0.5)
        assert status == 200 and '"st"' in body
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode is not None
