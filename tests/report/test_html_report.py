from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
from fake_study import TinyClassifier, fake_result, make_volume

from covidct.registry import CLASS_NAMES, DISPLAY_NAMES
from covidct.report.gradcam import SliceExplainer
from covidct.report.html import DISCLAIMER, mean_probabilities, write_report
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
