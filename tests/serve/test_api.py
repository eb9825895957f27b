from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_study import FakeDiagnoser
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import wait_done


def _png(resp: Any) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(resp.content)))


def _post(client: Any, data: bytes, name: str = "study.bin", headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/studies", files={"file": (name, data)}, headers=headers or {})


def test_nifti_upload_result_images_and_report(make_app: Callable[..., Any], nifti_bytes: bytes) -> None:
    with TestClient(make_app()) as client:
        resp = _post(client, nifti_bytes, "Doe_Jane.nii.gz")
        assert resp.status_code == 202, resp.text
        job = resp.json()["id"]
        done = wait_done(client, job)
        assert done.status_code == 200
        body = done.json()
        result = body["result"]
        assert body["status"] == "done" and result["diagnosis"] in result["classes"]
        assert result["n_slices"] == 12 and len(result["slice_probabilities"]) == 12
        assert "Doe_Jane" not in done.text and result["input"] == "upload (nifti-gz)"
        assert body["explanation"]
        grey = _png(client.get(f"/v1/studies/{job}/slices/5.png"))
        assert grey.shape == (48, 48)
        assert grey[24, 24] == 255 and 60 < grey[24, 14] < 90 and 35 < grey[1, 1] < 50  # body, lung, air
        mask = _png(client.get(f"/v1/studies/{job}/mask/5.png"))
        assert mask.shape == (48, 48, 4) and mask[..., 3].any() and not mask[2, 2, 3]
        heat = _png(client.get(f"/v1/studies/{job}/heatmap/5.png"))
        assert heat.shape == (48, 48, 4)
        assert client.get(f"/v1/studies/{job}/slices/12.png").status_code == 404
        assert client.get(f"/v1/studies/{job}/slices/1.png?window=bone").status_code == 422
        report = client.get(f"/v1/studies/{job}/report.html")
        assert report.status_code == 200 and "not a medical device" in report.text
        assert "Doe_Jane" not in report.text
        pdf = client.get(f"/v1/studies/{job}/report.pdf")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
        seg = client.get(f"/v1/studies/{job}/seg.dcm")
        assert seg.status_code == 409 and "NIfTI mask instead" in seg.json()["detail"]
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["jobs"]["done"] == 1
        assert "/v1/studies" in client.get("/openapi.json").json()["paths"]
        assert client.get("/docs").status_code == 200


def test_dicom_zip_gives_a_dicom_seg(make_app: Callable[..., Any], dicom_zip_bytes: bytes) -> None:
    import highdicom as hd

    with TestClient(make_app()) as client:
        job = _post(client, dicom_zip_bytes, "study.zip").json()["id"]
        assert wait_done(client, job).json()["status"] == "done"
        resp = client.get(f"/v1/studies/{job}/seg.dcm")
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/dicom"
        seg = hd.seg.segread(io.BytesIO(resp.content))
        assert int(seg.NumberOfFrames) == 8 * 2


def test_refusals_are_4xx_with_reasons(make_app: Callable[..., Any], tmp_path: Path) -> None:
    with TestClient(make_app(max_upload_mb=0.05, max_unzipped_mb=1)) as client:
        big = _post(client, b"\0" * 200_000)
        assert big.status_code == 413 and "limit of 0.05 MiB" in big.json()["detail"]

        def chunked() -> Any:  # no Content-Length: the limit is enforced while the body streams in
            yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
            for _ in range(40):
                yield b"\0" * 10_000
            yield b"\r\n--xyz--\r\n"

        streamed = client.post(
            "/v1/studies", content=chunked(), headers={"content-type": "multipart/form-data; boundary=xyz"}
        )
        assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]
        text = _post(client, b"hello, this is not a CT study\n" * 20)
        assert text.status_code == 415 and "DICOM" in text.json()["detail"]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("../../etc/evil.dcm", b"x" * 10)
        assert _post(client, buf.getvalue()).status_code == 400
        assert "traversal" in _post(client, buf.getvalue()).json()["detail"]
        bomb = io.BytesIO()
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("a.dcm", b"\0" * (3 << 20))
        assert len(bomb.getvalue()) < 50_000
        resp = _post(client, bomb.getvalue())
        assert resp.status_code == 400 and "exceed" in resp.json()["detail"] + "expands past"
        assert client.post("/v1/studies", data={"other": "x"}).status_code == 400
        notdicom = io.BytesIO()
        with zipfile.ZipFile(notdicom, "w") as zf:
            zf.writestr("readme.txt", "no images here")
        job = _post(client, notdicom.getvalue()).json()["id"]
        failed = wait_done(client, job)
        assert failed.status_code == 422 and failed.json()["status"] == "failed" and failed.json()["error"]
        # refused and failed uploads leave nothing behind
        store = client.app.state.store
        assert not (store.work_dir / job / "input").exists()
        assert client.get("/v1/studies/nope").status_code == 404


