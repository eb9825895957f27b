"""Calibration: temperature scaling recovers a known temperature, hand-computed Brier / ECE / referral."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from covidct.evaluate.calibration import (
    brier_score,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    plot_risk_coverage,
    referral_threshold,
    reliability_bins,
    risk_coverage,
    scale_probabilities,
    top_label,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def overconfident(n: int, factor: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(calibrated q, overconfident p = softmax(factor * z), y ~ q)``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, 3))
    q = softmax(z)
    y = (rng.random(n)[:, None] > np.cumsum(q, axis=1)).sum(axis=1)
    return q, softmax(z * factor), y


def test_scale_with_t1_is_identity_and_t_changes_sharpness_not_argmax() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(scale_probabilities(p, 1.0), p, atol=1e-9)
    soft, sharp = scale_probabilities(p, 4.0), scale_probabilities(p, 0.25)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    np.testing.assert_array_equal(soft.argmax(axis=1)[:2], p.argmax(axis=1)[:2])
    assert np.all(soft.max(axis=1)[:2] < p.max(axis=1)[:2])
    assert np.all(sharp.max(axis=1)[:2] > p.max(axis=1)[:2])
    # a zero probability is clipped, not turned into -inf / NaN
    assert np.all(np.isfinite(scale_probabilities(np.array([[1.0, 0.0, 0.0]]), 3.0)))


def test_fit_temperature_recovers_known_overconfidence() -> None:
    _, p, y = overconfident(4000, 2.5, seed=1)
    t = fit_temperature(p, y)
    assert t == pytest.approx(2.5, rel=0.15)
    assert fit_temperature(p, y) == t  # deterministic


def test_fit_temperature_of_calibrated_probs_is_near_one() -> None:
    q, _, y = overconfident(4000, 1.0, seed=2)
    assert fit_temperature(q, y) == pytest.approx(1.0, rel=0.15)


def test_fit_temperature_edge_inputs() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    uniform = np.full((5, 3), 1 / 3)
    assert fit_temperature(uniform, np.array([0, 1, 2, 0, 1])) == 1.0
    # one class, always right and confident: sharper is always better, so the lower bound
    p = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1]])
    assert fit_temperature(p, np.array([0, 0]), bounds=(0.1, 10.0)) == pytest.approx(0.1, rel=1e-3)


def test_brier_hand_computed_and_nan_when_empty() -> None:
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    y = np.array([0, 1, 0])
    # 0 + (0.25 + 0.25) + (0.64 + 0.09 + 0.25)
    assert brier_score(p, y) == pytest.approx((0.0 + 0.5 + 0.98) / 3)
    assert math.isnan(brier_score(np.zeros((0, 3)), np.zeros(0, dtype=int)))


def test_top_label() -> None:
    conf, correct = top_label(np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]), np.array([1, 2]))
    np.testing.assert_allclose(conf, [0.7, 0.5])
    assert correct.dtype == bool
    np.testing.assert_array_equal(correct, [True, False])


def test_reliability_bins_and_ece_hand_computed() -> None:
    conf = np.array([0.2, 0.4, 0.6, 0.8])
    correct = np.array([0, 1, 1, 1])
    bins = reliability_bins(conf, correct, n_bins=2)
    assert [(b["lower"], b["upper"], b["count"]) for b in bins] == [(0.0, 0.5, 2), (0.5, 1.0, 2)]
    assert bins[0]["confidence"] == pytest.approx(0.3) and bins[0]["accuracy"] == 0.5
    # 2/4 * |0.5 - 0.3| + 2/4 * |1.0 - 0.7|
    assert expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(0.25)


def test_reliability_bin_edges_and_empty_bins() -> None:
    bins = reliability_bins(np.array([0.0, 0.3, 0.5, 1.0]), np.array([True, False, True, True]), n_bins=10)
    counts = [b["count"] for b in bins]
    assert counts == [1, 0, 0, 1, 0, 1, 0, 0, 0, 1]  # 0.3 opens bin 3, 1.0 closes the last bin
    assert math.isnan(bins[1]["confidence"]) and math.isnan(bins[1]["accuracy"])
    assert math.isnan(expected_calibration_error(np.zeros(0), np.zeros(0, dtype=bool)))


def test_ece_small_when_calibrated_large_when_overconfident() -> None:
    rng = np.random.default_rng(3)
    conf = rng.uniform(1 / 3, 1.0, size=20000)
    calibrated = rng.random(20000) < conf
    overconf = rng.random(20000) < conf - 0.25
    assert expected_calibration_error(conf, calibrated) < 0.03
    assert expected_calibration_error(conf, overconf) > 0.2


def test_risk_coverage_emits_points_only_at_the_end_of_ties() -> None:
    conf = np.array([0.8, 0.9, 0.5, 0.8])
    correct = np.array([0, 1, 1, 1])
    rc = risk_coverage(conf, correct)
    np.testing.assert_allclose(rc["coverage"], [0.25, 0.75, 1.0])
    np.testing.assert_allclose(rc["accuracy"], [1.0, 2 / 3, 0.75])
    np.testing.assert_allclose(rc["threshold"], [0.9, 0.8, 0.5])
    flipped = risk_coverage(conf[::-1], correct[::-1])  # order within a tie cannot matter
    for key in rc:
        np.testing.assert_allclose(flipped[key], rc[key])
    empty = risk_coverage(np.zeros(0), np.zeros(0, dtype=bool))
    assert all(v.size == 0 for v in empty.values())


def test_referral_threshold_hand_example() -> None:
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 0, 1])
    r = referral_threshold(conf, correct, target_accuracy=0.95)
    assert (r["threshold"], r["coverage"], r["accuracy"], r["n"]) == (0.8, 0.5, 1.0, 4)
    r = referral_threshold(conf, correct, target_accuracy=0.75)
    assert (r["threshold"], r["coverage"], r["accuracy"]) == (0.6, 1.0, 0.75)


def test_referral_threshold_never_splits_a_tie_and_unreachable_target() -> None:
    r = referral_threshold(np.array([0.9, 0.8, 0.8]), np.array([1, 1, 0]), target_accuracy=0.95)
    assert r["threshold"] == 0.9 and r["coverage"] == pytest.approx(1 / 3)
    r = referral_threshold(np.array([0.9, 0.8]), np.array([0, 1]), target_accuracy=0.95)
    assert r["threshold"] == math.inf and r["coverage"] == 0.0 and math.isnan(r["accuracy"])


def test_calibration_summary_improves_after_fitted_scaling_and_is_json() -> None:
    _, p, y = overconfident(2000, 3.0, seed=4)
    t = fit_temperature(p, y)
    s = calibration_summary(p, y, temperature=t)
    assert s["n"] == 2000 and s["temperature"] == t
    assert s["after"]["ece"] < s["before"]["ece"]
    assert s["after"]["nll"] < s["before"]["nll"]
    assert s["after"]["accuracy"] == s["before"]["accuracy"]
    json.dumps(s)
    plain = calibration_summary(p, y)
    assert plain["after"] is None and plain["temperature"] is None
    empty = calibration_summary(np.zeros((0, 3)), np.zeros(0, dtype=int), temperature=2.0)
    assert empty["n"] == 0 and all(math.isnan(v) for v in empty["before"].values())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: scale_probabilities(np.full((1, 3), 1 / 3), 0.0), "temperature"),
        (lambda: scale_probabilities(np.full((1, 3), 1 / 3), math.nan), "temperature"),
        (lambda: scale_probabilities(np.array([0.2, 0.8]), 1.0), "2-D"),
        (lambda: scale_probabilities(np.array([[2.0, -1.0]]), 1.0), "non-negative"),
        (lambda: brier_score(np.array([[3.0, 1.0, 0.5]]), np.array([0])), "sum to 1"),
        (lambda: brier_score(np.full((2, 3), 1 / 3), np.array([0])), "one label per row"),
        (lambda: brier_score(np.full((2, 3), 1 / 3), np.array([0, 3])), "labels 0..2"),
        (lambda: fit_temperature(np.full((2, 3), 1 / 3), np.array([0, 1]), bounds=(2.0, 1.0)), "bounds"),
        (lambda: reliability_bins(np.array([0.5]), np.array([True]), n_bins=0), "n_bins"),
        (lambda: reliability_bins(np.array([1.5]), np.array([True])), r"\[0, 1\]"),
        (lambda: expected_calibration_error(np.array([0.5]), np.array([2])), "correct"),
        (lambda: risk_coverage(np.array([0.5, 0.6]), np.array([True])), "equal length"),
        (lambda: referral_threshold(np.array([0.5]), np.array([1]), target_accuracy=0.0), "target"),
        (lambda: referral_threshold(np.array([0.5]), np.array([1]), target_accuracy=1.5), "target"),
        (lambda: plot_reliability(Path("unused.png"), {}), "curves is empty"),
    ],
)
def test_bad_arguments_raise_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_plots_write_png(tmp_path: Path) -> None:
    _, p, y = overconfident(300, 2.5, seed=5)
    before = top_label(p, y)
    after = top_label(scale_probabilities(p, 2.5), y)
    curves = {"before": before, "after": after}
    out = plot_reliability(tmp_path / "figs" / "reliability.png", curves, n_bins=10, title="test")
    assert out == tmp_path / "figs" / "reliability.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE and out.stat().st_size > 1000
    out = plot_risk_coverage(tmp_path / "rc.png", curves, target_accuracy=0.95)
    assert out.read_bytes()[:8] == PNG_SIGNATURE and out.stat().st_size > 1000
    assert sorted(f.name for f in tmp_path.rglob("*")) == ["figs", "rc.png", "reliability.png"]
