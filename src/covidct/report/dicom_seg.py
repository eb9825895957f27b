"""The lung mask as a DICOM Segmentation (highdicom) that references the source CT series.

Two segments, BINARY: 1 = right lung (SNOMED CT 3341006 "Right lung"), 2 = left lung (SNOMED CT 44029006
"Left lung"), both with category SNOMED CT 123037004 "Anatomical Structure" and algorithm type AUTOMATIC.
Every slice gets a frame per segment, empty ones included (``omit_empty_frames=False``), so viewers such as
OHIF and 3D Slicer map frames to source slices one to one. After writing, the file is read back and its
frame count and pixels are compared with the mask before it is renamed into place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidct import __version__
from covidct._files import atomic_write
from covidct.errors import InputError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from covidct.io.volume import CTVolume

log = logging.getLogger(__name__)

#: (segment number, label, SNOMED CT code value, code meaning) of the two lung segments.
SEGMENTS: tuple[tuple[int, str, str, str], ...] = (
    (1, "Right lung", "3341006", "Right lung"),
    (2, "Left lung", "44029006", "Left lung"),
)
#: Type 2 attributes highdicom copies from the source; anonymised series often lack them (filled in empty).
_TYPE2_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
)
#: SNOMED CT "Anatomical Structure", the segmented property category of both segments.
CATEGORY: tuple[str, str] = ("123037004", "Anatomical Structure")
#: (segment number, label, coding scheme, code value, code meaning) of the lesion segments: ground glass
#: opacity from DICOM CID 6104 (Abnormal Opacity Finding), consolidation from SNOMED CT.
LESION_SEGMENTS: tuple[tuple[int, str, str, str, str], ...] = (
    (1, "Ground glass opacity", "DCM", "112120", "Ground glass opacity"),
    (2, "Consolidation", "SCT", "95436008", "Lung consolidation"),
)
#: SNOMED CT "Morphologically Abnormal Structure", the category of the lesion segments.
LESION_CATEGORY: tuple[str, str] = ("49755003", "Morphologically Abnormal Structure")
#: What each kind of SEG holds: its segments, category, and the series description and content label.
KINDS: dict[str, dict[str, Any]] = {
    "lungs": {
        "segments": tuple((n, label, "SCT", code, meaning) for n, label, code, meaning in SEGMENTS),
        "category": CATEGORY,
        "label": "LUNGS",
        "series_number": 901,
        "description": "Right and left lung (automatic, research use only)",
        "series": "covidct lung mask (research use only)",
        "algorithm": "covidct lung segmentation",
    },
    "lesions": {
        "segments": LESION_SEGMENTS,
        "category": LESION_CATEGORY,
        "label": "LESIONS",
        "series_number": 904,
        "description": "Ground glass and consolidation (automatic, research use only)",
        "series": "covidct lesions (research use only)",
        "algorithm": "covidct lesion segmentation",
    },
}


def _split_source(source: str) -> tuple[str, int | None]:
    """``"path"`` -> (path, None); ``"path#k"`` -> (path, k) for a frame of a multi-frame file."""
    if "#" in source:
        path, _, frame = source.rpartition("#")
        if frame.isdigit():
            return path, int(frame)
    return source, None


def source_datasets_for(volume: CTVolume) -> tuple[list[Dataset], np.ndarray]:
    """Read the source DICOM headers of ``volume`` and the slice order that matches their frames.

    Returns ``(datasets, order)``: ``mask[order]`` lists the mask's slices in the order highdicom expects
    (one per single-frame dataset, or one per frame of a single multi-frame dataset).
    """
    import pydicom

    if not volume.slices or any(not s.source for s in volume.slices):
        raise InputError(
            f"a DICOM SEG needs the source DICOM series, but this study was read from "
            f"{volume.meta.input_format or 'a non-DICOM file'}; write the NIfTI mask instead"
        )
    parts = [_split_source(s.source) for s in volume.slices]
    paths = {p for p, _ in parts}
    if all(f is None for _, f in parts):
        datasets: list[Dataset] = []
        for p, _ in parts:
            try:
                datasets.append(pydicom.dcmread(p, stop_before_pixels=True))
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                raise InputError(f"{p}: cannot re-read the source DICOM file for the SEG ({exc})") from exc
        return datasets, np.arange(len(parts))
    if len(paths) == 1 and all(f is not None for _, f in parts):
        path = next(iter(paths))
        frames = np.array([f for _, f in parts], dtype=np.int64)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        n_frames = int(getattr(ds, "NumberOfFrames", 1))
        base = 1 if frames.min() >= 1 and frames.max() == n_frames else 0
        order = np.argsort(frames - base)
        if sorted(frames - base) != list(range(n_frames)):
            raise InputError(f"{path}: the volume does not use every frame of the multi-frame source once")
        return [ds], order
    raise InputError(
        "the volume's slices come from a mix of multi-frame and single-frame files; cannot write SEG"
    )


def _orientation(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines (LPS) of a source image (per-frame groups for enhanced CT)."""
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None:
        try:
            iop = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
        except (AttributeError, IndexError):
            iop = ds.PerFrameFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    v = np.asarray([float(x) for x in iop], dtype=np.float64)
    return v[:3], v[3:6]


