"""The service never tells a client where it keeps uploads (review item 2)."""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import wait_done


def _post(client: Any, data: bytes) -> Any:
    return client.post("/v1/studies", files={"file": ("Doe_Jane.bin", data)})


def _bad_nifti() -> bytes:
    """A NIfTI-1 header (sniffs as NIfTI) whose dimensions promise far more voxels than follow."""
    header = bytearray(352)
    header[0:4] = struct.pack("<i", 348)
    header[40:56] = struct.pack("<8h", 3, 64, 64, 40, 1, 1, 1, 1)
    header[70:72] = struct.pack("<h", 4)  # int16
    header[72:74] = struct.pack("<h", 16)
    header[76:92] = struct.pack("<4f", 1, 1, 1, 1)
    header[108:112] = struct.pack("<f", 352)
    header[344:348] = b"n+1\0"
    return bytes(header) + b"\0" * 100


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _assert_no_path(text: str, client: Any) -> None:
    store = client.app.state.store
    assert "/tmp" not in text and str(store.work_dir) not in text and store.work_dir.name not in text, text


@pytest.mark.parametrize(
    "payload",
    [
        _zip({"readme.txt": b"no images here"}),
        _zip({"study/a.dcm": b"\0" * 128 + b"DICM" + b"garbage" * 10}),
        _bad_nifti(),
        b"PK\x03\x04" + b"not really a zip" * 10,
    ],
    ids=["zip-without-dicom", "zip-with-broken-dicom", "truncated-nifti", "corrupt-zip"],
)
def test_errors_name_the_upload_not_the_server_folder(
    make_app: Callable[..., Any], payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="covidct.serve")
    with TestClient(make_app()) as client:
        resp = _post(client, payload)
        if resp.status_code == 202:
            resp = wait_done(client, resp.json()["id"])
            assert resp.status_code == 422 and resp.json()["status"] == "failed"
            message = resp.json()["error"]
        else:
            assert resp.status_code == 400, resp.text
            message = resp.json()["detail"]
        assert message and "upload" in message
        _assert_no_path(resp.text, client)
        _assert_no_path(caplog.text, client)


def test_public_message_rewrites_every_spelling_of_the_job_folder(tmp_path: Path) -> None:
    from covidct.serve.jobs import Job, public_message

    real = tmp_path / "real"
    (real / "abc").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    work = tmp_path / "link"  # the service was given a path through a symbolic link
    job = Job(id="abc", dir=work / "abc")
    cases = {
        f"{job.dir}/input/study: no DICOM files": "upload: no DICOM files",
        f"{job.dir}/input/upload.nii.gz: not NIfTI": "upload: not NIfTI",
        f"{job.dir}/input/study/series1/IM1.dcm: unreadable": "upload/series1/IM1.dcm: unreadable",
        f"cannot open '{job.dir}/input/upload.zip' (bad)": "cannot open 'upload' (bad)",
        f"{real}/abc/input/study: resolved": "upload: resolved",  # a library that resolved the link
        f"{work}/other: y": "upload/other: y",
        "no path here": "no path here",
    }
    for text, expected in cases.items():
        assert public_message(text, job, work) == expected, text


def test_a_service_fault_while_storing_the_upload_answers_500_without_paths(
    make_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import covidct.serve.uploads as uploads_module

    def disk_full(head: bytes) -> str:
        raise OSError(28, "No space left on device", "/tmp/covidct-serve-x/job/input/upload.partial")

    monkeypatch.setattr(uploads_module, "sniff", disk_full)
    caplog.set_level("DEBUG", logger="covidct.serve")
    with TestClient(make_app()) as client:
        resp = _post(client, b"anything at all")
        assert resp.status_code == 500 and "could not be stored" in resp.json()["detail"]
        assert client.get("/healthz").json()["jobs"]["failed"] == 1
        _assert_no_path(resp.text + caplog.text, client)
