"""The line ``covidct diagnose`` prints per study: the confidence and REFER when the result has them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))  # fake_study

from fake_study import fake_confidence, fake_result, make_volume

from covidct.cli.diagnose import summary_line


def _line(confidence: object) -> str:
    volume, mask = make_volume(n=10, size=32)
    return summary_line("study.nii.gz", fake_result(volume, mask, seed=1, confidence=confidence))


def test_the_summary_line_appends_the_confidence_and_refer() -> None:
    line = _line(fake_confidence(0.62, refer=True, threshold=0.8))
    assert line.startswith("study.nii.gz: covid19  (kept slices") and line.endswith(
        "s]  confidence 0.62  REFER"
    )
    assert _line(fake_confidence(0.874, refer=False, threshold=0.8)).endswith("s]  confidence 0.87")


def test_the_summary_line_says_when_the_confidence_is_not_calibrated() -> None:
    line = _line(fake_confidence(0.7, refer=None, threshold=None, calibrated=False))
    assert line.endswith("confidence 0.70 (not calibrated)") and "REFER" not in line


def test_the_summary_line_without_a_confidence_is_as_before() -> None:
    line = _line(None)
    assert line.endswith(" s]") and "confidence" not in line
