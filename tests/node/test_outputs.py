"""The DICOM objects covidct adds to a study, made from a real series with lesions, checked by dciodvfy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from node_helpers import dciodvfy_errors, dicom_files

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def test_results_with_lesions_are_sr_two_segs_and_pdf_all_valid(
    tiny_model_dir: Path, p001_dir: Path, tmp_path: Path
) -> None:
    from covidct.diagnose import Diagnoser
    from covidct.lesions.api import shipped_lesion_dir
    from covidct.report.dicom_sr import write_results

    lesion_dir = shipped_lesion_dir()
    assert lesion_dir is not None, "models/lesions is part of the repository"
    diagnoser = Diagnoser(tiny_model_dir, workers=1, lesion_model=lesion_dir)
    result = diagnoser.diagnose(p001_dir)
    assert result.lesions is not None and result.lesions.any()
    paths = write_results(result, tmp_path / "out")
    assert [p.name for p in paths] == ["sr.dcm", "seg.dcm", "report-pdf.dcm", "lesion-seg.dcm"]
    for p in paths:
        assert dciodvfy_errors(p) == [], p.name
    source = pydicom.dcmread(dicom_files(p001_dir)[0], stop_before_pixels=True)
    lesion_seg = pydicom.dcmread(paths[3])
    assert lesion_seg.StudyInstanceUID == source.StudyInstanceUID
    assert int(lesion_seg.SeriesNumber) == 904
    codes = [
        (
            s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
        )
        for s in lesion_seg.SegmentSequence
    ]
    assert codes == [("DCM", "112120"), ("SCT", "95436008")]
    assert int(lesion_seg.NumberOfFrames) == 2 * result.volume.n_slices
    # the SEG holds the lesion mask: as many ground glass and consolidation voxels as the result
    import highdicom as hd

    seg = hd.seg.segread(str(paths[3]))
    back = np.asarray(
        seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[
                pydicom.dcmread(s.source, stop_before_pixels=True).SOPInstanceUID
                for s in result.volume.slices
            ],
            combine_segments=True,
        )
    )
    assert back.shape == result.lesions.shape
    assert int((back == 1).sum()) == int((np.asarray(result.lesions) == 1).sum())
    assert int((back == 2).sum()) == int((np.asarray(result.lesions) == 2).sum())


def test_a_failure_report_names_the_reason_and_is_valid(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
    from fake_study import phantom, write_dicom_series

    from covidct.report.dicom_sr import write_failure

    hu, _ = phantom(n=3, size=32)
    files = write_dicom_series(tmp_path / "s", hu)
    path = write_failure(files, "only 3 slices; a chest CT series has at least 20", tmp_path / "out")
    assert dciodvfy_errors(path) == []
    sr = pydicom.dcmread(path)
    text = sr.ContentSequence[0].TextValue
    assert "only 3 slices" in text and "research use only" in text
    assert sr.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID
