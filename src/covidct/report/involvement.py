"""The report's lung-involvement section: the per-zone table and the worst slice with its lesions drawn.

Colours: ground glass yellow, consolidation red (both half transparent over the lung window).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from covidct.registry import LesionLabel
from covidct.report.images import composite, data_uri, label_rgba, png_bytes, slice_grey

if TYPE_CHECKING:
    from covidct.diagnose import StudyResult

#: RGBA of each lesion label in overlays.
LESION_COLOURS: Final[dict[int, tuple[int, int, int, int]]] = {
    int(LesionLabel.GROUND_GLASS): (255, 215, 0, 120),
    int(LesionLabel.CONSOLIDATION): (230, 30, 30, 150),
}

#: Columns of the zone table: (heading, key of a zone's figures).
_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("slices", "slices"),
    ("lung ml", "lung_ml"),
    ("lesion ml", "lesion_ml"),
    ("ground glass ml", "ground_glass_ml"),
    ("consolidation ml", "consolidation_ml"),
    ("% of zone", "percent"),
    ("score 0-5", "score"),
)


def lesion_rgba(lesion_slice: np.ndarray) -> np.ndarray:
    """Transparent RGBA overlay of one lesion-mask slice."""
    return label_rgba(lesion_slice, LESION_COLOURS)


def _cell(key: str, value: Any) -> str:
    if key == "slices":
        return f"{value[0]}-{value[1] - 1}" if value[1] > value[0] else "-"
    return html.escape(str(value))


def zone_table(involvement: dict[str, Any]) -> str:
    """The per-lung, per-zone figures as an HTML table, with the totals as its last row."""
    head = "".join(f"<th>{h}</th>" for h, _ in _COLUMNS)
    rows = [f"<tr><th>lung</th><th>zone</th>{head}</tr>"]
    for side, lung in involvement["lungs"].items():
        for zone, figures in lung["zones"].items():
            cells = "".join(f"<td>{_cell(k, figures[k])}</td>" for _, k in _COLUMNS)
            rows.append(f"<tr><td>{side}</td><td>{zone}</td>{cells}</tr>")
    total = involvement["total"]
    cells = "".join(
        f"<td>{_cell(k, total[k]) if k in total and k != 'slices' else ''}</td>" for _, k in _COLUMNS[:-1]
    )
    rows.append(
        f"<tr><th colspan='2'>both lungs</th>{cells}<td><strong>{total['score']} / {total['score_max']}"
        "</strong></td></tr>"
    )
    return f"<table id='involvement'>{''.join(rows)}</table>"


#: What the section says about zones and scores (HTML and PDF).
NOTE: Final[str] = (
    "Zones: thirds of each lung along z; scores use the bands of Pan et al. 2020 per zone (0 none, 1 <5%, "
    "2 5-25%, 3 26-49%, 4 50-75%, 5 >75%), six zones, total 0-30 (Pan et al. scored five lobes, 0-25)."
)


def zone_lines(involvement: dict[str, Any]) -> list[str]:
    """The zone table as fixed-width text lines (for the PDF report)."""
    head = f"{'lung':6} {'zone':7} {'slices':>8} {'lung ml':>8} {'lesion':>7} {'GGO':>7} {'consol.':>7} {'%':>6} score"
    lines = [head]
    for side, lung in involvement["lungs"].items():
        for zone, f in lung["zones"].items():
            lines.append(
                f"{side:6} {zone:7} {_cell('slices', f['slices']):>8} {f['lung_ml']:>8} {f['lesion_ml']:>7} "
                f"{f['ground_glass_ml']:>7} {f['consolidation_ml']:>7} {f['percent']:>6} {f['score']:>5}"
            )
    t = involvement["total"]
    lines.append(
        f"{'both':6} {'':7} {'':>8} {t['lung_ml']:>8} {t['lesion_ml']:>7} {t['ground_glass_ml']:>7} "
        f"{t['consolidation_ml']:>7} {t['percent']:>6} {t['score']:>2}/{t['score_max']}"
    )
    return lines


def worst_slice_image(result: StudyResult) -> tuple[np.ndarray, str] | None:
    """The most involved slice with its lesions drawn (RGB) and its caption; None without lesions."""
    inv, lesions = result.involvement, result.lesions
    if inv is None or lesions is None or inv.get("worst_slice") is None:
        return None
    z = int(inv["worst_slice"]["index"])
    rgb = composite(slice_grey(result.volume, z), lesion_rgba(lesions[z]))
    return rgb, f"slice {z} (most involved: {inv['worst_slice']['percent_of_lung']}% of its lung area)"


def involvement_section(result: StudyResult) -> list[str]:
    """HTML parts of the section (empty when the result has no lesion segmentation)."""
    inv, lesions = result.involvement, result.lesions
    if inv is None or lesions is None:
        return []
    parts = [
        "<h2>Lung involvement</h2>",
        "<p>Lesions segmented by the lesion model (ground glass yellow, consolidation red). "
        + html.escape(NOTE)
        + "</p>",
        zone_table(inv),
    ]
    worst = worst_slice_image(result)
    if worst is not None:
        rgb, caption = worst
        parts.append(
            f"<figure id='worst-slice'><img alt='{html.escape(caption)}' src='{data_uri(png_bytes(rgb))}' "
            f"style='max-width:420px'><figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return parts
