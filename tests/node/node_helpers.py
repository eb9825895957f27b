"""Helpers of the node tests: a real Orthanc (Debian's package) on loopback ports with a throw-away
configuration, and dciodvfy."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    aet: str = "ORTHANC"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def rest(self, method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(method, self.url + path, timeout=120, **kw)
        r.raise_for_status()
        return (
            r.json() if r.content and r.headers.get("content-type", "").startswith("application/json") else r
        )

    def upload(self, files: list[Path]) -> tuple[str, str]:
        """POST every file; returns Orthanc's (study id, series id)."""
        last: dict[str, Any] = {}
        for f in files:
            last = self.rest("POST", "/instances", content=f.read_bytes())
        return last["ParentStudy"], last["ParentSeries"]

    def register(self, name: str, aet: str, port: int) -> None:
        self.rest("PUT", f"/modalities/{name}", json={"AET": aet, "Host": "127.0.0.1", "Port": port})

    def series_of_study(self, study: str) -> list[dict[str, Any]]:
        return list(self.rest("GET", f"/studies/{study}/series"))

    def wait_for_modalities(self, study: str, wanted: set[str], timeout_s: float) -> list[dict[str, Any]]:
        """Poll the study until series of every wanted modality exist; returns them (TimeoutError after)."""
        end = time.monotonic() + timeout_s
        while True:
            found = [s for s in self.series_of_study(study) if s["MainDicomTags"].get("Modality") in wanted]
            if {s["MainDicomTags"]["Modality"] for s in found} >= wanted or time.monotonic() > end:
                if time.monotonic() > end and {s["MainDicomTags"]["Modality"] for s in found} < wanted:
                    raise TimeoutError(
                        f"after {timeout_s} s the study has only {[s['MainDicomTags'] for s in found]}"
                    )
                return found
            time.sleep(0.5)


def available() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"{DICOMWEB_PLUGIN} missing (Debian: apt-get install orthanc-dicomweb)"
    return None


@contextmanager
def running_orthanc(folder: Path) -> Iterator[Orthanc]:
    folder.mkdir(parents=True, exist_ok=True)
    o = Orthanc(free_port(), free_port())
    config = {
        "Name": "covidct-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": o.http_port,
        "DicomPort": o.dicom_port,
        "DicomAet": o.aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpsVerifyPeers": False,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "DicomModalities": {},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        "StableAge": 1,
    }
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config), encoding="utf-8")
    log = (folder / "orthanc.log").open("wb")
    proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 60
        while True:
            try:
                httpx.get(o.url + "/system", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(
                        f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        yield o
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".dcm")


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy (Debian dicom3tools) prints for a file; fails the test when it is absent."""
    if shutil.which("dciodvfy") is None:
        if os.environ.get("COVIDCT_REQUIRE_SHARED_DATA") == "1":
            pytest.fail("dciodvfy is missing (apt-get install dicom3tools); CI must validate the objects")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
