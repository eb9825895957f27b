"""Every metric against hand-computed confusion matrices (including a class that is never predicted)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidct.evaluate.metrics import (
    Rate,
    bootstrap_auc_ci,
    classification_summary,
    cohen_kappa,
    confusion_matrix,
    mcnemar,
    overall_accuracy,
    per_class_metrics,
    roc_auc,
)

# rows truth, columns prediction (normal, cap, covid19); CAP is never predicted.
CM = np.array([[5, 0, 1], [2, 0, 3], [1, 0, 8]])


def labels_from_cm(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth, pred = [], []
    for i in range(3):
        for j in range(3):
            truth += [i] * int(cm[i, j])
            pred += [j] * int(cm[i, j])
    return np.array(truth), np.array(pred)


def rate(r: Rate) -> tuple[int, int]:
    return r.numerator, r.denominator


def test_confusion_matrix_rows_truth_columns_prediction() -> None:
    truth, pred = labels_from_cm(CM)
    rng = np.random.default_rng(0)
    order = rng.permutation(truth.size)
    np.testing.assert_array_equal(confusion_matrix(truth[order], pred[order]), CM)
    assert confusion_matrix([2], [0]).tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]


def test_per_class_hand_computed() -> None:
    m = per_class_metrics(CM)
    # normal: tp 5, fn 1, fp 3, tn 11 (of 20)
    n = m["normal"]
    assert (n["tp"], n["fn"], n["fp"], n["tn"], n["support"]) == (5, 1, 3, 11, 6)
    assert rate(n["accuracy"]) == (16, 20) and n["accuracy"].value == pytest.approx(0.8)
    assert rate(n["sensitivity"]) == (5, 6)
    assert rate(n["specificity"]) == (11, 14)
    assert rate(n["fpr"]) == (3, 14)
    assert rate(n["fnr"]) == (1, 6)
    assert rate(n["fdr"]) == (3, 8)
    assert rate(n["precision"]) == (5, 8)
    assert n["f1"].value == pytest.approx(10 / 14)
    # covid19: tp 8, fn 1, fp 4, tn 7
    c = m["covid19"]
    assert (c["tp"], c["fn"], c["fp"], c["tn"]) == (8, 1, 4, 7)
    assert c["sensitivity"].value == pytest.approx(8 / 9)
    assert c["specificity"].value == pytest.approx(7 / 11)
    assert c["fpr"].value == pytest.approx(4 / 11)
    assert c["fnr"].value == pytest.approx(1 / 9)
    assert c["fdr"].value == pytest.approx(4 / 12)
    assert c["f1"].value == pytest.approx(16 / 21)
    assert c["accuracy"].value == pytest.approx(15 / 20)


def test_never_predicted_class_gives_nan_where_undefined() -> None:
    cap = per_class_metrics(CM)["cap"]
    assert (cap["tp"], cap["fn"], cap["fp"], cap["tn"]) == (0, 5, 0, 15)
    assert cap["sensitivity"].value == 0.0
    assert cap["specificity"].value == 1.0
    assert cap["fpr"].value == 0.0
    assert cap["fnr"].value == 1.0
    assert cap["f1"].value == 0.0  # 2*0 / (0 + 0 + 5)
    assert math.isnan(cap["fdr"].value) and rate(cap["fdr"]) == (0, 0)
    assert math.isnan(cap["precision"].value)
    assert cap["fdr"].to_json() == {"value": None, "numerator": 0, "denominator": 0}


def test_class_absent_from_truth_gives_nan_sensitivity() -> None:
    cm = confusion_matrix([0, 0, 2, 2], [0, 2, 2, 1])
    cap = per_class_metrics(cm)["cap"]
    assert math.isnan(cap["sensitivity"].value) and math.isnan(cap["fnr"].value)
    assert cap["fdr"].value == 1.0 and cap["precision"].value == 0.0
    assert cap["specificity"].value == pytest.approx(3 / 4)


def test_overall_accuracy_and_kappa() -> None:
    assert rate(overall_accuracy(CM)) == (13, 20)
    # po = 0.65; pe = (6*8 + 5*0 + 9*12) / 400 = 0.39
    assert cohen_kappa(CM) == pytest.approx((0.65 - 0.39) / (1 - 0.39))
    assert cohen_kappa(np.eye(3, dtype=int) * 4) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(np.zeros((3, 3), dtype=int)))
    # everyone normal, always predicted normal: pe = 1 -> undefined
    assert math.isnan(cohen_kappa(np.array([[5, 0, 0], [0, 0, 0], [0, 0, 0]])))


def test_empty_confusion_matrix_rates_are_nan() -> None:
    assert math.isnan(overall_accuracy(np.zeros((3, 3), dtype=int)).value)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        confusion_matrix([0, 1], [0])
    with pytest.raises(ValueError, match="integer labels"):
        confusion_matrix([0, 3], [0, 1])
    with pytest.raises(ValueError, match="square"):
        per_class_metrics(np.array([[1, 2, 3]]))


def test_roc_auc_hand_computed_with_ties() -> None:
    pos = np.array([1, 1, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.4, 0.5, 0.1, 0.4])
    # pairs: 0.9 beats all 3 (3); 0.4 beats 0.1 (1), ties 0.4 (0.5), loses to 0.5 -> 4.5 / 6
    assert roc_auc(pos, scores) == pytest.approx(0.75)
    assert roc_auc(pos, -scores) == pytest.approx(0.25)
    assert math.isnan(roc_auc(np.ones(3, dtype=bool), np.arange(3.0)))
    assert math.isnan(roc_auc(pos, np.array([0.9, np.nan, 0.5, 0.1, 0.4])))


def test_bootstrap_ci_seeded_and_sensible() -> None:
    rng = np.random.default_rng(3)
    pos = rng.random(60) < 0.5
    scores = pos * 0.6 + rng.random(60)
    auc = roc_auc(pos, scores)
    lo, hi, valid = bootstrap_auc_ci(pos, scores, n_boot=300, seed=1)
    assert valid == 300
    assert lo <= auc <= hi and 0.0 <= lo < hi <= 1.0
    assert bootstrap_auc_ci(pos, scores, n_boot=300, seed=1) == (lo, hi, valid)  # deterministic
    assert bootstrap_auc_ci(pos, scores, n_boot=300, seed=2)[:2] != (lo, hi)
    one_class = bootstrap_auc_ci(np.ones(10, dtype=bool), np.arange(10.0), n_boot=50)
    assert math.isnan(one_class[0]) and one_class[2] == 0


def test_mcnemar_exact_and_chi2() -> None:
    a = np.array([True] * 3 + [True] * 5)
    b = np.array([False] * 3 + [True] * 5)
    r = mcnemar(a, b)  # b=3, c=0: p = 2 * 0.5**3
    assert (r["b"], r["c"], r["method"]) == (3, 0, "exact") and r["p_value"] == pytest.approx(0.25)
    a = np.array([True] * 10 + [False] * 2 + [True] * 7)
    b = np.array([False] * 10 + [True] * 2 + [True] * 7)
    # b=10, c=2: p = 2 * (C(12,0)+C(12,1)+C(12,2)) / 2**12
    assert mcnemar(a, b)["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    a = np.array([True] * 30 + [False] * 10)
    r = mcnemar(a, ~a)  # b=30, c=10 -> chi2 (|20|-1)^2/40 = 9.025
    assert r["method"] == "chi2_cc" and r["statistic"] == pytest.approx(9.025)
    assert r["p_value"] == pytest.approx(0.002663, rel=1e-3)
    same = mcnemar([True, False], [True, False])
    assert (same["b"], same["c"], same["p_value"]) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="same cases"):
        mcnemar([True], [True, False])


def test_classification_summary_is_json_clean() -> None:
    truth, pred = labels_from_cm(CM)
    scores = np.eye(3)[pred] * 0.7 + 0.1
    s = classification_summary(truth, pred, scores=scores, n_boot=50)
    assert s["confusion_matrix"] == CM.tolist()
    assert s["overall_accuracy"] == {"value": 0.65, "numerator": 13, "denominator": 20}
    assert s["per_class"]["cap"]["fdr"]["value"] is None
    assert set(s["roc_auc"]) == {"normal", "cap", "covid19"}
    # CAP scores are constant (never predicted) -> AUC 0.5 exactly
    assert s["roc_auc"]["cap"]["value"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="scores must be"):
        classification_summary(truth, pred, scores=scores[:, :2])
