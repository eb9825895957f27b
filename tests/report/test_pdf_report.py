from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fake_study import TinyClassifier, fake_confidence, fake_result, make_volume

from covidct.report.gradcam import SliceExplainer
from covidct.report.html import DISCLAIMER
from covidct.report.pdf import write_pdf


@pytest.fixture
def drawn_text(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every string the PDF writer draws (matplotlib kerns and re-encodes text, so the file is not searchable)."""
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    seen: list[str] = []
    fig_text, set_title = Figure.text, Axes.set_title

    def text(self: Any, x: float, y: float, s: str, *a: Any, **k: Any) -> Any:
        seen.append(s)
        return fig_text(self, x, y, s, *a, **k)

    def title(self: Any, label: str, *a: Any, **k: Any) -> Any:
        seen.append(label)
        return set_title(self, label, *a, **k)

    monkeypatch.setattr(Figure, "text", text)
    monkeypatch.setattr(Axes, "set_title", title)
    return seen


def test_pdf_report_pages_content_and_no_phi(tmp_path: Path, drawn_text: list[str]) -> None:
    volume, mask = make_volume(n=14, size=40)
    volume.meta.phi.update({"PatientName": "Doe^Jane"})
    result = fake_result(volume, mask, seed=3, input_name="/data/Doe_Jane/x.zip")
    out = write_pdf(result, tmp_path / "r.pdf", explainer=SliceExplainer.from_classifier(TinyClassifier()))
    data = out.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") + data.count(b"/Type /Page>") >= 2
    joined = "\n".join(drawn_text)
    assert "Doe" not in joined  # neither the name nor the input path
    assert DISCLAIMER in joined and "Grad-CAM" in joined
    assert any(t.startswith("Diagnosis: ") for t in drawn_text)
    assert sum(t.startswith("slice ") for t in drawn_text) >= 1  # mosaic captions
    assert not list(tmp_path.glob(".*partial*"))


def test_pdf_report_shows_phi_when_asked(tmp_path: Path, drawn_text: list[str]) -> None:
    volume, mask = make_volume(n=10, size=32)
    volume.meta.phi.update({"PatientName": "Doe^Jane"})
    write_pdf(fake_result(volume, mask, seed=1), tmp_path / "r.pdf", show_phi=True)
    assert "Doe^Jane" in drawn_text


def test_pdf_report_adds_the_involvement_page_when_lesions_were_segmented(
    tmp_path: Path, drawn_text: list[str]
) -> None:
    from covidct.lesions.quantify import involvement

    volume, mask = make_volume(n=10, size=32)
    result = fake_result(volume, mask, seed=1)
    write_pdf(result, tmp_path / "plain.pdf")
    assert "Lung involvement" not in drawn_text
    lesions = (mask > 0).astype("uint8")
    lesions[:, :, :10] = 0
    result.lesions, result.involvement = lesions, involvement(lesions, mask, volume.spacing)
    write_pdf(result, tmp_path / "r.pdf")
    assert "Lung involvement" in drawn_text
    total = result.involvement["total"]
    assert any(t.startswith("both") and t.endswith(f"{total['score']:>2}/30") for t in drawn_text)
    assert any(t.startswith("slice ") and "most involved" in t for t in drawn_text)


@pytest.mark.parametrize(
    ("confidence", "lines"),
    [
        (
            {"value": 0.62, "refer": True, "threshold": 0.8},
            [
                "Confidence 62 % (calibrated)",
                "Refer to a radiologist: confidence below the model's threshold (80 %)",
            ],
        ),
        (
            {"value": 0.7, "refer": None, "threshold": None, "calibrated": False},
            ["Confidence 70 % (not calibrated)", "No referral threshold was fitted for this model"],
        ),
        (None, []),
    ],
)
def test_pdf_report_shows_the_confidence_and_the_referral(
    tmp_path: Path, drawn_text: list[str], confidence: dict[str, Any] | None, lines: list[str]
) -> None:
    volume, mask = make_volume(n=10, size=32)
    conf = None if confidence is None else fake_confidence(**confidence)
    write_pdf(fake_result(volume, mask, seed=1, confidence=conf), tmp_path / "r.pdf")
    joined = " ".join(drawn_text)  # the writer wraps long lines into consecutive strings
    for line in lines:
        assert line in joined
    if confidence is None:
        assert not any(t.startswith(("Confidence", "Refer", "No referral")) for t in drawn_text)
    elif confidence["refer"] is None:
        assert "Refer to a radiologist" not in joined
