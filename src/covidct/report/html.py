"""The per-study HTML report: one self-contained file (images inlined as base64 PNG, no external assets).

Contents: the diagnosis with its confidence and referral advice (when the result has a confidence:
``covidct.confidence``), per-class mean slice probabilities, the rule trace in words, the slice strip
(``covidct.report.strip``), a mosaic of the slices that drove the
decision with Grad-CAM heat maps (when a model is given), the lung involvement (zone table and the most
involved slice, when the result has lesions: ``covidct.report.involvement``), lung volumes, the model identity and software
versions, and the statement that this is a research tool, not a medical device. Patient name, ID and the
input path appear only with ``show_phi=True``.
"""

from __future__ import annotations

import html
import logging
import math
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidct._files import atomic_write_text
from covidct.registry import CLASS_NAMES, DISPLAY_NAMES
from covidct.report.images import (
    composite,
    data_uri,
    driving_slices,
    heat_rgba,
    mask_rgba,
    png_bytes,
    slice_grey,
)
from covidct.report.involvement import involvement_section

if TYPE_CHECKING:
    from covidct.confidence import StudyConfidence
    from covidct.diagnose import StudyResult
    from covidct.report.gradcam import SliceExplainer

log = logging.getLogger(__name__)

DISCLAIMER = (
    "Research tool, not a medical device. covidct has not been cleared or approved for clinical use; "
    "its output must not be used to diagnose, treat or triage patients."
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#1b1f24;line-height:1.4;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd}
.warn{background:#fff4e5;border:1px solid #f0a020;padding:8px 12px;border-radius:6px}
.dx{font-size:1.6em;font-weight:600;margin-bottom:2px}.conf{font-size:1.1em;margin-top:0}
.refer{background:#fdecea;border:2px solid #c62828;color:#8e0000;padding:8px 12px;border-radius:6px;
font-weight:600}.note{color:#555;font-style:italic}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
pre{background:#f6f8fa;padding:10px;border-radius:6px;white-space:pre-wrap}
.mosaic{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:10px}
.mosaic figure{margin:0}.mosaic img{width:100%;image-rendering:auto;border-radius:4px}
figcaption{font-size:.85em;color:#444}.strip{max-width:100%}
"""


def mean_probabilities(result: StudyResult) -> dict[str, float]:
    """Per-class mean of the slice probabilities over the kept, classified slices (NaN when none)."""
    start, stop = result.decision.kept
    probs = np.asarray(result.probabilities, dtype=np.float64)[start:stop]
    rows = probs[~np.isnan(probs).any(axis=1)] if probs.size else probs
    if rows.shape[0] == 0:
        return {name: float("nan") for name in CLASS_NAMES}
    means = rows.mean(axis=0)
    return {name: float(means[i]) for i, name in enumerate(CLASS_NAMES)}


def strip_png(result: StudyResult, *, show_phi: bool) -> tuple[bytes, str]:
    """The slice strip (:func:`covidct.report.strip.slice_strip`) as PNG bytes and its caption.

    Its title is the diagnosis; the input's name is added only with ``show_phi`` (paths often hold patient
    names).
    """
    from covidct.report.strip import default_title, slice_strip

    title = default_title(result)
    if show_phi:
        title = f"{Path(result.input).name or result.input}: {title}"
    with tempfile.TemporaryDirectory(prefix="covidct-report-") as tmp:
        path = slice_strip(result, Path(tmp) / "strip.png", title=title)
        return path.read_bytes(), "Slice strip: thumbnails along z and per-slice probabilities"


def mosaic_images(
    result: StudyResult, explainer: SliceExplainer | None, n: int
) -> list[tuple[int, np.ndarray, str]]:
    """(slice index, RGB uint8 tile, caption) per driving slice; Grad-CAM of the decided class if ``explainer``."""
    picks = driving_slices(result, n=n)
    cls = CLASS_NAMES.index(result.decision.diagnosis)
    cams = None
    if explainer is not None and picks:
        cams = explainer.slice_maps(result.volume, result.mask, picks, class_idx=[cls] * len(picks))
    tiles = []
    for k, i in enumerate(picks):
        grey = slice_grey(result.volume, i)
        overlays = [mask_rgba(result.mask[i]) // np.array([1, 1, 1, 3], dtype=np.uint8)]
        if cams is not None:
            overlays.append(heat_rgba(cams[k]))
        p = float(result.probabilities[i, cls])
        tiles.append((i, composite(grey, *overlays), f"slice {i}: P({DISPLAY_NAMES[cls]}) = {p:.2f}"))
    return tiles


def heat_note(explainer: SliceExplainer | None) -> str:
    if explainer is not None:
        return (
            "Grad-CAM heat maps of the decided class (ResNet layer4), inside the lung mask, over the lung "
            "window; lung mask tinted."
        )
    return "Heat maps unavailable (no model was given to the report writer); lung mask tinted."


def _percents(value: float, threshold: float | None) -> tuple[str, str | None]:
    """``value`` and a finite ``threshold`` as percentages, with as many decimals (up to 2) as it takes for
    them to differ when the numbers do (a study referred at 86.6 % against 87.4 % must not read 87 % < 87 %)."""
    t = threshold if threshold is not None and math.isfinite(threshold) else None
    digits = 0
    while (
        t is not None and digits < 2 and value != t and round(100 * value, digits) == round(100 * t, digits)
    ):
        digits += 1
    return f"{100 * value:.{digits}f} %", None if t is None else f"{100 * t:.{digits}f} %"


def confidence_texts(confidence: StudyConfidence) -> tuple[str, str]:
    """The confidence line (``Confidence 87 % (calibrated)``) and the referral line of a study.

    The referral line says to refer when ``refer`` is True, that the study is not referred when it is False,
    and that no referral threshold was fitted when it is None (bundles made before calibration, or fitted
    without validation patients).
    """
    c = confidence
    value, threshold = _percents(c.value, c.threshold)
    kind = "calibrated" if c.calibrated else "not calibrated"
    line = f"Confidence {value} ({kind})"
    if c.refer is None or c.threshold is None:
        return line, "No referral threshold was fitted for this model: it gives no advice on referral."
    where = (
        f"the model's threshold ({threshold})"
        if threshold is not None
        else "the model's threshold (no confidence reached the target accuracy on validation patients, "
        "so every study is referred)"
    )
    if c.refer:
        return line, f"Refer to a radiologist: confidence below {where}"
    return line, f"Not referred: confidence at or above {where}"


def class_facts(result: StudyResult) -> list[tuple[str, str]]:
    """Per class: mean slice probability over the kept slices, slice count and fraction of the kept range."""
    d = result.decision
    means = mean_probabilities(result)
    return [
        (
            DISPLAY_NAMES[i],
            f"mean slice probability {means[name]:.3f}; slices {d.counts.get(name, 0)}"
            f" ({100 * d.fractions.get(name, 0.0):.1f} % of kept)",
        )
        for i, name in enumerate(CLASS_NAMES)
    ]


def study_facts(result: StudyResult, *, show_phi: bool) -> list[tuple[str, Any]]:
    """Lung volumes and study facts; the input path and PHI (patient name/ID...) only with ``show_phi``."""
    from covidct.diagnose import lung_volumes_ml

    vol = result.volume
    lv = lung_volumes_ml(np.asarray(result.mask), vol)
    rows: list[tuple[str, Any]] = [
        ("right lung volume", f"{lv['right']:.1f} ml"),
        ("left lung volume", f"{lv['left']:.1f} ml"),
        ("slices", vol.n_slices),
        ("matrix (y, x)", f"{vol.shape[1]} x {vol.shape[2]}"),
        ("spacing (z, y, x)", " x ".join(f"{s:.3g}" for s in vol.spacing) + " mm"),
        ("input format", vol.meta.input_format),
    ]
    if vol.meta.manufacturer:
        rows.append(("manufacturer", vol.meta.manufacturer))
    if show_phi:
        rows.append(("input", result.input))
        rows.extend(sorted(vol.meta.phi.items()))
    return rows


def model_facts(result: StudyResult) -> list[tuple[str, Any]]:
    """Model identity, software versions and stage timings."""
    rows: list[tuple[str, Any]] = [(f"model {k}", v) for k, v in sorted(result.model.items())]
    rows += [(k, v) for k, v in sorted(result.software.items())]
    rows += [(f"time {k}", f"{v:.2f} s") for k, v in sorted(result.timing_s.items())]
    return rows


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def render_report(
    result: StudyResult,
    *,
    explainer: SliceExplainer | None = None,
    show_phi: bool = False,
    mosaic_slices: int = 6,
) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    d = result.decision
    cls = CLASS_NAMES.index(d.diagnosis)
    parts: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>covidct report: {html.escape(DISPLAY_NAMES[cls])}</title><style>{_CSS}</style></head><body>",
        "<h1>covidct study report</h1>",
        f"<p class='warn' id='disclaimer'><strong>{html.escape(DISCLAIMER)}</strong></p>",
        "<h2>Diagnosis</h2>",
        f"<p class='dx' id='diagnosis'>{html.escape(DISPLAY_NAMES[cls])}</p>",
    ]
    if result.confidence is not None:
        line, referral = confidence_texts(result.confidence)
        tip = (
            "the probability of this answer after temperature scaling on validation patients"
            if result.confidence.calibrated
            else "the model's probability of this answer as it is: not calibrated on validation patients, "
            "it may overstate or understate how often such answers are right"
        )
        parts.append(f"<p class='conf' id='confidence' title='{html.escape(tip)}'>{html.escape(line)}</p>")
        style = "refer" if result.confidence.refer else "note"
        parts.append(f"<p class='{style}' id='referral'>{html.escape(referral)}</p>")
    parts.append(_table(class_facts(result)))
    parts.append("<h2>How the rule decided</h2>")
    parts.append(f"<pre id='trace'>{html.escape(d.explain())}</pre>")

    strip_bytes, strip_caption = strip_png(result, show_phi=show_phi)
    parts.append("<h2>Slices along z</h2>")
    parts.append(
        f"<figure><img class='strip' alt='slice strip' src='{data_uri(strip_bytes)}'>"
        f"<figcaption>{html.escape(strip_caption)}</figcaption></figure>"
    )

    tiles = [
        (data_uri(png_bytes(rgb)), caption)
        for _, rgb, caption in mosaic_images(result, explainer, mosaic_slices)
    ]
    parts.append("<h2>Slices that drove the decision</h2>")
    parts.append(f"<p>{html.escape(heat_note(explainer))}</p><div class='mosaic' id='mosaic'>")
    for uri, caption in tiles:
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='{uri}'>")
        parts.append(f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</div>")

    parts.extend(involvement_section(result))

    parts.append("<h2>Lungs and study</h2>")
    study_rows = study_facts(result, show_phi=show_phi)
    parts.append(_table(study_rows))
    if not show_phi:
        parts.append("<p><em>Patient name, ID and input path are hidden (show them with show_phi).</em></p>")

    parts.append("<h2>Model and software</h2>")
    model_rows = model_facts(result)
    parts.append(_table(model_rows))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"<p><small>Written {stamp}. {html.escape(DISCLAIMER)}</small></p></body></html>")
    return "\n".join(parts)


def write_report(
    result: StudyResult,
    out_path: str | Path,
    *,
    diagnoser: Any | None = None,
    show_phi: bool = False,
    explainer: SliceExplainer | None = None,
    mosaic_slices: int = 6,
) -> Path:
    """Write the self-contained HTML report of one study; returns the path.

    Grad-CAM heat maps are drawn when ``explainer`` is given, or made from ``diagnoser.pipeline.classifier``
    when a ``diagnoser`` is given (one explainer per diagnoser, built on first use and reused: see
    :func:`covidct.report.gradcam.explainer_for`). The file appears whole or not at all (atomic rename).
    """
    if explainer is None and diagnoser is not None:
        from covidct.report.gradcam import explainer_for

        explainer = explainer_for(diagnoser)
    text = render_report(result, explainer=explainer, show_phi=show_phi, mosaic_slices=mosaic_slices)
    out = atomic_write_text(out_path, text)
    log.debug("wrote report %s", out.name)
    return out
