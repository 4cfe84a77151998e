"""The feature-table family (common/tabular.py) with a task that is not growth: a plain CSV of numeric features, no
images. It trains (K folds, gradient-boosted trees), predicts, submits and blends like any competition."""
import numpy as np
import pandas as pd
import pytest

from common import api
from common.errors import ConfigError
from common.folds import FoldSpec
from common.metrics import pearson
from common.tabular import TabularImageTask


class HouseTask(TabularImageTask):
    """House prices from a table: the family's defaults read it (features_file=), nothing of its own to load."""
    name, kind, metric = "houses", "regression", "pearson"
    id_column, target_column = "house", "price"
    fold_spec = FoldSpec(group="case")  # the table's street column (features_case): a street in one fold

    def __init__(self, config_path):
        self.config_path = config_path


def price(x: pd.DataFrame) -> np.ndarray:
    return 100 + 2 * x["area"] - 5 * x["age"] + 30 * x["rooms"]


def make_houses(root):
    """200 houses on 40 streets in the table's own column names (id, sale_price, street); a sample submission in
    another order than test.csv. Returns the test table's true prices."""
    rng = np.random.default_rng(0)

    def table(n):
        x = pd.DataFrame({"id": [f"h{i}" for i in range(n)], "street": [f"s{i % 40}" for i in range(n)],
                          "area": rng.uniform(40, 200, n), "age": rng.uniform(0, 50, n),
                          "rooms": rng.integers(1, 6, n), "noise": rng.normal(size=n)})
        return x, price(x) * rng.lognormal(0, 0.05, n)

    train, y = table(200)
    train.assign(sale_price=y).to_csv(root / "train.csv", index=False)
    test, y_test = table(60)
    test["id"] = [f"t{i}" for i in range(60)]
    test.to_csv(root / "test.csv", index=False)
    test[["id"]].sample(frac=1, random_state=0).assign(sale_price=0.0).to_csv(root / "sample_submission.csv",
                                                                               index=False)
    return pd.Series(y_test.to_numpy(), index=test["id"])


@pytest.fixture
def houses(workdir):
    (workdir / "data").mkdir()
    truth = make_houses(workdir / "data")
    config = workdir / "houses.yaml"
    config.write_text(f"features_file: {workdir}/data/train.csv\nfeatures_id: id\nfeatures_target: sale_price\n"
                      "features_case: street\nmodel_kind: gbm\nfolds: 4\ngbm_max_iter: 50\n")
    return HouseTask(config), truth


def test_a_plain_table_trains_predicts_submits_and_blends(houses, workdir):
    task, truth = houses
    run = api.train(task, task.config(["run_name=a"]))
    metrics = run.metrics()
    assert metrics["metric"] == "pearson" and metrics["cv"] > 0.95 and len(metrics["folds"]) == 4
    assert metrics["cv_last"] == metrics["cv"]  # trees have no epochs: the last is the one
    oof = pd.read_csv(run.dir / "oof.csv")
    assert len(oof) == 200 and metrics["cv"] == pytest.approx(pearson(oof["target"], oof["pred"]))
    folds = pd.read_csv(run.dir / "folds.csv").assign(street=pd.read_csv(workdir / "data/train.csv")["street"])
    assert folds.groupby("street")["fold"].nunique().eq(1).all()  # grouped by the table's street column
    assert (run.dir / "fold0/model.joblib").is_file() and not (run.dir / "fold0/scaler.joblib").exists()

    preds = api.predict(task, run)  # the features file's sibling test.csv
    assert list(preds["house"]) == list(truth.index)
    assert pearson(truth.to_numpy(), preds["pred"].to_numpy()) > 0.95

    sub = pd.read_csv(api.submit(task, run, out=workdir / "sub.csv"))
    sample = pd.read_csv(workdir / "data/sample_submission.csv")
    assert list(sub.columns) == ["id", "sale_price"] and list(sub["id"]) == list(sample["id"])
    assert sub.set_index("id")["sale_price"].to_numpy() == pytest.approx(
        preds.set_index("house")["pred"].loc[sample["id"]].to_numpy())

    other = api.train(task, task.config(["run_name=b", "gbm_max_iter=20", "gbm_loss=absolute_error"]))
    blend = api.ensemble(task, ["a", "b"], name="blend")
    assert blend.metrics()["cv"] >= min(metrics["cv"], other.metrics()["cv"])
    blended = pd.read_csv(api.submit(task, blend, out=workdir / "blend.csv"))
    assert list(blended["id"]) == list(sample["id"])
    assert pearson(truth.loc[sample["id"]].to_numpy(), blended["sale_price"].to_numpy()) > 0.95


def test_without_a_features_table_the_error_names_the_key(houses):
    task, _ = houses
    with pytest.raises(ConfigError, match="houses: set features_file="):
        task.load_train(task.config(["features_file=null"]))
    with pytest.raises(ConfigError, match="use model_kind=gbm"):
        task.load_train(task.config(["model_kind=fusion"]))
