"""Issue 12, item 9: the headers a hospital's security review expects, a CSP the viewer passes, results
never cached, and an anonymous /healthz that says only "ok"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import wait_done

CHROMIUM = "/usr/bin/chromium"
TOKEN = "s3cret-token"
GOOD = {"Authorization": f"Bearer {TOKEN}"}


def _hardened(resp: Any) -> str:
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
    csp = resp.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    return str(csp)


def test_every_response_is_hardened_and_results_are_not_cached(
    make_app: Callable[..., Any], nifti_bytes: bytes
) -> None:
    with TestClient(make_app(token=TOKEN)) as client:
        csp = _hardened(client.get("/static/viewer.html"))
        assert "script-src 'self';" in csp and "unsafe" not in csp and "connect-src 'self'" in csp
        assert "img-src 'self' blob:" in csp  # the viewer shows slices through blob: URLs
        job = client.post("/v1/studies", files={"file": ("s.nii.gz", nifti_bytes)}, headers=GOOD).json()["id"]
        assert wait_done(client, job, headers=GOOD).json()["status"] == "done"
        for path in ("", "/slices/3.png", "/mask/3.png", "/report.html"):
            resp = client.get(f"/v1/studies/{job}{path}", headers=GOOD)
            assert resp.status_code == 200, path
            _hardened(resp)
            assert resp.headers["cache-control"] == "no-store", path
        report_csp = client.get(f"/v1/studies/{job}/report.html", headers=GOOD).headers[
            "content-security-policy"
        ]
        assert (
            "script-src" not in report_csp and "default-src 'none'" in report_csp
        )  # a report runs no script
        refused = client.get("/v1/studies/nope", headers=GOOD)
        assert refused.status_code == 404 and refused.headers["cache-control"] == "no-store"
        _hardened(refused)
        _hardened(client.get(f"/v1/studies/{job}"))  # 401 too
        docs = client.get("/docs")
        assert docs.status_code == 200 and "https://cdn.jsdelivr.net" in _hardened(docs)


def test_healthz_without_the_token_says_only_ok(make_app: Callable[..., Any]) -> None:
    with TestClient(make_app(token=TOKEN)) as client:
        anonymous = client.get("/healthz")
        assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}
        wrong = client.get("/healthz", headers={"Authorization": "Bearer wrong-token"})
        assert wrong.json() == {"status": "ok"}
        full = client.get("/healthz", headers=GOOD).json()
        assert full["status"] == "ok" and "version" in full and "jobs" in full and "model" in full
    with TestClient(make_app()) as client:  # no token set: the service is open, health says all
        assert "jobs" in client.get("/healthz").json()


def _until(page: Any, expression: str, timeout: float) -> None:
    import time

    deadline = time.time() + timeout
    while not page.evaluate(expression):
        assert time.time() < deadline, f"still false after {timeout} s: {expression}"
        time.sleep(0.1)


@pytest.mark.browser
def test_the_viewer_runs_under_its_csp(make_app: Callable[..., Any], tmp_path: Path) -> None:
    """Headless Chromium: upload, show slices, masks and heat maps with no CSP violation reported."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from fake_study import make_volume
    from serve_helpers import LiveServer

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium)")
    volume, _ = make_volume(n=12, size=48)
    study = volume.save(tmp_path / "study.nii.gz")
    with LiveServer(make_app()) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.add_init_script(
                "window.__csp = []; document.addEventListener('securitypolicyviolation', "
                "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
            )
            console: list[str] = []
            page.on("console", lambda msg: console.append(msg.text))
            page.set_default_timeout(30_000)
            page.goto(server.url + "/")
            page.set_input_files("#file", str(study))
            page.click("#upload")
            # page.evaluate runs outside the page's CSP; wait_for_function evaluates strings, which it forbids
            _until(page, "document.getElementById('status').textContent.startsWith('Done')", 60)
            _until(page, "document.getElementById('slice-img').naturalWidth === 48", 30)
            page.hover("#stack")
            page.mouse.wheel(0, 120)
            page.wait_for_timeout(500)
            violations = page.evaluate("window.__csp")
        finally:
            browser.close()
    assert violations == [], violations
    assert not [m for m in console if "Content Security Policy" in m], console


def test_echoed_ids_are_capped_and_the_seg_link_warns(make_app: Callable[..., Any]) -> None:
    with TestClient(make_app()) as client:
        long_id = "<b>" + "x" * 5000
        resp = client.get(f"/v1/studies/{long_id}")
        assert resp.status_code == 404 and len(resp.text) < 300 and "x" * 41 not in resp.text
        assert client.delete(f"/v1/studies/{long_id}").status_code == 404
        viewer = client.get("/static/viewer.html").text
        assert "DICOM SEG (carries the patient's identifiers)" in viewer


def test_serve_cli_passes_the_zip_limits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    import covidct.diagnose
    from covidct.cli.main import main

    seen: dict[str, Any] = {}
    monkeypatch.setattr(covidct.diagnose, "Diagnoser", lambda *a, **k: object())
    monkeypatch.setattr(covidct.diagnose, "resolve_model_dir", lambda model: tmp_path)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(settings=app.state.settings, **kw))
    args = ["serve", "--max-zip-ratio", "20", "--max-zip-member-mb", "64", "--max-unzipped-mb", "512"]
    assert main([*args, "--work-dir", str(tmp_path / "w")]) == 0
    settings = seen["settings"]
    assert (settings.max_zip_ratio, settings.max_zip_member_mb, settings.max_unzipped_mb) == (20, 64, 512)
    assert seen["host"] == "127.0.0.1"
