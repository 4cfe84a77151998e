"""Optuna on a real PostgreSQL server (tune.storage=postgresql://...): two workers sharing one study, workers killed
with SIGKILL mid-trial (on this machine, and "on another machine", found dead by the heartbeat), best.yaml.

The server: KIT_POSTGRES_URL (what .ci/run exports), else a throw-away one started here with .ci/postgres.sh;
skipped, saying why, where neither is possible. Workers are real `tune` processes on the toy competition
(tests/toykit.py); each study gets a fresh name, so a server kept between runs does no harm."""
import os
import socket
import subprocess
import uuid

import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from tests import toykit
from tests.conftest import REPO

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(scope="module")
def postgres_url():
    if os.environ.get("KIT_POSTGRES_URL"):
        yield os.environ["KIT_POSTGRES_URL"]
        return
    started = subprocess.run(["bash", str(REPO / ".ci/postgres.sh"), "start"], capture_output=True, text=True,
                             timeout=120)
    if started.returncode != 0:
        reason = (started.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"no PostgreSQL: KIT_POSTGRES_URL is unset and no throw-away server could be started ({reason}); "
                    f".ci/run installs and starts one")
    values = dict(line.split("=", 1) for line in started.stdout.split())
    try:
        yield values["KIT_POSTGRES_URL"]
    finally:
        subprocess.run(["bash", str(REPO / ".ci/postgres.sh"), "stop", values["KIT_POSTGRES_DIR"]], timeout=120)


@pytest.fixture
def toy_data(workdir):
    return toykit.make_data(workdir / "data")


def tune_args(data, study, url, *extra):
    return ["toy", "tune", f"data_dir={data}", "folds=2", "epochs=2", f"run_name={study}", f"tune.storage={url}",
            "tune.pruner=none", *extra]


def load(study, url):
    return optuna.load_study(study_name=study, storage=url)


def check_best_yaml(workdir, study_name, url):
    study = load(study_name, url)
    best = study.best_trial
    text = (workdir / f"runs/toy/{study_name}/best.yaml").read_text()
    assert f"trial {best.number} ({best.user_attrs['run_name']})" in text
    assert OmegaConf.create(text).lr == pytest.approx(best.params["lr"], rel=1e-12)
    assert study.best_value == max(t.value for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_two_workers_share_one_postgres_study_and_finish_exactly_n_trials(workdir, toy_data, postgres_url):
    study = f"pg-duo-{uuid.uuid4().hex[:8]}"
    args = tune_args(toy_data, study, postgres_url, "tune.n_trials=4", "step_sleep=0.4")  # ~5 s a trial
    workers = [toykit.popen(workdir, *args) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out[-3000:]

    trials = load(study, postgres_url).get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 4, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.user_attrs["pid"] for t in finished}) == 2, "both workers ran trials"
    run_names = sorted(t.user_attrs["run_name"] for t in finished)
    assert len(set(run_names)) == 4, "no trial ran twice"
    trained = sorted(p.parent.name for p in (workdir / "runs/toy").glob(f"{study}-t*/metrics.json"))
    assert trained == run_names, "every finished trial is a run folder, and nothing else was trained"
    check_best_yaml(workdir, study, postgres_url)


def test_killed_workers_leave_trials_that_the_next_invocation_retries(workdir, toy_data, postgres_url):
    """A worker SIGKILLed mid-trial on "another machine" (its pid means nothing here; found dead by its missing
    heartbeat), then one killed on this machine (found dead by its pid): each next invocation retries the killed
    trial in its run folder, resuming after its last epoch, and the study ends with exactly n_trials finished."""
    study = f"pg-kill-{uuid.uuid4().hex[:8]}"
    args = tune_args(toy_data, study, postgres_url, "tune.n_trials=3")
    # 48 training rows / batch 8 = 6 steps an epoch, 12 a trial: step 21 is in trial 1's second epoch.
    elsewhere = toykit.run(workdir, *args, KIT_KILL="step:21", KIT_HOSTNAME="other-machine")
    assert elsewhere.returncode == -9, elsewhere.stdout[-3000:]
    stale = load(study, postgres_url).get_trials()
    assert [t.state for t in stale] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert stale[1].user_attrs["host"] == "other-machine" != socket.gethostname()

    # This machine, with a 3 s grace period (its start alone takes longer): Optuna's heartbeat check fails trial 1
    # and queues it; this worker retries it (6 steps left), then dies in trial 3's second epoch (step 6 + 8).
    here = toykit.run(workdir, *args, "tune.heartbeat=1", "tune.grace_period=3", KIT_KILL="step:14")
    assert here.returncode == -9, here.stdout[-3000:]
    assert "fold 0: resuming after epoch 1" in here.stdout
    trials = load(study, postgres_url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.RUNNING]
    retry = trials[2]
    assert retry.params == trials[1].params and retry.system_attrs["failed_trial"] == 1  # Optuna's retry
    assert retry.user_attrs["run_name"] == f"{study}-t1", "retried in the killed trial's run folder"

    last = toykit.run(workdir, *args)  # default grace period (180 s): the dead pid on this host is what tells
    assert last.returncode == 0, last.stdout[-3000:]
    assert f"trial 3 ({study}-t3) was killed with its process; queued for retry" in last.stdout
    assert "fold 0: resuming after epoch 1" in last.stdout
    trials = load(study, postgres_url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.FAIL, TrialState.COMPLETE]
    assert trials[4].params == trials[3].params and trials[4].user_attrs["run_name"] == f"{study}-t3"
    for run in (f"{study}-t1", f"{study}-t3"):
        assert list(pd.read_csv(workdir / f"runs/toy/{run}/fold0/history.csv")["epoch"]) == [1, 2]
    check_best_yaml(workdir, study, postgres_url)
