import numpy as np
import pandas as pd
import pytest

from common.folds import FoldSpec, make_folds
from tests.conftest import shared_data


def frame(n=600, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"group": rng.integers(0, 60, n), "label": rng.choice(["a", "b", "c"], n, p=[.6, .3, .1]),
                         "score": rng.choice([0, .25, .5, .75, 1.0], n), "value": rng.normal(size=n)})


def test_group_folds_never_leak_a_group():
    df = frame()
    for spec in [FoldSpec(group="group"), FoldSpec(stratify="label", group="group")]:
        folds = make_folds(df, spec, 5, seed=1)
        assert (pd.Series(folds).groupby(df["group"]).nunique() == 1).all()
        assert set(folds) == set(range(5))


def test_stratified_folds_are_balanced():
    df = frame()
    folds = make_folds(df, FoldSpec(stratify="label"), 5, seed=1)
    share = pd.crosstab(folds, df["label"], normalize="index")
    overall = df["label"].value_counts(normalize=True)
    assert (share.sub(overall, axis=1).abs() < 0.02).all().all()


def test_binned_regression_stratification_balances_the_target():
    df = frame(1000)
    folds = make_folds(df, FoldSpec(stratify="value", bins=10), 5, seed=0)
    means = df.groupby(folds)["value"].mean()
    assert means.max() - means.min() < 0.05


def test_split_is_deterministic_and_seeded():
    df = frame()
    spec = FoldSpec(stratify="score", group="group")
    assert (make_folds(df, spec, 5, 7) == make_folds(df, spec, 5, 7)).all()
    assert (make_folds(df, spec, 5, 7) != make_folds(df, spec, 5, 8)).any()
    g = FoldSpec(group="group")
    assert (make_folds(df, g, 5, 7) != make_folds(df, g, 5, 8)).any()


def test_class_with_fewer_rows_than_folds_warns_not_crashes():
    df = frame(100)
    df.loc[0, "label"] = "singleton"
    with pytest.warns(UserWarning, match="singleton"):
        folds = make_folds(df, FoldSpec(stratify="label"), 5, seed=0)
    assert len(folds) == 100 and set(folds) == set(range(5))


def test_usppm_real_data_anchor_groups_do_not_leak():
    df = pd.read_csv(shared_data("usppm") / "train.csv")
    folds = make_folds(df, FoldSpec(stratify="score", group="anchor"), 5, seed=42)
    assert (pd.Series(folds).groupby(df["anchor"]).nunique() == 1).all()
    share = pd.crosstab(folds, df["score"], normalize="index")
    assert (share.sub(df["score"].value_counts(normalize=True), axis=1).abs() < 0.03).all().all()
