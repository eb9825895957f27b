"""``covidct listen`` against a real Orthanc: C-STORE in, SR + SEG + Encapsulated PDF back in the same study."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from node_helpers import Orthanc, dciodvfy_errors, dicom_files, free_port

from covidct.registry import CLASS_NAMES, CLASS_SNOMED
from covidct.serve.dicom_node import DicomNode, NodeSettings
from covidct.serve.dicom_send import Destination
from covidct.serve.node_store import NodeStore

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

StartNode = Callable[..., tuple[DicomNode, int]]


@pytest.fixture
def start_node(orthanc: Orthanc, diagnoser: Any, tmp_path: Path) -> Iterator[StartNode]:
    """Start a node answering to Orthanc; registered in Orthanc as modality ``name``. Stopped afterwards."""
    nodes: list[DicomNode] = []

    def start(name: str = "covidct", store: Path | None = None, **overrides: Any) -> tuple[DicomNode, int]:
        settings = NodeSettings(
            port=free_port(),
            quiet_s=overrides.pop("quiet_s", 0.5),
            send_to=Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port),
            **overrides,
        )
        node = DicomNode(
            diagnoser.diagnose,
            NodeStore(store or tmp_path / f"store-{name}"),
            settings,
            model=diagnoser.pipeline.identity.to_json(),
        )
        port = node.start()
        nodes.append(node)
        orthanc.register(name, settings.ae_title, port)
        return node, port

    yield start
    for node in nodes:
        node.stop()


def push(orthanc: Orthanc, modality: str, resource: str) -> None:
    orthanc.rest("POST", f"/modalities/{modality}/store", json={"Resources": [resource], "Synchronous": True})


def download(orthanc: Orthanc, series: dict[str, Any]) -> list[pydicom.Dataset]:
    out = []
    for instance in orthanc.rest("GET", f"/series/{series['ID']}")["Instances"]:
        data = orthanc.rest("GET", f"/instances/{instance}/file").content
        out.append(pydicom.dcmread(io.BytesIO(data)))
    return out


def wait_idle(node: DicomNode, timeout_s: float = 300.0) -> None:
    end = time.monotonic() + timeout_s
    while not node.idle():
        if time.monotonic() > end:
            raise TimeoutError("the node did not finish")
        time.sleep(0.2)


def _codes(item: Any) -> Iterator[Any]:
    """Every content item of an SR tree, depth first."""
    for child in getattr(item, "ContentSequence", []):
        yield child
        yield from _codes(child)


def test_a_series_pushed_by_orthanc_comes_back_as_sr_seg_and_pdf_in_its_study(
    orthanc: Orthanc, start_node: StartNode, p001_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    files = dicom_files(p001_dir)
    study, series = orthanc.upload(files)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    node, _ = start_node()
    push(orthanc, "covidct", series)
    found = orthanc.wait_for_modalities(study, {"SR", "SEG", "DOC"}, timeout_s=300)
    wait_idle(node)  # the answer is recorded just after the PACS took the objects
    by_modality = {s["MainDicomTags"]["Modality"]: download(orthanc, s) for s in found}
    assert {k: len(v) for k, v in by_modality.items()} == {"SR": 1, "SEG": 1, "DOC": 1}
    sr, seg, doc = by_modality["SR"][0], by_modality["SEG"][0], by_modality["DOC"][0]
    for ds in (sr, seg, doc):  # filed under the source study, as new series and instances
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.PatientID == source.get("PatientID", "")
    assert len({sr.SeriesInstanceUID, seg.SeriesInstanceUID, doc.SeriesInstanceUID}) == 3
    # SEG: both lungs on every source slice
    assert int(seg.NumberOfFrames) == 2 * len(files)
    # SR: the coded finding is the node's answer; lung volumes reference the SEG's segments
    (record,) = node.answered
    items = list(_codes(sr))
    findings = [i.ConceptCodeSequence[0].CodeValue for i in items if "ConceptCodeSequence" in i]
    expected = CLASS_SNOMED[CLASS_NAMES.index(record["diagnosis"])][0]
    assert expected in findings
    assert not set(findings) & ({c for c, _ in CLASS_SNOMED} - {expected})
    segment_refs = [
        (ref.ReferencedSOPInstanceUID, int(ref.ReferencedSegmentNumber))
        for i in items
        for ref in getattr(i, "ReferencedSOPSequence", [])
        if "ReferencedSegmentNumber" in ref
    ]
    assert sorted(segment_refs) == [(seg.SOPInstanceUID, 1), (seg.SOPInstanceUID, 2)]
    volumes = [
        float(i.MeasuredValueSequence[0].NumericValue)
        for i in items
        if i.ConceptNameCodeSequence[0].CodeValue == "118565006"
    ]
    assert len(volumes) == 2 and all(v > 500 for v in volumes)  # ml: real lungs
    texts = " ".join(str(getattr(i, "TextValue", "")) for i in items)
    assert "research use only" in texts
    assert f"model content hash {node.model_hash}" in texts and node.model_hash.startswith("sha256:")
    # PDF
    assert doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert bytes(doc.EncapsulatedDocument).startswith(b"%PDF")
    # every object passes dciodvfy
    for name, ds in (("sr", sr), ("seg", seg), ("pdf", doc)):
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path)
        assert dciodvfy_errors(path) == [], name
    # no patient identifiers or UIDs in the log
    log_text = caplog.text
    for secret in (str(source.get("PatientID", "")), source.SeriesInstanceUID, source.StudyInstanceUID):
        if secret:
            assert secret not in log_text
    # the received instances are gone once answered; the record stays
    assert node.store.pending_series() == []
    assert node.store.answered(source.SeriesInstanceUID, node.model_hash) is not None


def test_the_same_series_sent_twice_is_answered_once(
    orthanc: Orthanc, start_node: StartNode, normal001_dir: Path
) -> None:
    files = dicom_files(normal001_dir)
    study, series = orthanc.upload(files)
    node, _ = start_node("twice")
    push(orthanc, "twice", series)
    orthanc.wait_for_modalities(study, {"SR", "SEG", "DOC"}, timeout_s=300)
    wait_idle(node)
    push(orthanc, "twice", series)  # again, whole
    time.sleep(2.0)
    wait_idle(node)
    assert len(node.answered) == 1
    modalities = [s["MainDicomTags"]["Modality"] for s in orthanc.series_of_study(study)]
    assert sorted(modalities) == ["CT", "DOC", "SEG", "SR"]


def test_a_series_that_cannot_be_diagnosed_gets_an_sr_saying_why(
    orthanc: Orthanc, start_node: StartNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fake_study import phantom, write_dicom_series

    caplog.set_level(logging.INFO)
    hu, _ = phantom(n=4, size=48)  # four slices: not a chest CT study
    files = write_dicom_series(tmp_path / "tiny", hu, patient_name="Doe^Jane", patient_id="PID-4711")
    study, series = orthanc.upload(files)
    node, _ = start_node("short")
    push(orthanc, "short", series)
    (sr_series,) = orthanc.wait_for_modalities(study, {"SR"}, timeout_s=120)
    wait_idle(node)
    (sr,) = download(orthanc, sr_series)
    text = " ".join(str(getattr(i, "TextValue", "")) for i in _codes(sr))
    assert "could not diagnose" in text
    assert node.answered[0]["diagnosis"] is None and node.answered[0]["reason"]
    assert "PID-4711" not in caplog.text and "Doe" not in caplog.text
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    assert dciodvfy_errors(path) == []


def test_unknown_ae_titles_are_refused_and_non_ct_objects_stored_nowhere(
    start_node: StartNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    from pynetdicom import AE

    caplog.set_level(logging.INFO)
    node, port = start_node("guarded", allow=("ORTHANC", "WORKSTATION"))
    intruder = AE(ae_title="INTRUDER")
    intruder.add_requested_context("1.2.840.10008.1.1")
    assoc = intruder.associate("127.0.0.1", port, ae_title="COVIDCT")
    assert assoc.is_rejected
    # an allowed caller may echo, but an MR image is refused and leaves nothing behind
    ws = AE(ae_title="WORKSTATION")
    ws.add_requested_context("1.2.840.10008.1.1")
    ws.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ws.associate("127.0.0.1", port, ae_title="COVIDCT")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "MR"
    ds.PatientName, ds.PatientID = "Doe^John", "PID-1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    statuses = [int(assoc.send_c_store(ds).Status) for _ in range(3)]
    assoc.release()
    assert statuses == [0x0122] * 3
    assert not any((node.store.root / "incoming").iterdir())
    refusals = [r for r in caplog.records if "not CT" in r.getMessage()]
    assert len(refusals) == 1  # logged once per association
    assert "Doe" not in caplog.text and "PID-1" not in caplog.text


def test_settings_and_destinations_are_checked() -> None:
    from covidct.errors import ConfigError
    from covidct.serve.node_store import safe_uid

    assert Destination.parse("ORTHANC@127.0.0.1:4242") == Destination("ORTHANC", "127.0.0.1", 4242)
    for bad in ("ORTHANC@127.0.0.1", "127.0.0.1:4242", "A@h:99999", "WAY_TOO_LONG_AE_TITLE@h:1"):
        with pytest.raises(ConfigError, match="AET@HOST:PORT"):
            Destination.parse(bad)
    with pytest.raises(ValueError, match="AE title"):
        NodeSettings(ae_title="")
    with pytest.raises(ValueError, match="port"):
        NodeSettings(port=70000)
    for bad_uid in ("../etc", "1.2/3", "", "1." * 40):
        with pytest.raises(ValueError):
            safe_uid(bad_uid)
    assert safe_uid("1.2.840.10008") == "1.2.840.10008"
    np.testing.assert_equal(len(CLASS_SNOMED), len(CLASS_NAMES))
