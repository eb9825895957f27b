"""Predictions CSV reading: accepted spellings, optional columns, and errors that name file, line and fix."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from covidct.decide import decide
from covidct.errors import InputError
from covidct.evaluate.predictions import PredictionRecord, read_predictions, to_records


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "preds.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_minimal_and_full_rows(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "case,truth,prediction,p_normal,p_cap,p_covid19,slice_predictions,slice_truth,time_s\n"
        "P001,COVID-19,covid19,0.1,0.2,0.7,0 2 2;1|-1,0 2 2 1 0,12.5\n"
        "cap001,CAP,1,0.2,0.6,0.2,,,\n"
        "\n"
        "n1,Normal,normal,1,0,0,0 0,-1 0,\n",
    )
    recs = read_predictions(p)
    assert [r.case for r in recs] == ["P001", "cap001", "n1"]
    assert recs[0] == PredictionRecord("P001", 2, 2, (0.1, 0.2, 0.7), (0, 2, 2, 1, -1), (0, 2, 2, 1, 0), 12.5)
    assert (recs[1].truth, recs[1].prediction, recs[1].slice_predictions, recs[1].time_s) == (
        1,
        1,
        None,
        None,
    )
    assert recs[2].slice_truth == (-1, 0)
    minimal = read_predictions(write(tmp_path, "Case,Truth,Prediction\na,0,2\n"))
    assert minimal == [PredictionRecord("a", 0, 2)]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("case,prediction\na,cap\n", r"line 1: missing column\(s\) truth"),
        (
            "case,truth,prediction\na,cap,flu\n",
            r"line 2: bad prediction 'flu': use one of normal, cap, covid19",
        ),
        ("case,truth,prediction\na,cap,cap\nb,cap\n", r"line 3: 2 fields but the header has 3"),
        ("case,truth,prediction\na,cap,cap\na,cap,normal\n", r"line 3: case 'a' already on line 2"),
        ("case,truth,prediction,p_normal\na,cap,cap,0.2\n", r"line 1: give all of p_normal,p_cap,p_covid19"),
        ("case,truth,prediction,p_normal,p_cap,p_covid19\na,cap,cap,x,0,0\n", r"line 2: probabilities"),
        ("case,truth,prediction,slice_predictions\na,cap,cap,0 1 7\n", r"line 2: bad slice_predictions"),
        ("case,truth,prediction,time_s\na,cap,cap,-3\n", r"line 2: time_s must be a non-negative"),
        ("case,truth,prediction\n", r"no data rows"),
        ("", r"empty file"),
        (
            "case,truth,prediction,slice_predictions,slice_truth\na,0,0,0 0,0\n",
            r"2 slices but slice_truth has 1",
        ),
    ],
)
def test_errors_name_file_line_and_fix(tmp_path: Path, text: str, pattern: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(InputError, match=pattern) as info:
        read_predictions(p)
    assert str(p) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_predictions(tmp_path / "nope.csv")


def test_to_records_from_decisions_and_names() -> None:
    d = decide([0, 0, 2, 2, 2, 2, 2, 0, 0, 0])
    recs = to_records([("a", "covid19", d), ("b", "normal", "cap"), PredictionRecord("c", 1, 1)])
    assert recs[0].prediction == 2 and recs[0].slice_predictions == d.slice_predictions
    assert recs[0].scores == (d.fractions["normal"], d.fractions["cap"], d.fractions["covid19"])
    assert (recs[1].truth, recs[1].prediction) == (0, 1)
    with pytest.raises(ValueError, match="duplicate"):
        to_records([("a", 0, 0), ("a", 1, 1)])


def test_to_records_from_study_result_like_object() -> None:
    probs = np.full((10, 3), np.nan)
    probs[1:9] = [0.2, 0.2, 0.6]  # kept range is [1, 9) for 10 slices
    probs[4] = [0.6, 0.2, 0.2]
    result = SimpleNamespace(decision=decide(probs), probabilities=probs, timing_s={"total": 3.5})
    (rec,) = to_records([("P001", "covid19", result)])
    assert rec.prediction == 2 and rec.time_s == 3.5
    assert rec.scores == pytest.approx((0.25, 0.2, 0.55))
    assert rec.slice_predictions is not None and rec.slice_predictions[0] == -1
