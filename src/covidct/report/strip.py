"""The slice strip: where along z the model saw disease.

Lung-window thumbnails with the lung-mask outline along z (the colours of
:data:`covidct.report.images.LUNG_COLOURS`), under them the per-class probability curves and the range of
slices the patient rule kept.

Drawn with matplotlib's object-oriented API (a private ``Figure`` on an Agg canvas): no pyplot, no global
backend switch, so it is safe from service threads and leaves a Jupyter session's backend alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covidct._files import atomic_write
from covidct.preprocess import window
from covidct.registry import DISPLAY_NAMES
from covidct.report.images import LUNG_COLOURS

if TYPE_CHECKING:
    from covidct.diagnose import StudyResult

#: Curve colours per class (normal, CAP, COVID-19).
CLASS_COLOURS: tuple[str, ...] = ("#4c72b0", "#dd8452", "#c44e52")


def _thumbnail(hu: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """An RGB float thumbnail of one slice with the lung outlines in :data:`LUNG_COLOURS`."""
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    grey = resize(window(hu), (size, size), order=1, anti_aliasing=True, preserve_range=True)
    small = resize(mask, (size, size), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for label, colour in LUNG_COLOURS.items():
        edge = find_boundaries(small == label, mode="inner")
        rgb[edge] = np.asarray(colour, dtype=np.float64) / 255.0
    return np.asarray(rgb, dtype=np.float32)


def default_title(result: StudyResult) -> str:
    """The strip's title when none is given: the diagnosis only (input paths often hold patient names)."""
    return f"Diagnosis: {DISPLAY_NAMES[result.decision.label]}"


def slice_strip(
    result: StudyResult,
    path: str | Path,
    *,
    title: str | None = None,
    n_thumbnails: int = 12,
    thumb_px: int = 96,
) -> Path:
    """Draw the slice strip of one diagnosed study to a PNG and return its path.

    ``title`` defaults to :func:`default_title` (the diagnosis, never the input name); callers that want the
    study's name shown pass it in ``title``. The PNG appears whole or not at all (atomic rename).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if n_thumbnails < 1:
        raise ValueError(f"n_thumbnails must be >= 1, got {n_thumbnails}")
    volume, mask, probs = result.volume, result.mask, result.probabilities
    n = volume.n_slices
    picks = np.unique(np.linspace(0, n - 1, min(n_thumbnails, n)).round().astype(int))
    start, stop = result.decision.kept

    fig = Figure(figsize=(max(8.0, 0.9 * len(picks)), 4.6), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(picks), height_ratios=[1.0, 1.5], hspace=0.25, wspace=0.04)
    for col, idx in enumerate(picks):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(_thumbnail(volume.hu[idx], mask[idx], thumb_px))
        kept = start <= idx < stop
        ax.set_title(f"{idx}", fontsize=7, color="black" if kept else "grey")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("black" if kept else "lightgrey")
    ax = fig.add_subplot(grid[1, :])
    z = np.arange(n)
    for k, name in enumerate(DISPLAY_NAMES):
        ax.plot(z, probs[:, k], color=CLASS_COLOURS[k], label=name, lw=1.4)
    ax.axvspan(start - 0.5, stop - 0.5, color="0.92", zorder=0, label="kept by the rule")
    preds = np.asarray(result.decision.slice_predictions)
    for k in (1, 2):
        hits = np.flatnonzero(preds == k)
        ax.scatter(hits, np.full(hits.shape, -0.06), s=6, color=CLASS_COLOURS[k], marker="s", clip_on=False)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(-0.1, 1.02)
    ax.set_xlabel("slice index (0 = most superior)")
    ax.set_ylabel("probability")
    ax.legend(loc="upper right", fontsize=7, ncol=4, frameon=False)
    fig.suptitle(default_title(result) if title is None else title, fontsize=10)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
