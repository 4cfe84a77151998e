import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from common.metrics import METRICS, get_metric

rng = np.random.default_rng(0)


def test_pearson_matches_scipy():
    y, p = rng.random(200), rng.random(200)
    assert get_metric("pearson")(y, p) == pytest.approx(pearsonr(y, p)[0])
    assert get_metric("pearson")(y, p[:, None]) == pytest.approx(pearsonr(y, p)[0])  # (n, 1) as in oof.csv


def test_macro_f1_from_probabilities_matches_sklearn():
    y = rng.integers(0, 5, 300)
    probs = rng.random((300, 5))
    assert get_metric("macro_f1")(y, probs) == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))


def test_roc_auc_and_accuracy_match_sklearn():
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    assert get_metric("roc_auc")(y, p) == pytest.approx(roc_auc_score(y, p))
    assert get_metric("accuracy")(y, p) == pytest.approx(accuracy_score(y, p >= 0.5))


def test_nmae_is_mean_relative_error_and_leaves_zero_targets_out():
    y, p = np.array([10.0, 20.0, 40.0]), np.array([11.0, 18.0, 40.0])
    assert get_metric("nmae")(y, p) == pytest.approx(np.mean([0.1, 0.1, 0.0]))
    nmae = get_metric("nmae")
    assert nmae(np.array([0.0, 2.0, 4.0]), np.array([5.0, 1.0, 4.0])) == pytest.approx(0.25)  # the 0 is left out
    assert np.isnan(nmae(np.array([0.0, 0.0]), np.array([1.0, 0.0])))


def test_directions():
    assert {n: m.greater_is_better for n, m in METRICS.items()} == {
        "pearson": True, "macro_f1": True, "roc_auc": True, "accuracy": True, "nmae": False}
    assert get_metric("nmae").better(0.1, 0.2) and not get_metric("pearson").better(0.1, 0.2)
    assert get_metric("pearson").better(0.1, None)
    with pytest.raises(KeyError, match="known"):
        get_metric("rmse")


def test_a_cut_tuned_on_the_other_folds_scores_what_it_is_worth_on_unseen_rows():
    from common.metrics import score_with_cut_from_other_folds, tune_threshold
    accuracy = get_metric("accuracy")
    y = np.array([1, 0, 1, 0])
    p = np.array([0.6, 0.4, 0.8, 0.7])  # fold 0 separates at 0.5, fold 1 only above 0.7
    folds = np.array([0, 0, 1, 1])
    on_all_rows = accuracy(y, (p >= tune_threshold(y, p, accuracy)).astype(float))
    assert on_all_rows == 0.75
    # fold 0 cut where fold 1 says (> 0.7): both rows negative; fold 1 cut at fold 0's 0.5: both positive
    assert score_with_cut_from_other_folds(accuracy, y, p, folds) == 0.5


def test_class_biases_recover_a_rare_label_that_argmax_misses():
    from common.metrics import tune_class_bias, with_class_bias
    macro_f1 = get_metric("macro_f1")
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
                  [0.5, 0.1, 0.4], [0.5, 0.05, 0.45]])  # the rare label 2 always second to label 0
    assert macro_f1(y, p) == pytest.approx(f1_score(y, [0, 0, 1, 1, 0, 0], average="macro"))
    bias = tune_class_bias(y, p, macro_f1)
    assert macro_f1(y, with_class_bias(p, bias)) == 1.0
    assert np.allclose(with_class_bias(p, bias).sum(axis=1), 1)  # still probabilities: a shift of the priors
    assert bias[2] - bias[0] > np.log(0.5 / 0.4)  # label 2 raised against label 0, by what it takes
    separated = np.eye(3)[y] * 0.8 + 0.1
    assert tune_class_bias(y, separated, macro_f1).tolist() == [0.0, 0.0, 0.0]  # argmax already best: no bias


def test_biases_tuned_on_the_other_folds_score_what_they_are_worth_on_unseen_rows():
    from common.metrics import score_with_bias_from_other_folds, tune_class_bias, with_class_bias
    macro_f1 = get_metric("macro_f1")
    # Fold 0 needs label 2 raised (its label-2 rows are second to label 0); fold 1 needs it not raised (its
    # label-0 rows are a hair from label 2), so what one fold teaches is wrong for the other.
    y = np.array([0, 1, 2, 2, 0, 0, 1, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4], [0.5, 0.1, 0.4],
                  [0.45, 0.1, 0.44], [0.45, 0.11, 0.44], [0.1, 0.8, 0.1], [0.3, 0.1, 0.6]])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    on_all_rows = macro_f1(y, with_class_bias(p, tune_class_bias(y, p, macro_f1)))
    honest = score_with_bias_from_other_folds(macro_f1, y, p, folds)
    # fold 0 gets fold 1's zeros (its two label-2 rows stay wrong), fold 1 gets fold 0's raise (its label-0 rows flip)
    assert honest == pytest.approx(f1_score(y, [0, 1, 0, 0, 2, 2, 1, 2], average="macro"))
    assert honest < on_all_rows
