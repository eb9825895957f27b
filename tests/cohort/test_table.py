"""The cohort results table: the confidence and referral columns, and that ``covidct evaluate`` still reads it."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))  # fake_study

from fake_study import fake_confidence, fake_result, make_volume

from covidct.cohort.table import COLUMNS, row_of, write_table
from covidct.diagnose import study_document


def _doc(confidence: object) -> dict[str, object]:
    volume, mask = make_volume(n=10, size=32)
    return study_document(fake_result(volume, mask, seed=1, confidence=confidence))


def test_rows_carry_the_confidence_and_the_referral(tmp_path: Path) -> None:
    rows = [
        row_of("a", "covid19", _doc(fake_confidence(0.62, refer=True, threshold=0.8)), None),
        row_of("b", "covid19", _doc(fake_confidence(0.91, refer=False, threshold=0.8)), None),
        row_of(
            "c", "covid19", _doc(fake_confidence(0.7, refer=None, threshold=None, calibrated=False)), None
        ),
        row_of("d", "covid19", _doc(None), None),  # a document made before confidences
        row_of("e", "normal", None, "cannot read the study"),
    ]
    assert COLUMNS[-2:] == ("confidence", "refer")  # last: the earlier columns keep their places
    written = write_table(rows, tmp_path)
    with (tmp_path / "results.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["case"], r["confidence"], r["refer"]) for r in table] == [
        ("a", "0.62", "true"),
        ("b", "0.91", "false"),
        ("c", "0.7", ""),
        ("d", "", ""),
        ("e", "", ""),
    ]
    if len(written) > 1:  # with pyarrow: a numeric confidence and a nullable boolean refer
        import pyarrow.parquet as pq

        parquet = pq.read_table(tmp_path / "results.parquet").to_pydict()
        assert parquet["confidence"] == [0.62, 0.91, 0.7, None, None]
        assert parquet["refer"] == [True, False, None, None, None]


def test_evaluate_reads_the_table_with_the_new_columns(tmp_path: Path) -> None:
    from covidct.evaluate.predictions import read_predictions

    rows = [
        row_of("a", "covid19", _doc(fake_confidence(0.62, refer=True, threshold=0.8)), None),
        row_of("b", "covid19", _doc(None), None),
        row_of("e", "normal", None, "cannot read the study"),
    ]
    write_table(rows, tmp_path)
    records = read_predictions(tmp_path / "results.csv")
    assert [r.case for r in records] == ["a", "b"]  # the error row left out, the extra columns ignored
    assert all(r.scores is not None for r in records)
