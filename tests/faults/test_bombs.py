"""Issue 12, item 1: zip and gzip bombs are refused before extraction, a file of zeros is never parsed as a
DICOM header, and a running service job can be cancelled.

The bomb is built on the fly: one 300 MB member of zeros deflates to about 300 kB (ratio ~1000).
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fake_study import FakeDiagnoser
from fastapi.testclient import TestClient
from serve_helpers import wait_done

from covidct.errors import InputError
from covidct.io import safe_extract_zip

BOMB_MB = 300
CHUNK = b"\0" * (1 << 20)


@pytest.fixture(scope="module")
def bomb_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
        zf.open("study/IM0001.dcm", "w", force_zip64=True) as member,
    ):
        for _ in range(BOMB_MB):
            member.write(CHUNK)
    assert path.stat().st_size < 5 * (1 << 20)
    return path


def _cli(*args: str, timeout: float = 120) -> SimpleNamespace:
    """``covidct ARGS`` in a child process (bounded even when the code under test is not); ``read_mib`` is
    what the command read through read() (Linux ``/proc/self/io`` rchar, start-up imports left out): work,
    not time, so the machine's load does not change it. Give ``--workers 1`` for reads done in-process."""
    code = (
        "import sys, json\n"
        "from covidct.cli.main import main\n"
        "def rchar():\n"
        "    return int(next(l for l in open('/proc/self/io') if l.startswith('rchar')).split()[1])\n"
        "before = rchar(); rc = main(sys.argv[1:]); read = rchar() - before\n"
        "print(json.dumps({'rc': rc, 'read_mib': read / 2**20}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return SimpleNamespace(rc=out["rc"], read_mib=out["read_mib"], err=proc.stderr.strip(), out=proc.stdout)


def test_cli_refuses_a_zip_bomb_before_extracting(bomb_zip: Path) -> None:
    run = _cli("info", str(bomb_zip))
    assert run.rc == 2, run.err
    lines = run.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in run.err
    assert "compression ratio" in lines[0] and "zip bomb" in lines[0] and "IM0001.dcm" in lines[0]
    assert "refused before extraction" in lines[0]


def test_zip_limits_per_member_total_and_ratio(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()  # does not compress
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", noise[: 2 << 20])
        zf.writestr("b.dcm", noise[2 << 20 :])
    with pytest.raises(InputError, match=r"'a\.dcm' is 2 MiB uncompressed, past the limit of 1 MiB a file"):
        safe_extract_zip(archive, tmp_path / "o1", max_member_bytes=1 << 20)
    with pytest.raises(InputError, match="exceed the limit"):
        safe_extract_zip(archive, tmp_path / "o2", max_bytes=(3 << 20) - 1)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()  # refused before extraction
    zeros = tmp_path / "zeros.zip"
    with zipfile.ZipFile(zeros, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("z.dcm", bytes(2 << 20))
    with pytest.raises(InputError, match="compression ratio limit of 50x"):
        safe_extract_zip(zeros, tmp_path / "o3", max_ratio=50, ratio_min_bytes=1 << 20)
    many = tmp_path / "many.zip"  # many small members: the archive as a whole is judged too
    with zipfile.ZipFile(many, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(8):
            zf.writestr(f"z{i}.dcm", bytes(512 << 10))
    with pytest.raises(InputError, match="the archive expands"):
        safe_extract_zip(many, tmp_path / "o4", max_ratio=50, ratio_min_bytes=1 << 20)
    # honest archives under the limits are extracted
    assert safe_extract_zip(archive, tmp_path / "ok").joinpath("b.dcm").stat().st_size == 1 << 20


@pytest.mark.parametrize("preamble", [False, True], ids=["zeros", "DICM then zeros"])
def test_a_2gib_file_of_zeros_is_not_parsed_as_dicom(
    preamble: bool, tmp_path: Path, dicom_writer: SimpleNamespace
) -> None:
    from pydicom.uid import generate_uid

    study = tmp_path / "study"
    study.mkdir()
    hu = dicom_writer.phantom(4, 16, 16)
    series, stu = generate_uid(), generate_uid()
    for k in range(4):
        dicom_writer.write_slice(
            study / f"IM{k:04d}.dcm",
            hu[k],
            ipp=(0, 0, -2.0 * k),
            series_uid=series,
            study_uid=stu,
            instance=k + 1,
        )
    with open(study / "IM9999.dcm", "wb") as fh:  # sparse: 2 GiB of zeros without writing them
        if preamble:
            fh.write(bytes(128) + b"DICM")
        fh.truncate(2 << 30)
    run = _cli("info", str(study), "--json", "--workers", "1")
    assert run.rc == 0, run.err
    doc = json.loads(run.out.splitlines()[0])
    assert doc["n_slices"] == 4
    skipped = {Path(s["path"]).name: s["reason"] for s in doc["skipped"]}
    assert "not a" in skipped["IM9999.dcm"] and "DICOM file" in skipped["IM9999.dcm"]
    assert run.read_mib < 256, f"read {run.read_mib:.0f} MiB: the 2 GiB file was read"


class _NoRead:
    """A diagnoser that never reads its input (the refusal must come before any diagnosis)."""

    def diagnose(self, source: Any, **_: Any) -> Any:
        raise InputError("not read in this test")


def test_service_refuses_zip_and_gzip_bombs_at_upload(
    bomb_zip: Path, make_app: Callable[..., Any], tmp_path: Path
) -> None:
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=1) as fh:
        for _ in range(64):
            fh.write(CHUNK)
    with TestClient(make_app(diagnoser=_NoRead())) as client:
        for name, data, needle in (
            ("bomb.zip", bomb_zip.read_bytes(), "compression ratio"),
            ("bomb.nii.gz", gz.getvalue(), "expands more than 100x"),
        ):
            resp = client.post("/v1/studies", files={"file": (name, data)})
            assert resp.status_code == 400, resp.text
            assert needle in resp.json()["detail"] and "bomb" in resp.json()["detail"]
            assert str(tmp_path) not in resp.text
        assert client.get("/healthz").json()["status"] == "ok"
        work = client.app.state.store.work_dir
        assert not list(work.glob("*/input/*")), "a refused upload left data on disk"


def test_delete_cancels_queued_and_running_jobs(make_app: Callable[..., Any], nifti_bytes: bytes) -> None:
    with TestClient(make_app(diagnoser=FakeDiagnoser(delay_s=2.0), workers=1)) as client:
        store = client.app.state.store
        running = client.post("/v1/studies", files={"file": ("a.nii.gz", nifti_bytes)}).json()["id"]
        queued = client.post("/v1/studies", files={"file": ("b.nii.gz", nifti_bytes)}).json()["id"]
        deadline = time.time() + 30
        while client.get(f"/v1/studies/{running}").json()["status"] != "running":
            assert time.time() < deadline
            time.sleep(0.05)
        gone = client.delete(f"/v1/studies/{queued}")
        assert gone.status_code == 200 and gone.json()["status"] == "deleted"
        assert client.get(f"/v1/studies/{queued}").status_code == 404
        assert not (store.work_dir / queued).exists()
        cancelling = client.delete(f"/v1/studies/{running}")
        assert cancelling.status_code == 202 and cancelling.json()["status"] == "cancelling"
        assert client.get(f"/v1/studies/{running}").json()["cancelled"] is True
        deadline = time.time() + 30
        while client.get(f"/v1/studies/{running}").status_code != 404:
            assert time.time() < deadline, "the cancelled job was never dropped"
            time.sleep(0.05)
        assert not (store.work_dir / running).exists()
        assert client.get("/healthz").json()["jobs"] == {"queued": 0, "running": 0, "done": 0, "failed": 0}
        done = client.post("/v1/studies", files={"file": ("c.nii.gz", nifti_bytes)}).json()["id"]
        assert wait_done(client, done).json()["status"] == "done"
        assert client.delete(f"/v1/studies/{done}").json()["status"] == "deleted"
        assert client.delete(f"/v1/studies/{done}").status_code == 404
