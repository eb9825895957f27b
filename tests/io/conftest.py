"""Fixtures of the ingestion tests: tiny synthetic DICOM slices and series written with pydicom.

Helpers are reached through fixtures (``dw.phantom``, ``dw.write_slice``, ``write_series``) because the test
suite runs in importlib mode, where a test module cannot import a sibling helper module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROWS, COLS = 24, 20


def phantom(n: int = 8, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """A (z, y, x) HU volume in which every voxel's value tells where it is: 100*z + 3*y + x - 1000."""
    z, y, x = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    return (100 * z + 3 * y + x - 1000).astype(np.int16)


def write_slice(
    path: Path,
    hu: np.ndarray,
    *,
    ipp: Sequence[float] | None,
    iop: Sequence[float] | None = (1, 0, 0, 0, 1, 0),
    series_uid: str,
    study_uid: str,
    instance: int | None = 1,
    modality: str | None = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    slope: float = 1.0,
    intercept: float = -1024.0,
    padding: int | None = None,
    slice_location: float | None = None,
    spacing: Sequence[float] = (0.7, 0.8),
    series_number: int = 2,
    with_pixels: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write one CT slice; ``hu`` is stored as ``(hu - intercept) / slope`` (int16, signed)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-ID-42"
    ds.StudyDate = "20200102"
    ds.Manufacturer = "SYNTH"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "synthetic"
    if instance is not None:
        ds.InstanceNumber = instance
    if iop is not None:
        ds.ImageOrientationPatient = [float(v) for v in iop]
    if ipp is not None:
        ds.ImagePositionPatient = [float(v) for v in ipp]
    if slice_location is not None:
        ds.SliceLocation = slice_location
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = 2.0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    stored = np.rint((hu.astype(np.float64) - intercept) / slope).astype(np.int16)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if padding is not None:
        ds.PixelPaddingValue = padding
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    if with_pixels:
        ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def dw() -> SimpleNamespace:
    """The helpers: ``dw.phantom(n, rows, cols)`` and ``dw.write_slice(path, hu, ...)``."""
    return SimpleNamespace(phantom=phantom, write_slice=write_slice)


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
