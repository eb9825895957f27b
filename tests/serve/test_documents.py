"""Concurrent requests for a study's documents (review item 1): each document is written once, whole."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import wait_done


@pytest.mark.slow
def test_concurrent_document_requests_write_each_document_once(
    make_app: Callable[..., Any], dicom_zip_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import covidct.report.dicom_seg as dicom_seg
    import covidct.report.html as html
    import covidct.report.pdf as pdf

    calls: dict[str, int] = {}

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            time.sleep(0.3)  # widen the window in which a second request could start writing too
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(html, "write_report", counting("html", html.write_report))
    monkeypatch.setattr(pdf, "write_pdf", counting("pdf", pdf.write_pdf))
    monkeypatch.setattr(dicom_seg, "write_dicom_seg", counting("seg", dicom_seg.write_dicom_seg))
    with TestClient(make_app(workers=2)) as client:
        job = client.post("/v1/studies", files={"file": ("s.zip", dicom_zip_bytes)}).json()["id"]
        assert wait_done(client, job).json()["status"] == "done"
        urls = [
            f"/v1/studies/{job}/{doc}" for doc in ("report.html", "report.pdf", "seg.dcm") for _ in range(4)
        ]
        with ThreadPoolExecutor(max_workers=len(urls)) as pool:
            responses = list(pool.map(client.get, urls))
        assert [r.status_code for r in responses] == [200] * len(urls), [r.text[:200] for r in responses]
        assert calls == {"html": 1, "pdf": 1, "seg": 1}
        by_doc: dict[str, set[bytes]] = {}
        for url, resp in zip(urls, responses, strict=True):
            by_doc.setdefault(url, set()).add(resp.content)
        assert all(len(contents) == 1 for contents in by_doc.values())  # every client got the same file
        pdf_bytes = next(iter(by_doc[urls[4]]))
        assert pdf_bytes.startswith(b"%PDF-") and pdf_bytes.rstrip().endswith(b"%%EOF")
        cache = client.app.state.store.work_dir / job / "cache"
        assert sorted(p.name for p in cache.iterdir() if "partial" in p.name) == []
