"""The report's lung-involvement section: the per-zone table and the worst slice with its lesions drawn.

Colours: ground glass yellow, consolidation red (both half transparent over the lung window).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from covidct.registry import LesionLabel
from covidct.report.images import composite, data_uri, png_bytes, slice_grey

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
    m = np.asarray(lesion_slice)
    out = np.zeros((*m.shape, 4), dtype=np.uint8)
    for label, colour in LESION_COLOURS.items():
        out[m == label] = colour
    return out


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


def involvement_section(result: StudyResult) -> list[str]:
    """HTML parts of the section (empty when the result has no lesion segmentation)."""
    inv, lesions = result.involvement, result.lesions
    if inv is None or lesions is None:
        return []
    parts = [
        "<h2>Lung involvement</h2>",
        "<p>Lesions segmented by the lesion model (ground glass yellow, consolidation red). Zones: thirds of "
        "each lung along z; scores use the bands of Pan et al. 2020 per zone (0 none, 1 &lt;5%, 2 5-25%, "
        "3 26-49%, 4 50-75%, 5 &gt;75%), six zones, total 0-30 (Pan et al. scored five lobes, 0-25).</p>",
        zone_table(inv),
    ]
    worst = inv.get("worst_slice")
    if worst is not None:
        z = int(worst["index"])
        rgb = composite(slice_grey(result.volume, z), lesion_rgba(lesions[z]))
        caption = f"slice {z} (most involved: {worst['percent_of_lung']}% of its lung area)"
        parts.append(
            f"<figure id='worst-slice'><img alt='{html.escape(caption)}' src='{data_uri(png_bytes(rgb))}' "
            f"style='max-width:420px'><figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return parts
