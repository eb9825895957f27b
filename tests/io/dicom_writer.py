"""Synthetic DICOM slices for the ingestion tests: tiny, written with pydicom, geometry under test control."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
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