def to_source_grid(mask: np.ndarray, volume: CTVolume, ds: Dataset) -> np.ndarray:
    """Undo the in-plane flips/transposition ingestion applied, so mask slices match the source pixels.

    ``covidct.io`` canonicalises volumes (array x toward patient left, y toward posterior); a series stored
    otherwise (e.g. feet-first, prone) was flipped on loading. The volume's ``direction`` columns say where its
    x and y axes point; the source's ImageOrientationPatient says where its columns and rows point.
    Raises :class:`InputError` when the slices are not the source's image planes (a resliced volume).
    """
    row_cos, col_cos = _orientation(ds)  # directions of increasing column index and increasing row index
    d = np.asarray(volume.direction, dtype=np.float64)
    axes = {0: d[:, 1], 1: d[:, 0]}  # mask slice axis 0 = y, axis 1 = x

    def match(target: np.ndarray) -> tuple[int, float]:
        for axis, vec in axes.items():
            dot = float(np.dot(target, vec))
            if abs(abs(dot) - 1.0) < 1e-3:
                return axis, float(np.sign(dot))
        return -1, 0.0

    src_row_axis, row_sign = match(col_cos)  # which mask axis runs along the source's rows (down)
    src_col_axis, col_sign = match(row_cos)
    normal = np.cross(row_cos, col_cos)
    if (
        src_row_axis < 0
        or src_col_axis < 0
        or src_row_axis == src_col_axis
        or abs(abs(normal @ d[:, 2]) - 1) > 1e-3
    ):
        raise InputError(
            "the loaded volume is not on the source images' planes (resliced or oblique on loading); "
            "a DICOM SEG needs the source pixel grid, write the NIfTI mask instead"
        )
    out = mask if src_row_axis == 0 else np.swapaxes(mask, 1, 2)
    if row_sign < 0:
        out = out[:, ::-1, :]
    if col_sign < 0:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def complete_header(ds: Dataset) -> Dataset:
    """A copy of a source header with missing Type 2 patient/study attributes present but empty."""
    import copy

    missing = [k for k in _TYPE2_KEYWORDS if k not in ds]
    if not missing:
        return ds
    out = copy.deepcopy(ds)
    for keyword in missing:
        setattr(out, keyword, "")
    return out


def _segment_descriptions(kind: str = "lungs") -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    spec = KINDS[kind]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=spec["algorithm"], family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    category = Code(spec["category"][0], "SCT", spec["category"][1])
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=Code(code, scheme, meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=label,
        )
        for number, label, scheme, code, meaning in spec["segments"]
    ]


