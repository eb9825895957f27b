"""Issue 12, item 6: a slice missing or truncated inside a series is refused like one that fails to decode
("the volume would have a gap", naming the file), on the command line and in the service; at either end it
only shortens the volume and is reported."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fake_study import FakeDiagnoser
from fastapi.testclient import TestClient
from serve_helpers import wait_done

from covidct.cli.main import main


def _series(folder: Path, dicom_writer: SimpleNamespace, n: int = 8, dz: float = 2.5) -> list[Path]:
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    hu = dicom_writer.phantom(n, 16, 16)
    series, study = generate_uid(), generate_uid()
    return [
        dicom_writer.write_slice(
            folder / f"IM{k:04d}.dcm", hu[k], ipp=(0, 0, 50 - dz * k), series_uid=series, study_uid=study,
            instance=k + 1,
        )
        for k in range(n)
    ]  # fmt: skip


def _info(capsys: pytest.CaptureFixture[str], study: Path) -> tuple[int, str]:
    code = main(["info", str(study), "--json"])
    return code, capsys.readouterr().err.strip()


def test_missing_file_inside_the_series_is_refused(
    tmp_path: Path, dicom_writer: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _series(tmp_path / "s", dicom_writer)
    paths[4].unlink()  # positions jump by 2x the spacing
    code, err = _info(capsys, tmp_path / "s")
    assert code == 2 and len(err.splitlines()) == 1
    assert "IM0003.dcm" in err and "IM0005.dcm" in err and "would have a gap" in err
    assert "5.00 mm step where the spacing is 2.50 mm" in err and "missing from the folder" in err


def test_truncated_file_inside_the_series_is_refused_and_named(
    tmp_path: Path, dicom_writer: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _series(tmp_path / "s", dicom_writer)
    paths[3].write_bytes(paths[3].read_bytes()[:-100])
    code, err = _info(capsys, tmp_path / "s")
    assert code == 2 and len(err.splitlines()) == 1
    assert "IM0003.dcm was left out (truncated file" in err and "would have a gap" in err


def test_missing_or_truncated_at_the_ends_is_kept_and_reported(
    tmp_path: Path, dicom_writer: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    paths = _series(tmp_path / "s", dicom_writer)
    paths[0].unlink()
    paths[-1].write_bytes(paths[-1].read_bytes()[:-100])
    assert main(["info", str(tmp_path / "s"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_slices"] == 6
    assert any("IM0007.dcm" in s["path"] and "truncated" in s["reason"] for s in doc["skipped"])


def test_service_refuses_a_study_with_a_hole(
    tmp_path: Path, dicom_writer: SimpleNamespace, make_app: Callable[..., Any]
) -> None:
    paths = _series(tmp_path / "s", dicom_writer)
    paths[2].write_bytes(paths[2].read_bytes()[:-100])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in paths:
            zf.write(p, f"series/{p.name}")
    with TestClient(make_app(diagnoser=FakeDiagnoser(seed=0))) as client:
        job = client.post("/v1/studies", files={"file": ("s.zip", buf.getvalue())}).json()["id"]
        failed = wait_done(client, job)
        assert failed.status_code == 422
        error = failed.json()["error"]
        assert "upload/series/IM0002.dcm was left out (truncated" in error and "would have a gap" in error
        assert str(tmp_path) not in failed.text
