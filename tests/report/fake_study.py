"""Synthetic studies and a fake diagnoser for the report and service tests (no trained model needed).

The phantom: an elliptic soft-tissue body (40 HU) in air with two elliptic lungs (-850 HU); the mask labels
the lung on the image's left (the patient's right in the standard LPS view) 1 and the other 2.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from covidct.io.volume import CTVolume, SliceInfo

TINY_SIZE = 64


def phantom(n: int = 12, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """HU (int16) and lung mask (uint8) of shape (n, size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    body = ((yy - c) / (0.42 * size)) ** 2 + ((xx - c) / (0.46 * size)) ** 2 <= 1
    right = ((yy - c) / (0.3 * size)) ** 2 + ((xx - 0.3 * size) / (0.14 * size)) ** 2 <= 1
    left = ((yy - c) / (0.3 * size)) ** 2 + ((xx - 0.7 * size) / (0.14 * size)) ** 2 <= 1
    hu = np.full((n, size, size), -1000, dtype=np.int16)
    mask = np.zeros((n, size, size), dtype=np.uint8)
    for z in range(n):
        hu[z][body] = 40
        if 0 < z < n - 1:  # no lung on the first and last slice: empty SEG frames must survive
            hu[z][right | left] = -850
            mask[z][right] = 1
            mask[z][left] = 2
    return hu, mask


def make_volume(n: int = 12, size: int = 48) -> tuple[CTVolume, np.ndarray]:
    hu, mask = phantom(n, size)
    return CTVolume(hu, (2.5, 0.7, 0.7), origin=(-16.8, -16.8, 0.0)), mask


def write_dicom_series(
    folder: Path,
    hu: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (2.5, 0.7, 0.7),
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID-4711",
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
) -> list[Path]:
    """Write ``hu`` (z, y, x; z = 0 most superior) as a CT series of single-frame files; returns the paths."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for z in range(hu.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{z:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = "CT", patient_name, patient_id
        ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
        ds.StudyDate = ds.SeriesDate = datetime.date(2021, 1, 1).strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "A1", "S1", ""
        ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "Synthetic", 1, z + 1
        ds.BodyPartExamined = "CHEST"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = list(iop)
        ds.ImagePositionPatient = [-16.8, -16.8, -z * spacing[0]]
        ds.SliceLocation = -z * spacing[0]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.KVP = 120
        ds.PixelData = (hu[z].astype(np.int32) + 1024).astype(np.int16).tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def volume_from_files(paths: list[Path], hu: np.ndarray, spacing: tuple[float, float, float]) -> CTVolume:
    """A CTVolume whose slices point at ``paths`` (as the ingestion engineer's loader records them)."""
    slices = [
        SliceInfo(source=str(p), position_mm=-i * spacing[0], instance_number=i + 1)
        for i, p in enumerate(paths)
    ]
    return CTVolume(hu.copy(), spacing, origin=(-16.8, -16.8, 0.0), slices=slices)


def tiny_network(seed: int = 0) -> Any:
    import torch
    from monai.networks.nets import resnet18

    torch.manual_seed(seed)
    return resnet18(
        spatial_dims=2, n_input_channels=1, num_classes=3, conv1_t_stride=2, conv1_t_size=7
    ).eval()


class TinyClassifier:
    """What the report and the service need of a SliceClassifier: ``network`` and ``preprocess``."""

    image_size = TINY_SIZE

    def __init__(self, seed: int = 0) -> None:
        self.network = tiny_network(seed)

    def preprocess(self, volume: CTVolume, mask: np.ndarray, indices: Any = None) -> np.ndarray:
        from covidct.preprocess import classifier_inputs

        return classifier_inputs(volume, mask, indices=indices, image_size=TINY_SIZE)


def fake_probabilities(n: int, *, seed: int = 0, covid: bool = True) -> np.ndarray:
    """Seeded per-slice probabilities; COVID-19 wins in the middle slices when ``covid``."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([1.0, 1.0, 1.0], size=n).astype(np.float32)
    if covid:
        mid = slice(n // 4, n - n // 4)
        p[mid] = rng.dirichlet([1.0, 0.5, 6.0], size=p[mid].shape[0])
    return p


def fake_confidence(
    value: float = 0.87, *, refer: bool | None = False, threshold: float | None = 0.8, calibrated: bool = True
) -> Any:
    """A :class:`covidct.confidence.StudyConfidence` with ``value`` on COVID-19 (``refer`` and ``threshold``
    as given: None for a model without a fitted threshold)."""
    from covidct.confidence import StudyConfidence

    rest = (1.0 - value) / 2
    return StudyConfidence(value, refer, threshold, (rest, rest, value), calibrated)


def fake_result(
    volume: CTVolume,
    mask: np.ndarray,
    *,
    seed: int = 0,
    input_name: str = "fake",
    confidence: Any = None,
) -> Any:
    from covidct.decide import decide
    from covidct.diagnose import StudyResult

    probs = fake_probabilities(volume.n_slices, seed=seed)
    return StudyResult(
        input=input_name,
        volume=volume,
        mask=mask,
        probabilities=probs,
        decision=decide(probs),
        timing_s={"total": 0.01},
        model={"name": "tiny-fake", "hash": "0" * 12, "version": "test"},
        software={"covidct": "test"},
        confidence=confidence,
    )


class FakeDiagnoser:
    """``diagnose(path)``: the real loader, a threshold lung mask, seeded probabilities, the real rule."""

    def __init__(
        self, seed: int = 0, *, delay_s: float = 0.0, lesions: bool = False, confidence: Any = None
    ) -> None:
        self.seed = seed
        self.confidence = confidence  # a StudyConfidence given to every result (None: results carry none)
        self.delay_s = delay_s
        self.lesions = lesions
        self.pipeline = SimpleNamespace(
            classifier=TinyClassifier(seed),
            identity={"name": "tiny-fake", "hash": "0" * 12, "version": "test"},
        )

    def diagnose(self, source: Any, *, progress: bool = False) -> Any:
        import time

        from covidct.errors import NotChestCTError
        from covidct.io import load_study

        volume = load_study(source)
        hu = np.asarray(volume.hu)
        lung = (hu < -500) & (hu > -950)
        mask = np.zeros(hu.shape, dtype=np.uint8)
        half = hu.shape[2] // 2
        mask[:, :, :half][lung[:, :, :half]] = 1
        mask[:, :, half:][lung[:, :, half:]] = 2
        if not mask.any():
            raise NotChestCTError(f"{source}: no lung-like air in the study; is this a chest CT?")
        if self.delay_s:
            time.sleep(self.delay_s)
        result = fake_result(volume, mask, seed=self.seed, input_name=str(source), confidence=self.confidence)
        if self.lesions:  # the HU-threshold lesions, as a pipeline with a lesion model would add them
            from covidct.lesions.api import lesions_of_volume
            from covidct.lesions.classical import ClassicalLesionSegmenter

            result.lesions, result.involvement = lesions_of_volume(ClassicalLesionSegmenter(), volume, mask)
        return result