def write_dicom_seg(
    volume: CTVolume | Any,
    mask: np.ndarray,
    out_path: str | Path,
    *,
    source_datasets: Sequence[Dataset] | None = None,
    source_order: np.ndarray | None = None,
    series_number: int | None = None,
    kind: str = "lungs",
) -> Path:
    """Write ``mask`` (uint8 (z, y, x), 0 bg / 1 right / 2 left) as a DICOM SEG for ``volume``'s series.

    ``kind="lesions"``: ``mask`` is a lesion mask (0 bg / 1 ground glass / 2 consolidation), written with
    the :data:`LESION_SEGMENTS` (series 904 unless ``series_number`` is given; the lung SEG is 901).

    ``volume`` may also be a ``StudyResult`` (its ``.volume`` is used). ``source_datasets`` (the source
    headers, in the volume's slice order, or one multi-frame dataset) are read from
    ``volume.slices[i].source`` when not given; with them, ``source_order`` is the ``order`` that
    :func:`source_datasets_for` returned for them (default: one dataset per slice, in order). Raises
    :class:`InputError` when the study has no DICOM source.
    """
    import highdicom as hd

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    spec = KINDS[kind]
    if series_number is None:
        series_number = int(spec["series_number"])
    if hasattr(volume, "volume") and hasattr(volume, "decision"):
        volume = volume.volume
    m = np.asarray(mask)
    if m.shape != tuple(volume.shape):
        raise ValueError(f"mask shape {m.shape} does not match volume shape {volume.shape}")
    if m.size and (m.min() < 0 or m.max() > 2):
        raise ValueError(f"mask values must be 0, 1 or 2, found {np.unique(m)[:8].tolist()}")
    if source_datasets is None:
        datasets, order = source_datasets_for(volume)
    else:
        order = np.arange(m.shape[0]) if source_order is None else np.asarray(source_order)
        datasets = list(source_datasets)
    datasets = [complete_header(ds) for ds in datasets]
    m = to_source_grid(m, volume, datasets[0])
    for ds in datasets:
        if (int(ds.Rows), int(ds.Columns)) != m.shape[1:]:
            raise InputError(
                f"source image {ds.SOPInstanceUID} is {ds.Rows}x{ds.Columns} but the mask slices are "
                f"{m.shape[1]}x{m.shape[2]}; the SEG must be written on the original pixel grid"
            )
    frames = np.ascontiguousarray(m[order].astype(np.uint8))
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(kind),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="covidct",
        manufacturer_model_name=spec["algorithm"],
        software_versions=__version__,
        device_serial_number="none",
        content_label=spec["label"],
        content_description=spec["description"],
        series_description=spec["series"],
        omit_empty_frames=False,
    )

    def save_and_verify(tmp: Path) -> None:
        seg.save_as(tmp)
        verify_dicom_seg(tmp, frames, datasets, segments=len(spec["segments"]))

    out = atomic_write(out_path, save_and_verify)
    log.debug("wrote DICOM SEG %s (%d frames)", out.name, frames.shape[0] * len(spec["segments"]))
    return out


def verify_dicom_seg(
    path: str | Path, frames: np.ndarray, source_datasets: Sequence[Dataset], *, segments: int = len(SEGMENTS)
) -> None:
    """Re-read a SEG and check it holds every frame and exactly ``frames`` (label map in source order).

    Raises ``RuntimeError`` naming the difference.
    """
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    expected = int(frames.shape[0]) * segments
    got = int(getattr(seg, "NumberOfFrames", 1))
    if got != expected:
        raise RuntimeError(f"{path}: the SEG has {got} frames, expected {expected} (frames were dropped)")
    if len(source_datasets) == 1 and frames.shape[0] > 1:
        back = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=source_datasets[0].SOPInstanceUID,
            source_frame_numbers=list(range(1, frames.shape[0] + 1)),
            combine_segments=True,
        )
    else:
        back = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID for ds in source_datasets], combine_segments=True
        )
    back = np.asarray(back)
    if back.shape != frames.shape or not np.array_equal(back.astype(np.uint8), frames):
        diff = int(np.count_nonzero(back != frames)) if back.shape == frames.shape else -1
        raise RuntimeError(
            f"{path}: SEG pixels differ from the mask ({diff} voxels; shapes {back.shape} vs {frames.shape})"
        )