def test_bearer_token(make_app: Callable[..., Any], nifti_bytes: bytes) -> None:
    with TestClient(make_app(token="s3cret-token")) as client:
        assert _post(client, nifti_bytes).status_code == 401
        assert _post(client, nifti_bytes, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        good = {"Authorization": "Bearer s3cret-token"}
        resp = _post(client, nifti_bytes, headers=good)
        assert resp.status_code == 202
        job = resp.json()["id"]
        assert client.get(f"/v1/studies/{job}").status_code == 401
        assert wait_done(client, job, headers=good).json()["status"] == "done"
        assert client.get("/healthz").status_code == 200
        assert client.get("/static/viewer.html").status_code == 200


def test_retention_deletes_studies(make_app: Callable[..., Any], nifti_bytes: bytes) -> None:
    with TestClient(make_app(retention_minutes=0.5)) as client:
        store = client.app.state.store
        job = _post(client, nifti_bytes).json()["id"]
        assert wait_done(client, job).json()["status"] == "done"
        folder = store.work_dir / job
        assert folder.exists()
        assert store.sweep() == 0  # not yet expired
        finished = store.get(job).finished
        assert store.sweep(now=finished + 31) == 1
        assert not folder.exists() and client.get(f"/v1/studies/{job}").status_code == 404
        work = store.work_dir
    assert not work.exists()  # everything goes at shutdown


def test_queue_is_bounded_and_unfinished_studies_answer_409(
    make_app: Callable[..., Any], nifti_bytes: bytes
) -> None:
    with TestClient(make_app(diagnoser=FakeDiagnoser(delay_s=1.0), max_pending=1)) as client:
        job = _post(client, nifti_bytes).json()["id"]
        second = _post(client, nifti_bytes)
        assert second.status_code == 503 and "retry" in second.json()["detail"]
        assert client.get(f"/v1/studies/{job}/slices/0.png").status_code == 409
        assert wait_done(client, job).json()["status"] == "done"
        assert _post(client, nifti_bytes).status_code == 202


@pytest.mark.slow
def test_twenty_concurrent_uploads_all_finish(live_server: Callable[..., Any], nifti_bytes: bytes) -> None:
    import httpx

    with (
        live_server(workers=2, max_pending=32) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):

        def one(_: int) -> str:
            resp = client.post("/v1/studies", files={"file": ("s.nii.gz", nifti_bytes)})
            assert resp.status_code == 202, resp.text
            return str(wait_done(client, resp.json()["id"], timeout=120).json()["status"])

        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(one, range(20)))
        assert statuses == ["done"] * 20
        assert client.get("/healthz").json()["jobs"]["done"] == 20


def test_lesion_overlay_only_when_the_pipeline_segments_lesions(
    make_app: Callable[..., Any], nifti_bytes: bytes
) -> None:
    with TestClient(make_app()) as client:
        job = _post(client, nifti_bytes, "a.nii.gz").json()["id"]
        assert "involvement" not in wait_done(client, job).json()["result"]
        resp = client.get(f"/v1/studies/{job}/lesions/5.png")
        assert resp.status_code == 404 and "lesions/" in resp.json()["detail"]
    with TestClient(make_app(diagnoser=FakeDiagnoser(seed=0, lesions=True))) as client:
        job = _post(client, nifti_bytes, "a.nii.gz").json()["id"]
        done = wait_done(client, job).json()
        assert done["result"]["involvement"]["total"]["score_max"] == 30
        n = done["result"]["n_slices"]
        overlays = [_png(client.get(f"/v1/studies/{job}/lesions/{i}.png")) for i in range(n)]
        grey = _png(client.get(f"/v1/studies/{job}/slices/0.png"))
        assert all(o.shape[:2] == grey.shape[:2] and o.shape[2] == 4 for o in overlays)
        assert (
            any(o[..., 3].any() for o in overlays) or done["result"]["involvement"]["total"]["lesion_ml"] == 0
        )
        assert client.get(f"/v1/studies/{job}/lesions/{n}.png").status_code in (404, 422)


def test_the_result_and_the_viewer_carry_the_confidence(
    make_app: Callable[..., Any], nifti_bytes: bytes
) -> None:
    import math

    from fake_study import fake_confidence

    confidence = fake_confidence(0.9, refer=True, threshold=math.inf)
    with TestClient(make_app(diagnoser=FakeDiagnoser(seed=0, confidence=confidence))) as client:
        job = _post(client, nifti_bytes, "study.nii.gz").json()["id"]
        result = wait_done(client, job).json()["result"]
        assert result["confidence"] == {
            "value": 0.9,
            "refer": True,
            "threshold": "inf",  # strict JSON: every study is referred
            "probabilities": {"normal": 0.05, "cap": 0.05, "covid19": 0.9},
            "calibrated": True,
        }
        report = client.get(f"/v1/studies/{job}/report.html").text
        assert "Confidence 90 % (calibrated)" in report and "Refer to a radiologist" in report
        viewer = client.get("/static/viewer.html").text
        for element in ('id="confidence"', 'id="referral"', 'id="refer-badge"'):
            assert element in viewer
        script = client.get("/static/viewer.js").text
        assert "showConfidence(r.confidence)" in script and "Refer to a radiologist" in script
    with TestClient(make_app()) as client:  # a result without a confidence: none in the JSON
        job = _post(client, nifti_bytes, "study.nii.gz").json()["id"]
        assert "confidence" not in wait_done(client, job).json()["result"]
