"""Evaluation figures: confusion matrices and the readers-vs-AI chart (the paper's Fig. 4 style).

matplotlib is imported inside each function and used through its object-oriented API (a ``Figure`` with an
Agg canvas): no pyplot global state, no process-wide backend switch, so it is safe in threads and in Jupyter.
Each figure is written to a temporary name, then renamed (no half-written PNG).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covidct._files import atomic_write
from covidct.registry import DISPLAY_NAMES

__all__ = ["confusion_matrix_png", "readers_chart_png"]


def _figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))


def confusion_matrix_png(
    cm: np.ndarray,
    path: str | Path,
    *,
    title: str = "Confusion matrix",
    labels: Sequence[str] = DISPLAY_NAMES,
) -> Path:
    """Draw ``cm`` (rows truth, columns prediction) with counts and row percentages; returns ``path``."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(rows > 0, cm / np.maximum(rows, 1), 0.0)
    fig = _figure((4.6, 4.0))
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            pct = f"{100 * frac[i, j]:.0f}%" if rows[i, 0] else "-"
            color = "white" if frac[i, j] > 0.6 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{pct}", ha="center", va="center", color=color, fontsize=10)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("Prediction")
    ax.set_ylabel("Truth")
    ax.set_title(f"{title} (n={int(cm.sum())})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of truth row")
    return _save(fig, Path(path))


def readers_chart_png(rows: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Readers and AI side by side: accuracy and COVID-19 sensitivity (bars, %), mean reading time (s/case).

    ``rows``: ``{name: {"accuracy", "covid19_sensitivity", "mean_time_s"}}`` with values float or ``None``
    (rates as fractions in [0, 1]; ``None`` drawn as an empty bar marked n/a).
    """
    names = list(rows)
    x = np.arange(len(names))

    def values(key: str, scale: float = 1.0) -> np.ndarray:
        out = [rows[n].get(key) for n in names]
        return np.array([np.nan if v is None else float(v) * scale for v in out])

    fig = _figure((max(7.0, 1.6 * len(names) + 3), 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    width = 0.38
    for offset, key, label in (
        (-width / 2, "accuracy", "Accuracy"),
        (width / 2, "covid19_sensitivity", "COVID-19 sensitivity"),
    ):
        vals = values(key, 100.0)
        bars = ax1.bar(x + offset, np.nan_to_num(vals), width, label=label)
        for bar, v in zip(bars, vals, strict=True):
            text = "n/a" if np.isnan(v) else f"{v:.1f}"
            ax1.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1, text, ha="center", fontsize=8)
    ax1.set_xticks(x, names, rotation=20)
    ax1.set_ylim(0, 125)
    ax1.set_ylabel("%")
    ax1.set_title("Diagnostic performance")
    ax1.legend(loc="upper left", ncol=2, fontsize=8, frameon=False)
    times = values("mean_time_s")
    bars = ax2.bar(x, np.nan_to_num(times), 0.6, color="tab:gray")
    for bar, v in zip(bars, times, strict=True):
        text = "n/a" if np.isnan(v) else f"{v:.1f}"
        ax2.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            text,
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax2.set_xticks(x, names, rotation=20)
    ax2.set_ylabel("seconds per case")
    ax2.set_title("Mean reading / diagnosis time")
    fig.tight_layout()
    return _save(fig, Path(path))
