"""Fixtures of the ingestion tests (helpers live in dicom_writer.py, a uniquely named module)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicom_writer import write_slice
from pydicom.uid import generate_uid

SeriesWriter = Callable[..., list[Path]]


@pytest.fixture
def write_series() -> SeriesWriter:
    """``write_series(folder, hu, *, z0=100.0, dz=2.0, flip_x=False, reverse_normal=False, **kw)``.

    Writes ``hu`` (z, y, x; slice 0 superior) as an axial series, slice k at z = z0 - k*dz. ``flip_x`` stores
    the columns mirrored with a row cosine of (-1, 0, 0); ``reverse_normal`` stores rows mirrored with a
    column cosine of (0, -1, 0), which turns the slice normal toward the feet. Both describe the same anatomy.
    """

    def write(
        folder: Path,
        hu: np.ndarray,
        *,
        z0: float = 100.0,
        dz: float = 2.0,
        flip_x: bool = False,
        reverse_normal: bool = False,
        names: Sequence[str] | None = None,
        series_uid: str | None = None,
        study_uid: str | None = None,
        spacing: Sequence[float] = (0.7, 0.8),
        **kw: Any,
    ) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        series_uid = series_uid or generate_uid()
        study_uid = study_uid or generate_uid()
        row = [1.0, 0.0, 0.0]
        col = [0.0, 1.0, 0.0]
        x0, y0 = -10.0, -20.0
        paths = []
        for k in range(hu.shape[0]):
            img = hu[k]
            px, py = x0, y0
            if flip_x:
                img = img[:, ::-1]
                row = [-1.0, 0.0, 0.0]
                px = x0 + spacing[1] * (hu.shape[2] - 1)
            if reverse_normal:
                img = img[::-1, :]
                col = [0.0, -1.0, 0.0]
                py = y0 + spacing[0] * (hu.shape[1] - 1)
            name = names[k] if names is not None else f"IM{k:04d}.dcm"
            paths.append(
                write_slice(
                    folder / name,
                    np.ascontiguousarray(img),
                    ipp=(px, py, z0 - k * dz),
                    iop=(*row, *col),
                    series_uid=series_uid,
                    study_uid=study_uid,
                    instance=k + 1,
                    spacing=spacing,
                    **kw,
                )
            )
        return paths

    return write
