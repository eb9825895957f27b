"""Write a synthetic series as one DICOM file per slice (CT Image Storage), reproducibly.

UIDs derive from the patient seed (``2.25.<hash>``), no dates or times are written, and file names do not
follow the slice order (as in COVID-CT-MD). Compression: JPEG Lossless, Non-Hierarchical, First-Order
Prediction (process 14, selection value 1; ``1.2.840.10008.1.2.4.70``) encoded with GDCM (``python-gdcm``);
where GDCM is missing, RLE Lossless (pydicom's own encoder) is written instead and a warning logged.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from covidct._files import atomic_write
from covidct.data.synth.scanner import ScannerSettings

log = logging.getLogger(__name__)

#: Stands for this implementation in the file meta (``2.25.`` + a fixed hash).
IMPLEMENTATION_UID = generate_uid(entropy_srcs=["covidct synthetic phantom writer"])


def have_jpeg_lossless_encoder() -> bool:
    """True when GDCM can encode JPEG Lossless SV1 here."""
    try:
        importlib.import_module("gdcm")
    except ImportError:
        return False
    return True


def _jpeg_lossless(frame: np.ndarray, bits_stored: int, signed: bool) -> bytes:
    """One frame encoded as JPEG Lossless SV1 by GDCM."""
    gdcm: Any = importlib.import_module("gdcm")
    writer = gdcm.ImageWriter()  # keeps the image alive while we use it
    image = writer.GetImage()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((frame.shape[1], frame.shape[0], 1))
    image.SetPhotometricInterpretation(
        gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2)
    )
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ImplicitVRLittleEndian))
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, bits_stored, bits_stored - 1, int(signed)))
    elem = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    elem.SetByteStringValue(np.ascontiguousarray(frame).astype("<i2" if signed else "<u2").tobytes())
    image.SetDataElement(elem)
    conv = gdcm.ImageChangeTransferSyntax()
    conv.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    conv.SetInput(image)
    if not conv.Change():
        raise RuntimeError("GDCM failed to encode a frame as JPEG Lossless")
    seq = conv.GetOutput().GetDataElement().GetSequenceOfFragments()
    if seq is None or seq.GetNumberOfFragments() != 1:
        raise RuntimeError("GDCM returned an unexpected number of JPEG fragments")
    buf: str = seq.GetFragment(0).GetByteValue().GetBuffer()
    return buf.encode("utf-8", "surrogateescape")


def uid(seed_key: str, *parts: object) -> str:
    """A reproducible UID from the patient's seed key and a purpose."""
    return generate_uid(entropy_srcs=[seed_key, *(str(p) for p in parts)])


