"""The typed volume every stage after ingestion works on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SliceInfo:
    """Where one slice of the volume came from."""

    source: str  # file path (or "path#frame" for a frame of a multi-frame file); "" for non-DICOM inputs
    position_mm: float  # position along the slice normal, larger = more superior
    instance_number: int | None = None


@dataclass
class StudyMeta:
    """Descriptive header facts. PHI (patient name/ID) is kept apart and shown only when asked."""

    modality: str = "CT"
    manufacturer: str = ""
    transfer_syntax: str = ""
    series_description: str = ""
    series_uid: str = ""
    study_uid: str = ""
    input_format: str = "dicom"  # dicom | nifti | nrrd | mha | ...
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path": ..., "reason": ...}
    warnings: list[str] = field(default_factory=list)
    phi: dict[str, str] = field(
        default_factory=dict
    )  # PatientName, PatientID, StudyDate: never logged by default
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CTVolume:
    """A CT volume in Hounsfield units.

    Conventions (all of covidct): ``hu`` is ``(z, y, x)``; slice 0 is the most superior; ``spacing`` is
    ``(z, y, x)`` in mm; ``origin`` is the patient position (LPS, mm, x/y/z order as DICOM) of voxel ``[0, 0, 0]``;
    ``direction`` is a 3x3 matrix whose columns are the LPS direction cosines of the array's x (column), y (row)
    and z (slice) index axes, in that order (the ITK convention).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.diag([1.0, 1.0, -1.0]))
    slices: list[SliceInfo] = field(default_factory=list)
    meta: StudyMeta = field(default_factory=StudyMeta)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"CTVolume.hu must be 3-D (z, y, x), got shape {self.hu.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(
                f"CTVolume.spacing must be three positive mm values (z, y, x), got {self.spacing}"
            )
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.hu.shape
        return int(z), int(y), int(x)

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def slice_positions_mm(self) -> list[float]:
        if self.slices:
            return [s.position_mm for s in self.slices]
        return [-(i * self.spacing[0]) for i in range(self.n_slices)]

    def like(self, array: np.ndarray) -> CTVolume:
        """A volume with the same geometry and ``array`` as data (e.g. a mask)."""
        if array.shape != self.hu.shape:
            raise ValueError(f"array shape {array.shape} does not match volume shape {self.hu.shape}")
        return CTVolume(array, self.spacing, self.origin, self.direction.copy(), list(self.slices), self.meta)

    def save(self, path: str | Path, array: np.ndarray | None = None) -> Path:
        """Write ``array`` (default: the HU data) with this volume's geometry as NIfTI/NRRD/MHA (by suffix).

        The file is written to a temporary name first and renamed, so a failure never leaves half a file.
        """
        import SimpleITK as sitk

        data = self.hu if array is None else array
        if data.shape != self.hu.shape:
            raise ValueError(f"array shape {data.shape} does not match volume shape {self.hu.shape}")
        from covidct._files import atomic_write

        image = sitk.GetImageFromArray(np.ascontiguousarray(data))
        image.SetSpacing((float(self.spacing[2]), float(self.spacing[1]), float(self.spacing[0])))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetDirection(tuple(float(v) for v in self.direction.reshape(-1)))
        return atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))
