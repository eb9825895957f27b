"""The node as users run it: ``covidct listen`` killed between receiving and answering, ``covidct diagnose``
over DICOMweb (WADO-RS in, STOW-RS out), and ``covidct serve --dicom-port`` answering through its job queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from node_helpers import Orthanc, dicom_files, free_port
from test_listen import download, push, wait_idle

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def _listen(
    model: Path, store: Path, port: int, orthanc: Orthanc, quiet: float, log: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "covidct", "listen", "--model", str(model), "--port", str(port),
        "--store", str(store), "--quiet-seconds", str(quiet),
        "--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> None:
    from pynetdicom import AE

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"covidct listen exited with {proc.returncode}: {log.read_text()[-2000:]}")
        ae = AE(ae_title="PROBE")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="COVIDCT")
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.5)
    raise TimeoutError(f"covidct listen did not answer C-ECHO: {log.read_text()[-2000:]}")


def test_a_node_killed_before_answering_answers_after_a_restart(
    orthanc: Orthanc, tiny_model_dir: Path, cap001_dir: Path, tmp_path: Path
) -> None:
    files = dicom_files(cap001_dir)
    study, series = orthanc.upload(files)
    store, port, log = tmp_path / "store", free_port(), tmp_path / "listen.log"
    proc = _listen(tiny_model_dir, store, port, orthanc, quiet=600.0, log=log)  # never answers by itself
    try:
        _wait_port(port, proc, log)
        orthanc.register("killed", "COVIDCT", port)
        push(orthanc, "killed", series)  # synchronous: every instance acknowledged
        received = list((store / "incoming").glob("*/*.dcm"))
        assert len(received) == len(files)  # on disk before success was sent
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not [s for s in orthanc.series_of_study(study) if s["MainDicomTags"]["Modality"] == "SR"]
    proc = _listen(tiny_model_dir, store, port, orthanc, quiet=0.5, log=log)
    try:
        found = orthanc.wait_for_modalities(study, {"SR", "SEG", "DOC"}, timeout_s=300)
        assert len(found) == 3
        assert "restart: 1 received series not yet answered" in log.read_text()
        end = time.monotonic() + 60  # the answer is recorded just after the PACS took the objects
        while not list((store / "answered").glob("*.json")) and time.monotonic() < end:
            time.sleep(0.2)
        assert list((store / "answered").glob("*.json"))
        while list((store / "incoming").glob("*/*.dcm")) and time.monotonic() < end:
            time.sleep(0.2)
        assert not list((store / "incoming").glob("*/*.dcm"))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_diagnose_reads_a_series_by_wado_rs_and_stores_results_by_stow_rs(
    orthanc: Orthanc, tiny_model_dir: Path, normal001_dir: Path, tmp_path: Path
) -> None:
    files = dicom_files(normal001_dir)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, _ = orthanc.upload(files)
    before = {s["ID"] for s in orthanc.series_of_study(study)}
    url = f"dicomweb+{orthanc.dicomweb}/studies/{source.StudyInstanceUID}/series/{source.SeriesInstanceUID}"
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "covidct", "diagnose", url, "--model", str(tiny_model_dir), "-o", str(out),
         "--dicomweb-store", "--no-progress", "--no-strip"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "3 result objects stored back by STOW-RS" in run.stderr
    (doc,) = out.glob("*.json")
    assert doc.name == f"dicomweb-{source.SeriesInstanceUID.rsplit('.', 1)[-1]}.json"
    import json

    assert json.loads(doc.read_text())["input"] == url
    assert json.loads(doc.read_text())["n_slices"] == len(files)
    new = [s for s in orthanc.series_of_study(study) if s["ID"] not in before]
    assert sorted(s["MainDicomTags"]["Modality"] for s in new) == ["DOC", "SEG", "SR"]
    # a study the server does not hold: one line naming the fix, exit 1 (not a traceback)
    missing = f"dicomweb+{orthanc.dicomweb}/studies/1.2.3.4.5"
    run = subprocess.run(
        [sys.executable, "-m", "covidct", "diagnose", missing, "--model", str(tiny_model_dir), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and "could not retrieve study 1.2.3.4.5" in run.stderr


def test_serve_answers_dicom_through_its_job_queue(
    orthanc: Orthanc, diagnoser: Any, p001_dir: Path, tmp_path: Path
) -> None:
    from covidct.serve.app import ServeSettings, create_app
    from covidct.serve.dicom_node import DicomNode, NodeSettings, diagnose_through_jobs
    from covidct.serve.dicom_send import Destination
    from covidct.serve.jobs import DONE
    from covidct.serve.node_store import NodeStore

    app = create_app(diagnoser, settings=ServeSettings(work_dir=tmp_path / "work"))
    store = app.state.store
    node = DicomNode(
        diagnose_through_jobs(store),
        NodeStore(tmp_path / "node"),
        NodeSettings(
            port=free_port(), quiet_s=0.5, send_to=Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port)
        ),
        model=diagnoser.pipeline.identity.to_json(),
    )
    port = node.start()
    try:
        study, series = orthanc.upload(dicom_files(p001_dir))
        orthanc.register("served", "COVIDCT", port)
        push(orthanc, "served", series)
        found = orthanc.wait_for_modalities(study, {"SR"}, timeout_s=300)
        wait_idle(node)
        from fastapi.testclient import TestClient

        client = TestClient(app)
        (listed,) = client.get("/v1/studies").json()  # the received series is a study of the service
        assert listed["status"] == DONE and listed["kind"] == "dicom node"
        body = client.get(f"/v1/studies/{listed['id']}").json()
        assert body["result"]["diagnosis"] == node.answered[0]["diagnosis"]
        assert client.get(f"/v1/studies/{listed['id']}/slices/40.png").status_code == 200
        assert download(orthanc, found[0])
    finally:
        node.stop()
        store.close(remove=True)
