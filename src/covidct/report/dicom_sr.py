"""Results as DICOM objects a PACS files beside the source study: a Structured Report and an Encapsulated PDF.

The SR is a TID 1500 Measurement Report in a Comprehensive 3D SR (highdicom). It holds

- one measurement group for the patient: the finding as a SNOMED CT coded value (COVID-19 840539006,
  community-acquired pneumonia 385093006, normal 17621005), the three patient-level class fractions of the
  kept slices (percent), and the algorithm identification: model name, version, content hash, the rule's
  branch and a research-use statement; when the result has a confidence (:mod:`covidct.confidence`), the
  confidence as (111012, DCM, "Certainty of Finding") in percent, its measurement method saying whether it is
  calibrated, the referral threshold among the algorithm parameters and, when the model has a threshold, the
  referral as a coded Yes/No ("Refer for radiologist review", a 99COVIDCT code);
- one volumetric measurement group per lung: its volume (ml), referencing its segment of the lung SEG.

A study that could not be diagnosed gets a short SR that says why (:func:`build_failure_sr`, :func:`write_failure`). Every object
carries the source study's Study Instance UID and patient module, with new series and SOP instance UIDs.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidct import __version__
from covidct._files import atomic_write
from covidct.registry import CLASS_NAMES, CLASS_SNOMED, DISPLAY_NAMES

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from covidct.confidence import StudyConfidence
    from covidct.diagnose import StudyResult

log = logging.getLogger(__name__)

#: Series numbers of the objects covidct adds to a study (the lung SEG is 901).
SR_SERIES_NUMBER: int = 902
PDF_SERIES_NUMBER: int = 903
#: Said in every object covidct writes.
RESEARCH_STATEMENT: str = "research use only; not for clinical diagnosis"
#: Private coding scheme (DICOM PS3.16: designators starting with 99 are local) for covidct's own concepts.
SCHEME: str = "99COVIDCT"
_PATIENT_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
)


def _code(value: str, scheme: str, meaning: str) -> Any:
    from pydicom.sr.coding import Code

    return Code(value, scheme, meaning)


def _algorithm(result: StudyResult, extra: Sequence[str] = ()) -> Any:
    import highdicom as hd

    model = result.model
    params = [f"model content hash {model.get('hash', 'unknown')}", *extra, RESEARCH_STATEMENT]
    return hd.sr.AlgorithmIdentification(
        name=str(model.get("name") or "covidct"),
        version=str(model.get("version") or __version__),
        parameters=params,
        manufacturer="covidct",
    )


def _observation_context() -> Any:
    import highdicom as hd

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(), name="covidct", manufacturer_name="covidct", model_name=f"covidct {__version__}"
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=_code("121007", "DCM", "Device"), observer_identifying_attributes=device
        )
    )


def _procedure() -> Any:
    return _code("169069000", "SCT", "Computed tomography of chest")


def _report(content: Any, evidence: Sequence[Dataset], *, description: str) -> Dataset:
    import highdicom as hd

    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=content,
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="covidct",
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = f"covidct: {description} ({RESEARCH_STATEMENT})"[:64]
    return sr


def _confidence_items(confidence: StudyConfidence) -> tuple[Any, Any | None, str]:
    """The confidence measurement, the referral evaluation (None without a fitted threshold) and the
    algorithm parameter that states the threshold."""
    import highdicom as hd

    if confidence.calibrated:
        method = _code("calibrated", SCHEME, "Temperature-scaled on validation patients")
    else:
        method = _code("not-calibrated", SCHEME, "Not calibrated (model probability as it is)")
    measurement = hd.sr.Measurement(
        name=_code("111012", "DCM", "Certainty of Finding"),
        value=round(100.0 * float(confidence.value), 2),
        unit=_code("%", "UCUM", "percent"),
        method=method,
    )
    threshold = confidence.threshold
    if confidence.refer is None or threshold is None:
        return measurement, None, "no referral threshold fitted: no referral advice"
    if math.isfinite(threshold):
        parameter = f"referral below a confidence of {100.0 * threshold:.2f} %"
    else:
        parameter = "every study referred: no confidence reached the target accuracy on validation patients"
    answer = _code("373066001", "SCT", "Yes") if confidence.refer else _code("373067005", "SCT", "No")
    referral = hd.sr.QualitativeEvaluation(
        name=_code("refer", SCHEME, "Refer for radiologist review"), value=answer
    )
    return measurement, referral, parameter


def build_sr(result: StudyResult, seg: Dataset, source_datasets: Sequence[Dataset]) -> Dataset:
    """The TID 1500 report of ``result``; ``seg`` is its lung DICOM SEG (the volumes reference its segments)."""
    import highdicom as hd

    from covidct.diagnose import lung_volumes_ml

    trace = result.decision.to_json()
    index = CLASS_NAMES.index(result.diagnosis)
    finding = _code(CLASS_SNOMED[index][0], "SCT", CLASS_SNOMED[index][1])
    fractions = trace.get("fractions") or {}
    percent = _code("%", "UCUM", "percent")
    measurements = [
        hd.sr.Measurement(
            name=_code(f"fraction-{name}", SCHEME, f"Kept slices classified {DISPLAY_NAMES[i]}"),
            value=round(100.0 * float(fractions.get(name, 0.0)), 3),
            unit=percent,
        )
        for i, name in enumerate(CLASS_NAMES)
    ]
    branch = str(trace.get("branch", ""))
    parameters = [f"patient rule branch {branch}"]
    evaluations = [hd.sr.QualitativeEvaluation(name=_code("121071", "DCM", "Finding"), value=finding)]
    if result.confidence is not None:
        confidence, referral, parameter = _confidence_items(result.confidence)
        measurements.append(confidence)
        parameters.append(parameter)
        if referral is not None:
            evaluations.append(referral)
    patient = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="patient-level finding"),
        algorithm_id=_algorithm(result, parameters),
        qualitative_evaluations=evaluations,
        measurements=measurements,
    )
    volumes = lung_volumes_ml(result.mask, result.volume)
    groups: list[Any] = [patient]
    for number, (side, code, meaning) in enumerate(
        (("right", "3341006", "Right lung"), ("left", "44029006", "Left lung")), start=1
    ):
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=meaning),
                referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, segment_number=number),
                finding_type=_code(code, "SCT", meaning),
                algorithm_id=_algorithm(result),
                measurements=[
                    hd.sr.Measurement(
                        name=_code("118565006", "SCT", "Volume"),
                        value=float(volumes.get(side, 0.0)),
                        unit=_code("ml", "UCUM", "milliliter"),
                    )
                ],
            )
        )
    content = hd.sr.MeasurementReport(
        observation_context=_observation_context(),
        procedure_reported=_procedure(),
        imaging_measurements=groups,
    )
    return _report(content, [*source_datasets, seg], description=f"{DISPLAY_NAMES[index]} (AI)")


def build_failure_sr(source_datasets: Sequence[Dataset], reason: str) -> Dataset:
    """A short report for a series covidct could not diagnose: one comment that says why."""
    import highdicom as hd

    root = hd.sr.ContainerContentItem(
        name=_code("18748-4", "LN", "Diagnostic imaging report"), template_id=None
    )
    root.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=_code("121106", "DCM", "Comment"),
                value=f"covidct could not diagnose this series: {reason} ({RESEARCH_STATEMENT})"[:1024],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    return _report(root, source_datasets, description="not diagnosed")


def write_dataset(ds: Dataset, out_path: str | Path) -> Path:
    """Save a dataset whole or not at all."""
    return atomic_write(out_path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


def build_encapsulated_pdf(pdf: bytes, source: Dataset, *, title: str = "covidct report") -> Dataset:
    """An Encapsulated PDF instance in ``source``'s study (patient and study modules copied, new series)."""
    import highdicom as hd
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    encapsulated_pdf = "1.2.840.10008.5.1.4.1.1.104.1"
    ds = Dataset()
    for keyword in _PATIENT_KEYWORDS:
        setattr(ds, keyword, getattr(source, keyword, ""))
    now = _dt.datetime.now(_dt.timezone.utc)
    ds.SOPClassUID = encapsulated_pdf
    ds.SOPInstanceUID = hd.UID()
    ds.SeriesInstanceUID = hd.UID()
    ds.Modality = "DOC"
    ds.SeriesNumber = PDF_SERIES_NUMBER
    ds.SeriesDescription = f"covidct report ({RESEARCH_STATEMENT})"[:64]
    ds.Manufacturer = "covidct"
    ds.SoftwareVersions = __version__
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    body = pdf if len(pdf) % 2 == 0 else pdf + b"\0"
    ds.EncapsulatedDocument = body
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.SpecificCharacterSet = "ISO_IR 192"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _source_headers(files: Sequence[Path]) -> list[Any]:
    import pydicom

    from covidct.report.dicom_seg import complete_header

    return [complete_header(pydicom.dcmread(f, stop_before_pixels=True)) for f in files]


