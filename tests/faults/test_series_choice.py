"""Issue 12, item 7: several series in one folder. The choice is said (stderr, ``series_choice`` in the JSON);
series of different patients or studies are refused unless ``--series`` picks one."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fake_study import FakeDiagnoser, phantom, write_dicom_series
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from serve_helpers import wait_done

from covidct.cli.main import main


def _series(
    folder: Path, n: int, *, number: int, study: str, patient: str = "PID-4711", size: int = 32
) -> str:
    """A lung phantom series of ``n`` slices (a 2.5 mm grid); returns its SeriesInstanceUID."""
    hu, _ = phantom(n, size)
    paths = write_dicom_series(folder, hu, patient_id=patient, spacing=(2.5, 2.5, 2.5))
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID, ds.SeriesNumber = study, number
        ds.SeriesDescription = f"CHEST {number}"
        ds.save_as(p)
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture
def one_patient_two_series(tmp_path: Path) -> Path:
    study = generate_uid()
    _series(tmp_path / "two" / "a", 8, number=3, study=study, size=128)  # large enough for the chest check
    _series(tmp_path / "two" / "b", 6, number=5, study=study, size=128)
    return tmp_path / "two"


@pytest.fixture
def two_patients(tmp_path: Path) -> tuple[Path, str]:
    _series(tmp_path / "mixed" / "a", 8, number=3, study=generate_uid(), patient="SECRET-A-1")
    uid = _series(tmp_path / "mixed" / "b", 6, number=5, study=generate_uid(), patient="SECRET-B-2")
    return tmp_path / "mixed", uid


def test_the_choice_is_said_and_recorded(
    one_patient_two_series: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert main(["info", str(one_patient_two_series), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_slices"] == 8
    choice = doc["series_choice"]
    assert choice["chosen"] == {"series_number": 3, "series_description": "CHEST 3", "n_slices": 8}
    assert choice["left_out"] == [{"series_number": 5, "series_description": "CHEST 5", "n_slices": 6}]
    said = [r.getMessage() for r in caplog.records if "axial CT series" in r.getMessage()]
    assert said and "chose series 3" in said[0] and "left out series 5" in said[0] and "--series" in said[0]
    assert main(["info", str(one_patient_two_series), "--json", "--series", "5"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_slices"] == 6 and doc["series_choice"]["chosen"]["series_number"] == 5


def test_series_of_two_patients_are_refused_unless_one_is_picked(
    two_patients: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, uid_b = two_patients
    assert main(["info", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 different patients" in err[0] and "--series" in err[0]
    assert "series 3 'CHEST 3' (8 slices)" in err[0] and "series 5 'CHEST 5' (6 slices)" in err[0]
    assert "SECRET" not in err[0]  # never the patients' IDs
    assert main(["info", str(folder), "--json", "--series", uid_b]) == 0
    assert json.loads(capsys.readouterr().out)["n_slices"] == 6
    assert main(["info", str(folder), "--series", "9"]) == 2
    assert "no series '9' here" in capsys.readouterr().err


@pytest.mark.slow
def test_diagnose_json_carries_the_choice(
    one_patient_two_series: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["diagnose", str(one_patient_two_series), "--model", str(tiny_model_dir), "--no-strip"]
    assert main([*args, "-o", str(out)]) == 0
    doc = json.loads((out / "two.json").read_text())
    assert doc["series_choice"]["left_out"][0]["series_number"] == 5
    assert main([*args, "-o", str(out / "picked"), "--series", "5"]) == 0
    doc = json.loads((out / "picked" / "two.json").read_text())
    assert doc["n_slices"] == 6 and doc["series_choice"]["chosen"]["series_number"] == 5
    assert doc["input"] == str(one_patient_two_series)


def test_service_refuses_two_patients_and_reports_the_choice(
    two_patients: tuple[Path, str], one_patient_two_series: Path, make_app: Callable[..., Any]
) -> None:
    def zipped(folder: Path) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(folder.rglob("*.dcm")):
                zf.write(p, p.relative_to(folder).as_posix())
        return buf.getvalue()

    with TestClient(make_app(diagnoser=FakeDiagnoser(seed=0))) as client:
        job = client.post("/v1/studies", files={"file": ("m.zip", zipped(two_patients[0]))}).json()["id"]
        failed = wait_done(client, job)
        assert failed.status_code == 422 and "2 different patients" in failed.json()["error"]
        assert "SECRET" not in failed.text
        job = client.post("/v1/studies", files={"file": ("t.zip", zipped(one_patient_two_series))}).json()[
            "id"
        ]
        done = wait_done(client, job)
        assert done.status_code == 200, done.text
        assert done.json()["result"]["series_choice"]["left_out"][0]["series_number"] == 5
