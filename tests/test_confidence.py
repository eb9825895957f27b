"""Calibrated confidence and referral: the patient-level probability, fitting, the card entry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidct.confidence import (
    ConfidenceModel,
    confidence_model_of,
    fit_confidence,
    patient_probabilities,
    study_confidence,
)
from covidct.decide import decide
from covidct.errors import ModelError


def _probs(labels: list[int], sharp: float = 0.9) -> np.ndarray:
    p = np.full((len(labels), 3), (1 - sharp) / 2)
    p[np.arange(len(labels)), labels] = sharp
    return p


def test_patient_probability_puts_its_boundary_at_the_rules_threshold() -> None:
    onehot = np.eye(3)
    at = onehot[[2] * 20 + [0] * 80]  # exactly 20 % COVID-19 slices: the rule still says normal
    q = patient_probabilities(at, kept=(0, 100))
    assert math.isclose(q[0], q[2]) and q[1] == 0
    above = onehot[[2] * 30 + [0] * 70]
    q = patient_probabilities(above, kept=(0, 100))
    assert q.argmax() == 2 == decide(above, head=0, tail=0).label
    nan_rows = np.vstack([np.full((5, 3), np.nan), above])
    assert np.allclose(patient_probabilities(nan_rows, kept=(0, 105)), q)


def test_study_confidence_without_and_with_a_threshold() -> None:
    p = _probs([2] * 30 + [0] * 70)
    plain = study_confidence(p, 2, kept=(0, 100), model=None)
    assert not plain.calibrated and plain.refer is None and 0.5 < plain.value < 1
    strict = study_confidence(p, 2, kept=(0, 100), model=ConfidenceModel(refer_below=0.99))
    assert strict.calibrated and strict.refer is True
    doc = strict.to_json()
    assert doc["refer"] is True and set(doc["probabilities"]) == {"normal", "cap", "covid19"}
    sharper = study_confidence(p, 2, kept=(0, 100), model=ConfidenceModel(patient_temperature=0.5))
    assert sharper.value > plain.value


def _cohort(seed: int, n: int) -> list[tuple[np.ndarray, int, int, tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        truth = int(rng.integers(3))
        frac = rng.uniform(0.3, 0.6) if truth else rng.uniform(0.0, 0.1)
        k = int(frac * 40)
        labels = [truth if truth else int(rng.integers(1, 3))] * k + [0] * (40 - k)
        p = _probs(labels, sharp=float(rng.uniform(0.5, 0.95)))
        out.append((p, truth, decide(p, head=0, tail=0).label, (0, 40)))
    return out


def test_fit_chooses_a_threshold_that_reaches_the_target_on_validation() -> None:
    studies = _cohort(0, 60)
    slices = np.vstack([s[0] for s in studies])
    y = np.concatenate([np.where(s[0].argmax(1) == 0, 0, s[1]) for s in studies])
    m = fit_confidence(studies, slice_probs=slices, slice_y=y, target_accuracy=0.9)
    assert m.refer_below is not None and 0 < m.refer_below < 1
    assert m.fitted is not None and m.fitted["accepted_accuracy"] >= 0.9 and m.fitted["patients"] == 60
    conf = [study_confidence(p, a, kept=k, model=m) for p, _, a, k in studies]
    accepted = [a == t for (_, t, a, _), c in zip(studies, conf, strict=True) if not c.refer]
    assert accepted and np.mean(accepted) >= 0.9


def test_separable_validation_stays_inside_the_temperature_bounds() -> None:
    studies = [(_probs([c] * 40), c, c, (0, 40)) for c in (0, 1, 2, 0, 1, 2)]
    m = fit_confidence(studies, target_accuracy=0.95)
    assert m.patient_temperature == pytest.approx(0.5, rel=1e-3)
    assert m.fitted is not None and "patient" in m.fitted["temperature_at_bound"]
    assert m.fitted["coverage"] == 1.0


def test_unreachable_target_refers_everything_and_survives_the_card() -> None:
    studies = [(_probs([0] * 40), 2, 0, (0, 40)) for _ in range(4)]  # always wrong
    m = fit_confidence(studies, target_accuracy=0.95)
    assert m.refer_below == math.inf
    card = m.to_card()
    assert card["refer_below"] == "inf"
    back = ConfidenceModel.from_card(card)
    assert back.refer_below == math.inf
    assert study_confidence(_probs([0] * 40), 0, kept=(0, 40), model=back).refer is True


def test_card_entries_are_checked_and_the_pipeline_card_wins() -> None:
    with pytest.raises(ModelError, match=r"x/model\.json: confidence temperatures"):
        confidence_model_of({"confidence": {"slice_temperature": -1}}, {}, where="x")
    with pytest.raises(ModelError, match="must be an object"):
        confidence_model_of({}, {"confidence": 3}, where="x")
    pipe = {"confidence": {"patient_temperature": 2.0}}
    clf = {"confidence": {"patient_temperature": 3.0}}
    got = confidence_model_of(pipe, clf, where="x")
    assert got is not None and got.patient_temperature == 2.0
    got = confidence_model_of({}, clf, where="x")
    assert got is not None and got.patient_temperature == 3.0
    assert confidence_model_of({}, {}, where="x") is None
