from __future__ import annotations

import base64
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from fake_study import TinyClassifier, fake_confidence, fake_result, make_volume

from covidct.registry import CLASS_NAMES, DISPLAY_NAMES
from covidct.report.gradcam import SliceExplainer
from covidct.report.html import DISCLAIMER, confidence_texts, mean_probabilities, render_report, write_report
from covidct.report.images import driving_slices


def _result():
    volume, mask = make_volume(n=14, size=40)
    volume.meta.phi.update({"PatientName": "Doe^Jane", "PatientID": "PID-4711"})
    return fake_result(volume, mask, seed=3, input_name="/data/Doe_Jane/study.zip")


def test_report_is_self_contained_and_complete(tmp_path: Path) -> None:
    result = _result()
    out = write_report(
        result, tmp_path / "r" / "report.html", explainer=SliceExplainer.from_classifier(TinyClassifier())
    )
    text = out.read_text(encoding="utf-8")
    assert DISPLAY_NAMES[CLASS_NAMES.index(result.diagnosis)] in text
    assert DISCLAIMER in text and "not a medical device" in text
    assert result.decision.explain().split("\n")[0][:40] in text.replace("&#x27;", "'").replace("&quot;", '"')
    assert "Grad-CAM" in text and "Heat maps unavailable" not in text
    # no external resources: every image is an inline PNG that decodes
    assert not re.search(r"src=['\"](?!data:)", text)
    uris = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    n_mosaic = len(driving_slices(result, n=6))
    assert len(uris) == 1 + n_mosaic and n_mosaic >= 1
    for u in uris:
        assert base64.b64decode(u)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ml" in text and "tiny-fake" in text
    # no PHI by default
    for secret in ("Doe^Jane", "PID-4711", "Doe_Jane"):
        assert secret not in text
    assert not list(out.parent.glob(".*partial*"))


def test_report_shows_phi_only_when_asked(tmp_path: Path) -> None:
    result = _result()
    text = write_report(result, tmp_path / "r.html", show_phi=True).read_text(encoding="utf-8")
    assert "Doe^Jane" in text and "PID-4711" in text
    assert "Heat maps unavailable" in text


def test_driving_slices_are_kept_and_of_the_decided_class() -> None:
    result = _result()
    picks = driving_slices(result, n=4)
    start, stop = result.decision.kept
    cls = CLASS_NAMES.index(result.diagnosis)
    assert picks == sorted(picks) and 1 <= len(picks) <= 4
    assert all(start <= i < stop for i in picks)
    agreeing = [i for i in range(start, stop) if result.decision.slice_predictions[i] == cls]
    if len(agreeing) >= 4:
        assert all(result.decision.slice_predictions[i] == cls for i in picks)
        best = sorted(agreeing, key=lambda i: -result.probabilities[i, cls])[:4]
        assert sorted(best) == picks


def test_mean_probabilities_ignore_unclassified_rows() -> None:
    result = _result()
    start, stop = result.decision.kept
    result.probabilities[:start] = np.nan
    means = mean_probabilities(result)
    expected = result.probabilities[start:stop].mean(axis=0)
    assert np.allclose([means[c] for c in CLASS_NAMES], expected, atol=1e-6)


def _confident(**kw: Any) -> Any:
    volume, mask = make_volume(n=10, size=32)
    return fake_result(volume, mask, seed=1, confidence=fake_confidence(**kw))


def test_report_shows_the_confidence_and_the_referral() -> None:
    text = render_report(_confident(value=0.62, refer=True, threshold=0.8))
    assert "<p class='conf' id='confidence'" in text and ">Confidence 62 % (calibrated)</p>" in text
    assert (
        "<p class='refer' id='referral'>Refer to a radiologist: confidence below the model&#x27;s threshold "
        "(80 %)</p>" in text
    )
    text = render_report(_confident(value=0.91, refer=False, threshold=0.8))
    assert "Confidence 91 % (calibrated)" in text and "Refer to a radiologist" not in text
    assert "<p class='note' id='referral'>Not referred: confidence at or above" in text


def test_report_says_when_no_referral_threshold_was_fitted() -> None:
    text = render_report(_confident(value=0.7, refer=None, threshold=None, calibrated=False))
    assert "Confidence 70 % (not calibrated)" in text
    assert "No referral threshold was fitted for this model" in text
    assert "Refer to a radiologist" not in text


def test_report_without_a_confidence_shows_none() -> None:
    volume, mask = make_volume(n=10, size=32)
    text = render_report(fake_result(volume, mask, seed=1))
    assert "id='confidence'" not in text and "id='referral'" not in text and "Confidence" not in text


def test_confidence_texts_are_honest_about_close_and_infinite_thresholds() -> None:
    # close numbers get the decimals that tell them apart; an infinite threshold refers every study
    line, referral = confidence_texts(fake_confidence(0.8661, refer=True, threshold=0.8744))
    assert line == "Confidence 86.6 % (calibrated)" and referral.endswith("threshold (87.4 %)")
    line, referral = confidence_texts(fake_confidence(0.9, refer=True, threshold=math.inf))
    assert line == "Confidence 90 % (calibrated)"
    assert referral.startswith("Refer to a radiologist") and "every study is referred" in referral
