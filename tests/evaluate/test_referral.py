"""The calibration and referral section of a cohort evaluation, on synthetic diagnosed studies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from covidct.confidence import ConfidenceModel, study_confidence
from covidct.decide import decide
from covidct.evaluate.referral import ScoredStudy, calibration_markdown, calibration_section


def _studies(model: ConfidenceModel | None, n: int = 12) -> list[ScoredStudy]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        truth = i % 3
        labels = np.where(rng.random(30) < (0.5 if truth else 0.05), truth or 2, 0)
        p = np.full((30, 3), 0.05)
        p[np.arange(30), labels] = 0.9
        p[:2] = np.nan  # slices not classified
        d = decide(p)
        conf = study_confidence(p, d.label, kept=d.kept, model=model)
        out.append(ScoredStudy(p, np.where(labels > 0, truth, 0), d.kept, truth, d.label, conf))
    return out


def test_section_scores_before_and_after_and_writes_its_figures(tmp_path: Path) -> None:
    model = ConfidenceModel(
        slice_temperature=2.0, patient_temperature=0.7, refer_below=0.6, target_accuracy=0.9
    )
    sec = calibration_section(_studies(model), model, tmp_path)
    json.dumps(sec, allow_nan=False)  # strict JSON: NaN and infinity were converted
    assert sec["fitted"] and sec["slice"]["n"] > 0 and sec["patient"]["n"] == 12
    assert sec["slice"]["before"]["ece"] != sec["slice"]["after"]["ece"]
    r = sec["referral"]
    assert r["threshold"] == 0.6 and r["referred"] + r["accepted"] == 12
    assert len(r["risk_coverage"]["coverage"]) >= 1 and r["risk_coverage"]["coverage"][-1] == 1.0
    for name in sec["files"].values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = calibration_markdown(sec)
    assert "## Calibration and referral" in md and "Referral below confidence 0.600" in md


def test_without_a_fitted_model_after_equals_before_and_nothing_is_referred(tmp_path: Path) -> None:
    sec = calibration_section(_studies(None), None, tmp_path)
    assert not sec["fitted"] and sec["referral"]["referred"] == 0 and sec["referral"]["threshold"] is None
    for k in ("ece", "brier"):
        assert np.isclose(sec["patient"]["before"][k], sec["patient"]["after"][k])
    assert "No referral threshold was fitted" in calibration_markdown(sec)
