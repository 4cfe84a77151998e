"""Shared test set-up: offline hub, the real competition samples in ../shared/data, tiny-run helpers."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # no hub downloads in tests: packaged weights only
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(name: str) -> Path:
    """The real sample of a competition, or skip the test saying why; with KIT_REQUIRE_SHARED_DATA=1 (.ci/run sets
    it) a missing sample fails the test instead, so CI cannot pass by skipping every end-to-end test."""
    path = SHARED_DATA / name
    if not path.is_dir():
        why = f"real {name} sample not found at {path} (set KIT_SHARED_DATA to its parent)"
        if os.environ.get("KIT_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"{why}; KIT_REQUIRE_SHARED_DATA=1 makes that a failure")
        pytest.skip(why)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a temp folder, so runs/ and submissions/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


TINY_USPPM = ["limit=120", "epochs=1", "folds=2", "max_len=16", "batch_size=32"]


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory):
    """runs_dir with two tiny USPPPM runs on the same folds: `a` (mean pooling, BCE) and `b` (CLS pooling, MSE).
    Trained once per session; the ensemble and Kaggle tests share them."""
    from common import cli
    from competitions.usppm.task import UsppmTask

    data = shared_data("usppm")
    runs_dir = tmp_path_factory.mktemp("two-runs")
    common = [f"data_dir={data}", f"runs_dir={runs_dir}", *TINY_USPPM]
    cli.train(UsppmTask(), [*common, "run_name=a"])
    cli.train(UsppmTask(), [*common, "run_name=b", "pooling=cls", "loss=mse", "lr=1e-4"])
    return runs_dir


@pytest.fixture(scope="session")
def one_fold_run(tmp_path_factory):
    """runs_dir with one tiny USPPPM run `one` (MiniLM, fold 0 of 2 trained): the ONNX tests copy it and export into
    their copy."""
    from common import cli
    from competitions.usppm.task import UsppmTask

    runs_dir = tmp_path_factory.mktemp("one-fold-run")
    cli.train(UsppmTask(), [f"data_dir={shared_data('usppm')}", f"runs_dir={runs_dir}", *TINY_USPPM,
                            "train_folds=[0]", "run_name=one"])
    return runs_dir


@pytest.fixture
def pair_task(tmp_path, monkeypatch):
    """The toy pair task (tests/toys.py) on fresh data, run in a temp folder."""
    from tests.toys import PairTask, make_pair_data
    monkeypatch.chdir(tmp_path)
    data = make_pair_data(tmp_path / "data")
    path = tmp_path / "pairs.yaml"
    path.write_text(f"data_dir: {data}\nepochs: 4\nbatch_size: 16\nfolds: 3\nlr: 2.0e-2\nwarmup: 0.0\n")
    return PairTask(path)


@pytest.fixture
def growth_toy(tmp_path, monkeypatch):
    """The toy image + tabular regression (tests/toys.py), run in a temp folder."""
    from tests.toys import GrowthToy, make_growth_data
    monkeypatch.chdir(tmp_path)
    return GrowthToy(make_growth_data(tmp_path))
