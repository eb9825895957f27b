"""The TID 1500 SR of a synthetic DICOM series: the confidence and the referral, checked by dciodvfy."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_study import fake_confidence, fake_result, phantom, volume_from_files, write_dicom_series

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))
from node_helpers import dciodvfy_errors

SPACING = (2.5, 0.7, 0.7)


def _sr(tmp_path: Path, confidence: Any) -> Any:
    """The SR of a fake result with ``confidence``, written and read back (after dciodvfy found no error)."""
    import pydicom

    from covidct.report.dicom_seg import complete_header, source_datasets_for, write_dicom_seg
    from covidct.report.dicom_sr import build_sr, write_dataset

    hu, mask = phantom(6, 24)
    volume = volume_from_files(write_dicom_series(tmp_path / "ct", hu, spacing=SPACING), hu, SPACING)
    result = fake_result(volume, mask, confidence=confidence)
    headers, order = source_datasets_for(volume)
    sources = [complete_header(ds) for ds in headers]
    seg_path = write_dicom_seg(
        result, mask, tmp_path / "seg.dcm", source_datasets=sources, source_order=order
    )
    path = write_dataset(build_sr(result, pydicom.dcmread(seg_path), sources), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    return pydicom.dcmread(path)


def _items(seq: Any) -> list[Any]:
    out = []
    for item in seq:
        out.append(item)
        if "ContentSequence" in item:
            out.extend(_items(item.ContentSequence))
    return out


def _named(sr: Any, meaning: str) -> list[Any]:
    return [
        i
        for i in _items(sr.ContentSequence)
        if "ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


def _parameters(sr: Any) -> list[str]:
    return [str(i.TextValue) for i in _named(sr, "Algorithm Parameters")]


def test_sr_carries_the_confidence_and_a_referral(tmp_path: Path) -> None:
    sr = _sr(tmp_path, fake_confidence(0.62, refer=True, threshold=0.8))
    (num,) = _named(sr, "Certainty of Finding")
    assert num.ConceptNameCodeSequence[0].CodeValue == "111012"
    assert num.ConceptNameCodeSequence[0].CodingSchemeDesignator == "DCM"
    value = num.MeasuredValueSequence[0]
    assert float(value.NumericValue) == pytest.approx(62.0)
    unit = value.MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("%", "UCUM")
    (method,) = [
        i for i in num.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Method"
    ]
    assert method.ConceptCodeSequence[0].CodeValue == "calibrated"
    (refer,) = _named(sr, "Refer for radiologist review")
    assert (
        refer.ValueType == "CODE" and refer.ConceptNameCodeSequence[0].CodingSchemeDesignator == "99COVIDCT"
    )
    assert (refer.ConceptCodeSequence[0].CodeValue, refer.ConceptCodeSequence[0].CodeMeaning) == (
        "373066001",
        "Yes",
    )
    assert "referral below a confidence of 80.00 %" in _parameters(sr)


def test_sr_says_no_when_not_referred_and_every_study_when_the_threshold_is_infinite(tmp_path: Path) -> None:
    sr = _sr(tmp_path / "a", fake_confidence(0.91, refer=False, threshold=0.8))
    (refer,) = _named(sr, "Refer for radiologist review")
    assert refer.ConceptCodeSequence[0].CodeMeaning == "No"
    sr = _sr(tmp_path / "b", fake_confidence(0.91, refer=True, threshold=math.inf))
    (refer,) = _named(sr, "Refer for radiologist review")
    assert refer.ConceptCodeSequence[0].CodeMeaning == "Yes"
    assert any(p.startswith("every study referred") for p in _parameters(sr))


def test_sr_without_a_threshold_has_no_referral_and_says_so(tmp_path: Path) -> None:
    sr = _sr(tmp_path, fake_confidence(0.7, refer=None, threshold=None, calibrated=False))
    (num,) = _named(sr, "Certainty of Finding")
    assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(70.0)
    assert num.ContentSequence[0].ConceptCodeSequence[0].CodeValue == "not-calibrated"
    assert _named(sr, "Refer for radiologist review") == []
    assert "no referral threshold fitted: no referral advice" in _parameters(sr)


def test_sr_without_a_confidence_is_as_before(tmp_path: Path) -> None:
    sr = _sr(tmp_path, None)
    assert _named(sr, "Certainty of Finding") == [] and _named(sr, "Refer for radiologist review") == []
    # a COVID-19 finding fits a DICOM Code Meaning (64 characters at most)
    findings = [i.ConceptCodeSequence[0] for i in _named(sr, "Finding")]
    assert ("840539006", "COVID-19") in {(c.CodeValue, c.CodeMeaning) for c in findings}