def file_names(n: int, naming: str, seed_key: str, rng: np.random.Generator) -> list[str]:
    """File names for slices 0..n-1 (superior first) that do not follow the slice order."""
    if naming == "siemens":
        stem = (
            "".join(rng.choice(list("0123456789ABCDEF"), size=8))
            + "-"
            + "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ"), size=4))
        )
        numbers = np.arange(1, n + 1)
        # as in the real data, the number in the name does not always match the InstanceNumber
        k = max(n // 10, 1)
        swap = rng.choice(n, size=2 * k, replace=False)
        numbers[swap[:k]], numbers[swap[k:]] = numbers[swap[k:]].copy(), numbers[swap[:k]].copy()
        return [f"{stem}_{int(v)}.dcm" for v in numbers]
    if naming == "counter-shuffled":
        perm = rng.permutation(n)
        return [f"IM{int(v):05d}" for v in perm]
    return [uid(seed_key, "file", i).split(".")[-1][-16:] + ".dcm" for i in range(n)]


def _base_dataset(meta: dict[str, str], s: ScannerSettings, seed_key: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Manufacturer = s.manufacturer
    ds.ManufacturerModelName = s.model
    ds.InstitutionName = f"Synthetic centre {s.site}"
    ds.StudyDescription = "Synthetic chest CT (covidct phantom)"
    ds.SeriesDescription = f"Thorax {s.thickness_mm:g} {s.kernel}"
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = meta["patient_id"]
    ds.PatientSex = meta.get("sex", "O")
    ds.PatientAge = meta.get("age", "050Y")
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uid(seed_key, "study")
    ds.SeriesInstanceUID = uid(seed_key, "series")
    ds.FrameOfReferenceUID = uid(seed_key, "frame")
    ds.StudyID = "1"
    ds.SeriesNumber = 4
    ds.AcquisitionNumber = 1
    ds.PositionReferenceIndicator = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.KVP = "120"
    ds.ConvolutionKernel = s.kernel
    ds.SliceThickness = f"{s.thickness_mm:g}"
    ds.SpacingBetweenSlices = f"{s.spacing_z_mm:.4f}"
    ds.ReconstructionDiameter = f"{s.size * s.pixel_mm:.3f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = s.bits_stored
    ds.HighBit = s.bits_stored - 1
    ds.PixelRepresentation = 1 if s.signed else 0
    ds.RescaleIntercept = str(s.intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = ["50", "-600"]
    ds.WindowWidth = ["350", "1200"]
    ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
    if s.padding is not None:
        ds.add_new((0x0028, 0x0120), "SS" if s.signed else "US", s.padding)  # PixelPaddingValue
    return ds


def _finish(
    ds: Dataset, frame: np.ndarray, s: ScannerSettings, path: Path, sop_uid: str, syntax: str
) -> None:
    ds.SOPInstanceUID = UID(sop_uid)
    ds.Rows, ds.Columns = (int(v) for v in frame.shape)
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.MediaStorageSOPInstanceUID = UID(sop_uid)
    fm.ImplementationClassUID = IMPLEMENTATION_UID
    fm.ImplementationVersionName = "COVIDCT_SYNTH"
    if syntax == JPEGLosslessSV1:
        fm.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([_jpeg_lossless(frame, s.bits_stored, s.signed)])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "00"
    elif syntax == RLELossless:
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = fm
        ds.PixelData = np.ascontiguousarray(frame).tobytes()
        ds["PixelData"].VR = "OW"
        ds.compress(RLELossless, encoding_plugin="pydicom")
        fm = ds.file_meta
    else:
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = np.ascontiguousarray(frame).astype("<i2" if s.signed else "<u2").tobytes()
        ds["PixelData"].VR = "OW"
    ds.file_meta = fm
    ds.preamble = b"\x00" * 128
    atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


def write_series(
    folder: Path,
    stored: np.ndarray,
    s: ScannerSettings,
    *,
    origin_xy: tuple[float, float],
    z_positions: np.ndarray,
    seed_key: str,
    patient_id: str,
    rng: np.random.Generator,
    localizer: np.ndarray | None = None,
) -> list[Path]:
    """Write ``stored`` (z, y, x; slice 0 most superior) as ``folder/<name>`` files; returns the paths.

    ``z_positions`` are the ImagePositionPatient z (mm, descending), ``origin_xy`` the x/y of pixel [0, 0].
    """
    folder.mkdir(parents=True, exist_ok=True)
    syntax = "none"
    if s.compression == "jpeg-lossless":
        if have_jpeg_lossless_encoder():
            syntax = JPEGLosslessSV1
        else:
            log.warning("python-gdcm is not installed: writing RLE Lossless instead of JPEG Lossless")
            syntax = RLELossless
    names = file_names(len(stored), s.naming, seed_key, rng)
    paths: list[Path] = []
    base = _base_dataset({"patient_id": patient_id}, s, seed_key)
    for i, frame in enumerate(stored):
        ds = base.copy()
        z = float(z_positions[i])
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [f"{origin_xy[0]:.4f}", f"{origin_xy[1]:.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = f"{z:.4f}"
        ds.PixelSpacing = [f"{s.pixel_mm:.6f}", f"{s.pixel_mm:.6f}"]
        path = folder / names[i]
        _finish(ds, frame, s, path, uid(seed_key, "sop", i), syntax)
        paths.append(path)
    if localizer is not None:
        ds = base.copy()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesInstanceUID = uid(seed_key, "localizer-series")
        ds.SeriesNumber = 1
        ds.SeriesDescription = "Topogram"
        ds.InstanceNumber = 1
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
        ds.ImagePositionPatient = [f"{origin_xy[0]:.4f}", "0", f"{float(z_positions[0]):.4f}"]
        ds.PixelSpacing = [f"{s.spacing_z_mm:.6f}", f"{s.pixel_mm:.6f}"]
        ds.SliceThickness = f"{s.thickness_mm:g}"
        ds.RescaleIntercept = str(s.intercept)
        ds.WindowCenter = "0"
        ds.WindowWidth = "2000"
        del ds.WindowCenterWidthExplanation
        if "PixelPaddingValue" in ds:
            del ds.PixelPaddingValue
        path = folder / (uid(seed_key, "localizer").split(".")[-1][-12:] + ".dcm")
        _finish(ds, localizer, s, path, uid(seed_key, "localizer"), "none")
        paths.append(path)
    return paths
