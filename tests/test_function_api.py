"""The function API (common/api.py) on the toy pair task: train, predict and submit in one process, no argv."""
import pandas as pd
import pytest

from common import api
from common.errors import NotFound


def test_the_function_api_runs_train_predict_submit_in_one_process_without_argv(pair_task, monkeypatch):
    monkeypatch.setattr("sys.argv", ["not-an-argument-list-anyone-reads"])
    run = api.train(pair_task, pair_task.config(["run_name=api", "epochs=1"]))
    preds = api.predict(pair_task, "api")
    path = api.submit(pair_task, run, out="sub.csv")
    assert len(preds) == 40 and list(preds.columns) == ["pair_id", "pred"]
    assert pd.read_csv(path).similar.isin([0, 1]).all()
    with pytest.raises(NotFound, match="run runs/pairs/nope not found"):  # a UserError, not SystemExit
        api.predict(pair_task, "nope")
