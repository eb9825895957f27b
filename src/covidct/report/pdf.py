"""The per-study report as PDF, rendered offline with matplotlib's PDF backend (already a dependency).

Same content as the HTML report (:mod:`covidct.report.html`): page 1 the diagnosis (with its confidence and
referral advice when the result has them), per-class figures, the rule trace, lungs and study, model and
software, and the research-use statement; page 2 the slice strip and the mosaic of the slices that drove the
decision (Grad-CAM when a model is given); page 3, when lesions were segmented, the lung-involvement table and
the most involved slice. No patient name, ID or input path unless ``show_phi``.
"""

from __future__ import annotations

import io
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidct import __version__
from covidct._files import atomic_write
from covidct.registry import CLASS_NAMES, DISPLAY_NAMES
from covidct.report.html import (
    DISCLAIMER,
    class_facts,
    confidence_texts,
    heat_note,
    model_facts,
    mosaic_images,
    strip_png,
    study_facts,
)

if TYPE_CHECKING:
    from covidct.diagnose import StudyResult
    from covidct.report.gradcam import SliceExplainer

A4 = (8.27, 11.69)  # inches, portrait


class _Writer:
    """Top-down text layout on a figure in figure coordinates."""

    def __init__(self, fig: Any) -> None:
        self.fig = fig
        self.y = 0.95

    def line(
        self, text: str, *, size: float = 9, weight: str = "normal", gap: float = 0.0, **kw: Any
    ) -> None:
        for part in textwrap.wrap(text, width=int(84 * 9 / size)) or [""]:
            self.fig.text(0.07, self.y, part, fontsize=size, weight=weight, va="top", **kw)
            self.y -= size / 72 / A4[1] * 1.45
        self.y -= gap

    def rows(self, rows: list[tuple[str, Any]]) -> None:
        for key, value in rows:
            self.fig.text(0.07, self.y, str(key), fontsize=8.5, weight="bold", va="top")
            self.fig.text(0.32, self.y, str(value), fontsize=8.5, va="top")
            self.y -= 8.5 / 72 / A4[1] * 1.5
        self.y -= 0.01


def write_pdf(
    result: StudyResult,
    out_path: str | Path,
    *,
    diagnoser: Any | None = None,
    explainer: SliceExplainer | None = None,
    show_phi: bool = False,
    mosaic_slices: int = 6,
) -> Path:
    """Write the two-page PDF report of one study; returns the path.

    Grad-CAM heat maps come from ``explainer``, or from ``diagnoser`` (one explainer per diagnoser, reused:
    :func:`covidct.report.gradcam.explainer_for`). The file appears whole or not at all (atomic rename).
    """
    if explainer is None and diagnoser is not None:
        from covidct.report.gradcam import explainer_for

        explainer = explainer_for(diagnoser)
    return atomic_write(
        out_path,
        lambda tmp: _render(result, tmp, explainer=explainer, show_phi=show_phi, mosaic_slices=mosaic_slices),
    )


def _render(
    result: StudyResult,
    tmp: Path,
    *,
    explainer: SliceExplainer | None,
    show_phi: bool,
    mosaic_slices: int,
) -> None:
    """Draw both pages into ``tmp`` (the temporary file :func:`write_pdf` renames into place)."""
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure
    from PIL import Image

    d = result.decision
    cls = CLASS_NAMES.index(d.diagnosis)
    meta = {"Title": f"covidct study report: {DISPLAY_NAMES[cls]}", "Creator": f"covidct {__version__}"}
    with PdfPages(tmp, metadata=meta) as pdf:
        page = Figure(figsize=A4)
        w = _Writer(page)
        w.line("covidct study report", size=16, weight="bold", gap=0.005)
        w.line(DISCLAIMER, size=9, weight="bold", color="#a05a00", gap=0.01)
        w.line(f"Diagnosis: {DISPLAY_NAMES[cls]}", size=15, weight="bold", gap=0.005)
        if result.confidence is not None:
            line, referral = confidence_texts(result.confidence)
            w.line(line, size=11, weight="bold", gap=0.003)
            if result.confidence.refer:
                w.line(referral, size=10.5, weight="bold", color="#b00020", gap=0.006)
            else:
                w.line(referral, size=8.5, style="italic", gap=0.006)
        w.rows(class_facts(result))
        w.line("How the rule decided", size=11, weight="bold")
        for para in d.explain().splitlines():
            w.line(para, size=8.5, family="monospace")
        w.y -= 0.01
        w.line("Lungs and study", size=11, weight="bold")
        w.rows(study_facts(result, show_phi=show_phi))
        if not show_phi:
            w.line("Patient name, ID and input path are hidden.", size=8, style="italic", gap=0.01)
        w.line("Model and software", size=11, weight="bold")
        w.rows(model_facts(result))
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        page.text(0.07, 0.03, f"Written {stamp}. Research tool, not a medical device.", fontsize=7)
        pdf.savefig(page)

        page = Figure(figsize=A4)
        strip, caption = strip_png(result, show_phi=show_phi)
        ax = page.add_axes((0.05, 0.62, 0.9, 0.33))
        ax.imshow(np.asarray(Image.open(io.BytesIO(strip))))
        ax.set_axis_off()
        ax.set_title(caption, fontsize=9)
        tiles = mosaic_images(result, explainer, mosaic_slices)
        page.text(
            0.05, 0.585, "Slices that drove the decision. " + heat_note(explainer), fontsize=8, wrap=True
        )
        for k, (_, rgb, tile_caption) in enumerate(tiles[:6]):
            row, col = divmod(k, 3)
            tile_ax = page.add_axes((0.05 + col * 0.31, 0.30 - row * 0.27, 0.28, 0.24))
            tile_ax.imshow(rgb)
            tile_ax.set_axis_off()
            tile_ax.set_title(tile_caption, fontsize=8)
        page.text(0.07, 0.015, DISCLAIMER, fontsize=6.5, wrap=True)
        pdf.savefig(page)
        if result.involvement is not None:
            pdf.savefig(_involvement_page(result))


def _involvement_page(result: StudyResult) -> Any:
    """Page 3: the lung-involvement table and the most involved slice with its lesions."""
    from matplotlib.figure import Figure

    from covidct.report.involvement import NOTE, worst_slice_image, zone_lines

    page = Figure(figsize=A4)
    w = _Writer(page)
    w.line("Lung involvement", size=13, weight="bold", gap=0.005)
    w.line(
        "Lesions segmented by the lesion model (ground glass yellow, consolidation red). " + NOTE, size=8.5
    )
    w.y -= 0.01
    for text in zone_lines(result.involvement or {}):
        w.line(text, size=7.5, family="monospace")
    worst = worst_slice_image(result)
    if worst is not None:
        rgb, caption = worst
        ax = page.add_axes((0.15, 0.08, 0.7, max(0.1, w.y - 0.12)))
        ax.imshow(rgb)
        ax.set_axis_off()
        ax.set_title(caption, fontsize=9)
    page.text(0.07, 0.015, DISCLAIMER, fontsize=6.5, wrap=True)
    return page
