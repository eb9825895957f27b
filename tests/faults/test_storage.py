"""Issue 12, item 8: the disk kept for finished studies is bounded (oldest deleted first)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fake_study import FakeDiagnoser
from fastapi.testclient import TestClient
from serve_helpers import wait_done


def test_finished_studies_are_bounded_oldest_first(make_app: Callable[..., Any], nifti_bytes: bytes) -> None:
    with TestClient(make_app(max_kept_mb=0.2)) as client:  # about two studies of this size
        store = client.app.state.store
        ids = []
        for _ in range(4):
            job = client.post("/v1/studies", files={"file": ("s.nii.gz", nifti_bytes)}).json()["id"]
            assert wait_done(client, job).json()["status"] == "done"
            ids.append(job)
        kept = [j for j in ids if client.get(f"/v1/studies/{j}").status_code == 200]
        assert kept == ids[-len(kept) :] and 1 <= len(kept) <= 2, kept  # the newest survive
        assert not (store.work_dir / ids[0]).exists()
        size = sum(f.stat().st_size for f in store.work_dir.rglob("*") if f.is_file())
        assert size <= 0.2 * (1 << 20) + 1024


def test_a_finished_study_keeps_its_result_not_its_upload(
    make_app: Callable[..., Any], dicom_zip_bytes: bytes
) -> None:
    """Item 8: once done, the upload's pixels are gone (only the DICOM headers the SEG needs stay), HU are
    kept as int16, nothing of the study stays mapped in memory after a slice is shown, and a restart answers
    from the stored result without diagnosing again."""
    import numpy as np
    import pydicom

    from covidct.serve.stored import StoredArray

    diagnosed: list[object] = []

    class Counting(FakeDiagnoser):
        def diagnose(self, source: Any, *, progress: bool = False) -> Any:
            diagnosed.append(source)
            return super().diagnose(source, progress=progress)

    with TestClient(make_app(diagnoser=Counting(), durable=True)) as client:
        job = client.post("/v1/studies", files={"file": ("s.zip", dicom_zip_bytes)}).json()["id"]
        first = wait_done(client, job).json()
        assert first["status"] == "done"
        folder = client.app.state.store.work_dir / job
        files = [f for f in (folder / "input").rglob("*") if f.is_file()]
        assert len(files) == 8
        for f in files:
            assert "PixelData" not in pydicom.dcmread(f), f
        hu_file = folder / "arrays" / "hu.npy"
        assert np.load(hu_file, mmap_mode="r").dtype == np.int16
        result = client.app.state.store.get(job).result
        assert isinstance(result.volume.hu, StoredArray) and result.volume.hu[3].shape == (32, 32)
        assert client.get(f"/v1/studies/{job}/slices/3.png").status_code == 200
        assert client.get(f"/v1/studies/{job}/mask/3.png").status_code == 200
        seg = client.get(f"/v1/studies/{job}/seg.dcm")
        assert seg.status_code == 200, seg.text
        assert str(folder) not in Path("/proc/self/maps").read_text()  # no array of the study left mapped
    with TestClient(make_app(diagnoser=Counting(), durable=True)) as client:
        again = client.get(f"/v1/studies/{job}").json()
        assert again["status"] == "done" and again["result"] == first["result"]
        assert client.get(f"/v1/studies/{job}/slices/5.png").status_code == 200
    assert len(diagnosed) == 1  # the restart answered from the stored result
    import pickle

    doc = pickle.loads((folder / "result.pkl").read_bytes())
    assert doc["format"] == 1 and doc["result"].diagnosis == first["result"]["diagnosis"]
    from covidct.serve.stored import load_result

    assert load_result(folder) is not None
    (folder / "result.pkl").write_bytes(pickle.dumps({**doc, "format": 99}))  # from a later version
    assert load_result(folder) is None  # refused, so a restart reports it (as below) instead of serving it
    (folder / "result.pkl").write_bytes(b"not a pickle")  # cut short or damaged
    with TestClient(make_app(diagnoser=Counting(), durable=True)) as client:
        lost = client.get(f"/v1/studies/{job}")
        assert lost.status_code == 500 and "could not read" in lost.json()["error"], lost.text
    assert len(diagnosed) == 1  # never diagnosed from the header-only upload
