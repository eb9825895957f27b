"""Issue 12, item 2: with a work folder (``covidct serve --work-dir``) jobs survive a restart. An accepted
upload is on disk with its state before 202; after a restart every id keeps its meaning (finished and
interrupted studies are diagnosed again from the kept upload, failed ones keep their reason), a study whose
upload is gone fails with the reason, and folders of uploads that never completed are swept."""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fake_study import FakeDiagnoser
from fastapi.testclient import TestClient
from serve_helpers import wait_done


def _post(client: Any, data: bytes, name: str = "s.nii.gz") -> str:
    resp = client.post("/v1/studies", files={"file": (name, data)})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def test_jobs_survive_a_restart(
    make_app: Callable[..., Any], nifti_bytes: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notdicom = io.BytesIO()
    with zipfile.ZipFile(notdicom, "w") as zf:
        zf.writestr("readme.txt", "no images here")
    work = tmp_path / "work"
    with (
        caplog.at_level(logging.INFO),
        TestClient(make_app(diagnoser=FakeDiagnoser(delay_s=1.5), durable=True, workers=1)) as client,
    ):
        done = _post(client, nifti_bytes)
        assert wait_done(client, done).json()["status"] == "done"
        failed = _post(client, notdicom.getvalue(), "x.zip")
        error = wait_done(client, failed).json()["error"]
        running = _post(client, nifti_bytes)
        queued = _post(client, nifti_bytes)
        state = json.loads((work / "jobs" / queued / "job.json").read_text())
        assert state["status"] == "queued" and state["source"] == "input/upload.nii.gz"  # on disk at 202
        assert "s.nii.gz" not in (work / "jobs" / queued / "job.json").read_text()
        deadline = time.time() + 30
        while client.get(f"/v1/studies/{running}").json()["status"] != "running":
            assert time.time() < deadline
            time.sleep(0.05)
    assert "shutdown: 1 queued studies kept on disk for the next start" in caplog.text
    # leftovers of a crash: an upload cut short, and a job whose upload vanished
    (work / "jobs" / ("a" * 32)).mkdir()
    (work / "jobs" / ("a" * 32) / "job.json").write_text(json.dumps({"id": "a" * 32, "status": "receiving"}))
    lost = "b" * 32
    (work / "jobs" / lost).mkdir()
    (work / "jobs" / lost / "job.json").write_text(
        json.dumps({"id": lost, "status": "queued", "created": 1.0, "source": "input/upload.nii.gz"})
    )

    with (
        caplog.at_level(logging.INFO),
        TestClient(make_app(diagnoser=FakeDiagnoser(), durable=True)) as client,
    ):
        for job in (done, running, queued):
            assert wait_done(client, job).json()["status"] == "done", job
            assert client.get(f"/v1/studies/{job}/slices/1.png").status_code == 200
        again = client.get(f"/v1/studies/{failed}")
        assert again.status_code == 422 and again.json()["error"] == error
        gone = client.get(f"/v1/studies/{lost}")
        assert (
            gone.status_code == 500
            and "restarted" in gone.json()["error"]
            and "upload it again" in gone.json()["error"]
        )
        assert not (work / "jobs" / ("a" * 32)).exists()
        assert client.get("/healthz").json()["jobs"] == {"queued": 0, "running": 0, "done": 3, "failed": 2}
    # the study running at shutdown finished before the service stopped: it is kept like the first one, as
    # its stored result (not diagnosed again); the queued one is diagnosed from its kept upload
    assert (
        "restart: 2 finished studies kept, 1 studies resumed, 2 failed studies kept, 1 unfinished uploads swept"
        in caplog.text
    )
    assert (work / "jobs" / done).exists()  # kept until deleted or expired, not wiped at shutdown
    assert not (work / "jobs" / done / "input").exists()  # a done NIfTI upload is deleted: its result stays


def test_without_a_work_folder_jobs_are_not_durable() -> None:
    from covidct.serve.app import ServeSettings

    with pytest.raises(ValueError, match="work_dir"):
        ServeSettings(durable=True)


def test_work_folders_of_killed_services_are_swept(make_app: Callable[..., Any], tmp_path: Path) -> None:
    import os
    import subprocess

    work = tmp_path / "work"
    work.mkdir()
    gone = subprocess.Popen(["true"])  # a process id that no longer exists
    gone.wait()
    stale, alive, foreign = work / "covidct-serve-old1", work / "covidct-serve-live", work / "covidct-serve-x"
    for folder in (stale, alive, foreign):
        (folder / "job").mkdir(parents=True)
    (stale / "owner.pid").write_text(str(gone.pid))
    (alive / "owner.pid").write_text(str(os.getpid()))
    with TestClient(make_app()) as client:
        assert not stale.exists()  # its service was killed: swept at the next start
        assert alive.exists() and foreign.exists()  # a running service's, and one without an owner
        own = client.app.state.store.work_dir
        assert (own / "owner.pid").read_text() == str(os.getpid())
    assert not own.exists()