def write_results(result: StudyResult, out: Path, *, explainer_source: Any | None = None) -> list[Path]:
    """The SR, the lung SEG it references, the PDF report as Encapsulated PDF and, when the result has lesions,
    the lesion SEG, in ``out``."""
    import tempfile

    import pydicom

    from covidct.report.dicom_seg import complete_header, source_datasets_for, write_dicom_seg
    from covidct.report.pdf import write_pdf

    headers, order = source_datasets_for(result.volume)  # read once for both SEGs and the SR
    sources = [complete_header(ds) for ds in headers]
    seg_path = write_dicom_seg(
        result, result.mask, out / "seg.dcm", source_datasets=sources, source_order=order
    )
    seg = pydicom.dcmread(seg_path)
    sr_path = write_dataset(build_sr(result, seg, sources), out / "sr.dcm")
    with tempfile.TemporaryDirectory(prefix="covidct-pdf-") as tmp:
        pdf = write_pdf(result, Path(tmp) / "report.pdf", diagnoser=explainer_source).read_bytes()
    pdf_path = write_dataset(build_encapsulated_pdf(pdf, sources[0]), out / "report-pdf.dcm")
    paths = [sr_path, seg_path, pdf_path]
    if result.lesions is not None:
        lesions = np.asarray(result.lesions, dtype=np.uint8)
        paths.append(
            write_dicom_seg(
                result,
                lesions,
                out / "lesion-seg.dcm",
                source_datasets=sources,
                source_order=order,
                kind="lesions",
            )
        )
    return paths


def write_failure(files: Sequence[Path], reason: str, out: Path) -> Path:
    """The short SR of a series that could not be diagnosed."""
    return write_dataset(build_failure_sr(_source_headers(files), reason), out / "sr-not-diagnosed.dcm")
