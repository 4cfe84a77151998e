import numpy as np
import pandas as pd
import pytest

from common.submission import SubmissionError, fill_sample, validate


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample_submission.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "score": [0, 0, 0]}).to_csv(path, index=False)
    return path


def test_fill_matches_by_id_and_keeps_the_sample_order(sample, tmp_path):
    out = fill_sample(sample, ["c", "a", "b"], [0.3, 0.1, 0.2], tmp_path / "sub.csv")
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["id", "score"] and list(sub["id"]) == ["a", "b", "c"]
    assert np.allclose(sub["score"], [0.1, 0.2, 0.3])


@pytest.mark.parametrize("ids, values, message", [
    (["a", "b"], [0.1, 0.2], "1 missing"),
    (["a", "b", "c", "d"], [0.1, 0.2, 0.3, 0.4], "not in the sample"),
    (["a", "b", "c"], [0.1, np.nan, 0.3], "NaN"),
    (["a", "a", "c"], [0.1, 0.2, 0.3], "repeat"),
])
def test_fill_refuses_and_writes_nothing(sample, tmp_path, ids, values, message):
    with pytest.raises(SubmissionError, match=message):
        fill_sample(sample, ids, values, tmp_path / "sub.csv")
    assert not (tmp_path / "sub.csv").exists() and not list(tmp_path.glob(".sub.csv.*"))


def test_validate_rejects_wrong_shape_order_nan_dtype(sample):
    good = pd.DataFrame({"id": ["a", "b", "c"], "score": [0.1, 0.2, 0.3]})
    validate(good, sample)
    with pytest.raises(SubmissionError, match="2 rows"):
        validate(good.iloc[:2], sample)
    with pytest.raises(SubmissionError, match="id order differs .* row 1"):
        validate(good.iloc[[1, 0, 2]], sample)
    with pytest.raises(SubmissionError, match="NaN"):
        validate(good.assign(score=[0.1, None, 0.3]), sample)
    with pytest.raises(SubmissionError, match="numeric"):
        validate(good.assign(score=["x", "y", "z"]), sample)
    with pytest.raises(SubmissionError, match="columns"):
        validate(good.rename(columns={"score": "target"}), sample)
