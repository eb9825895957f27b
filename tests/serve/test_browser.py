"""End-to-end: headless Chromium (Debian's package) drives the viewer against a live loopback service."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "viewer"


@pytest.fixture
def page() -> Any:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        # bypass_csp: wait_for_function below evaluates strings, which the service's CSP forbids; the viewer
        # under its CSP is checked in tests/faults/test_hardening.py
        context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.set_default_timeout(30_000)
        yield pg
        context.close()
        browser.close()
        assert not errors, f"JavaScript errors in the viewer: {errors}"


def _upload(page: Any, url: str, study: Path) -> None:
    page.goto(url + "/")
    page.set_input_files("#file", str(study))
    page.click("#upload")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=60_000)


def test_viewer_upload_scroll_toggle(live_server: Callable[..., Any], page: Any, tmp_path: Path) -> None:
    from fake_study import make_volume

    volume, _ = make_volume(n=12, size=48)
    study = volume.save(tmp_path / "study.nii.gz")
    with live_server() as server:
        _upload(page, server.url, study)
        assert page.is_visible("#viewer")
        diagnosis = page.text_content("#diagnosis")
        assert diagnosis in ("Normal", "CAP", "COVID-19")
        # this result carries no confidence: nothing about it is shown
        assert not page.is_visible("#confidence") and not page.is_visible("#refer-badge")
        assert "slice" in page.text_content("#trace").lower() or page.text_content("#trace").strip()
        start = int(page.input_value("#slider"))
        page.wait_for_function("document.getElementById('slice-img').naturalWidth === 48")
        page.screenshot(path=str(ARTIFACTS / "01-result.png"), full_page=True)

        # mouse wheel over the image: one slice per notch
        page.hover("#stack")
        page.mouse.wheel(0, 120)
        page.wait_for_function(f"document.getElementById('slider').value === '{start + 1}'")
        assert page.text_content("#slice-index").startswith(f"slice {start + 1} /")
        assert page.get_attribute("#curve", "data-marked") == str(start + 1)
        # arrow keys
        page.focus("#stack")
        page.keyboard.press("ArrowUp")
        page.keyboard.press("ArrowUp")
        page.wait_for_function(f"document.getElementById('slider').value === '{start - 1}'")
        assert page.get_attribute("#curve", "data-marked") == str(start - 1)

        # overlays start hidden; toggling shows the mask and the heat map of the current slice
        assert not page.is_visible("#mask-img") and not page.is_visible("#heat-img")
        assert not page.is_visible("#lesion-label")  # this pipeline segments no lesions
        page.check("#toggle-mask")
        page.check("#toggle-heat")
        page.wait_for_function(
            "['mask-img','heat-img'].every(id => {const i = document.getElementById(id);"
            " return !i.hidden && i.complete && i.naturalWidth === 48 && i.src.startsWith('blob:')})"
        )
        assert page.get_attribute("#mask-img", "data-index") == str(start - 1)
        page.screenshot(path=str(ARTIFACTS / "02-overlays.png"), full_page=True)
        # the curve click jumps to a slice
        page.uncheck("#toggle-heat")
        assert not page.is_visible("#heat-img") and page.is_visible("#mask-img")
        box = page.locator("#curve").bounding_box()
        page.mouse.click(box["x"] + 21, box["y"] + box["height"] / 2)
        page.wait_for_function("document.getElementById('slider').value === '0'")
        assert "(not kept)" in page.text_content("#slice-pred")  # slice 0 is truncated by the rule
        page.screenshot(path=str(ARTIFACTS / "03-slice0.png"), full_page=True)

        # the report opens in the browser, self-contained, with the decision and the mosaic
        study_id = page.get_attribute("#viewer", "data-study")
        page.goto(f"{server.url}/v1/studies/{study_id}/report.html")
        assert page.text_content("#diagnosis") == diagnosis
        assert "not a medical device" in page.text_content("#disclaimer")
        assert page.locator("#mosaic img").count() >= 1
        page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(ARTIFACTS / "05-report.png"), full_page=True)


def test_viewer_lesion_overlay_toggles(live_server: Callable[..., Any], page: Any, tmp_path: Path) -> None:
    from fake_study import FakeDiagnoser, make_volume

    volume, _ = make_volume(n=12, size=48)
    study = volume.save(tmp_path / "study.nii.gz")
    with live_server(diagnoser=FakeDiagnoser(seed=0, lesions=True)) as server:
        _upload(page, server.url, study)
        assert page.is_visible("#lesion-label") and not page.is_visible("#lesion-img")
        page.check("#toggle-lesions")
        page.wait_for_function(
            "(() => {const i = document.getElementById('lesion-img');"
            " return !i.hidden && i.complete && i.naturalWidth === 48 && i.src.startsWith('blob:')})()"
        )
        page.screenshot(path=str(ARTIFACTS / "06-lesions.png"), full_page=True)
        page.uncheck("#toggle-lesions")
        assert not page.is_visible("#lesion-img")


@pytest.mark.parametrize(
    ("confidence", "badge", "referral"),
    [
        (
            {"value": 0.6234, "refer": True, "threshold": 0.8},
            True,
            "Refer to a radiologist: confidence below the model's threshold (80 %)",
        ),
        (
            {"value": 0.7, "refer": None, "threshold": None, "calibrated": False},
            False,
            "No referral threshold was fitted for this model: it gives no advice on referral.",
        ),
    ],
)
def test_viewer_shows_the_confidence_and_the_refer_badge(
    live_server: Callable[..., Any],
    page: Any,
    tmp_path: Path,
    confidence: dict[str, Any],
    badge: bool,
    referral: str,
) -> None:
    from fake_study import FakeDiagnoser, fake_confidence, make_volume

    volume, _ = make_volume(n=12, size=48)
    study = volume.save(tmp_path / "study.nii.gz")
    diagnoser = FakeDiagnoser(seed=0, confidence=fake_confidence(**confidence))
    with live_server(diagnoser=diagnoser) as server:
        _upload(page, server.url, study)
        calibrated = "calibrated" if confidence.get("calibrated", True) else "not calibrated"
        value = round(100 * confidence["value"])
        assert page.text_content("#confidence") == f"Confidence {value} % ({calibrated})"
        assert page.is_visible("#confidence") and page.is_visible("#referral")
        assert page.text_content("#referral") == referral
        assert page.is_visible("#refer-badge") is badge
        assert (page.get_attribute("#referral", "class") == "refer") is badge
        if badge:
            assert page.text_content("#refer-badge").strip().lower() == "refer"
            page.screenshot(path=str(ARTIFACTS / "07-refer.png"), full_page=True)


def test_viewer_shows_refusals(live_server: Callable[..., Any], page: Any, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not a CT study\n" * 50)
    with live_server() as server:
        page.goto(server.url + "/")
        page.set_input_files("#file", str(bad))
        page.click("#upload")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Upload refused')")
        assert "415" in page.text_content("#status") and "DICOM" in page.text_content("#status")
        assert not page.is_visible("#viewer")
        page.screenshot(path=str(ARTIFACTS / "04-refused.png"))
