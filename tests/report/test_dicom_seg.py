from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_study import make_volume, phantom, volume_from_files, write_dicom_series

from covidct.errors import InputError
from covidct.report.dicom_seg import write_dicom_seg

SPACING = (2.5, 0.7, 0.7)


def _series(tmp_path: Path, n: int = 6, size: int = 24):
    hu, mask = phantom(n, size)
    paths = write_dicom_series(tmp_path / "ct", hu, spacing=SPACING)
    return volume_from_files(paths, hu, SPACING), mask, paths


def test_seg_references_source_keeps_every_frame_and_round_trips(tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom

    volume, mask, paths = _series(tmp_path)
    assert not mask[0].any() and not mask[-1].any()  # empty frames present
    out = write_dicom_seg(volume, mask, tmp_path / "out" / "seg.dcm")
    seg = hd.seg.segread(str(out))
    assert int(seg.NumberOfFrames) == mask.shape[0] * 2
    assert seg.SegmentationType == "BINARY"
    codes = {
        int(s.SegmentNumber): (s.SegmentedPropertyTypeCodeSequence[0].CodeValue, s.SegmentLabel)
        for s in seg.SegmentSequence
    }
    assert codes == {1: ("3341006", "Right lung"), 2: ("44029006", "Left lung")}
    cats = {s.SegmentedPropertyCategoryCodeSequence[0].CodeValue for s in seg.SegmentSequence}
    assert cats == {"123037004"}
    src = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert seg.StudyInstanceUID == src[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    refs = {
        r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence
    }
    assert refs == {d.SOPInstanceUID for d in src}
    back = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in src], combine_segments=True)
    np.testing.assert_array_equal(np.asarray(back), mask)
    assert not list(out.parent.glob(".*partial*"))


def test_seg_needs_dicom_source(tmp_path: Path) -> None:
    volume, mask = make_volume(n=4, size=16)
    with pytest.raises(InputError, match="NIfTI mask instead"):
        write_dicom_seg(volume, mask, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_seg_refuses_bad_masks(tmp_path: Path) -> None:
    volume, mask, _ = _series(tmp_path, n=4, size=16)
    with pytest.raises(ValueError, match="does not match"):
        write_dicom_seg(volume, mask[:3], tmp_path / "a.dcm")
    bad = mask.copy()
    bad[1, 0, 0] = 7
    with pytest.raises(ValueError, match="0, 1 or 2"):
        write_dicom_seg(volume, bad, tmp_path / "b.dcm")


def test_seg_from_the_real_loader(tmp_path: Path) -> None:
    """What the service does: load the DICOM folder with covidct.io, then write the SEG from its sources."""
    from covidct.io import load_study

    hu, mask = phantom(5, 20)
    write_dicom_series(tmp_path / "ct", hu, spacing=SPACING)
    volume = load_study(tmp_path / "ct")
    np.testing.assert_array_equal(np.asarray(volume.hu), hu)
    out = write_dicom_seg(volume, mask, tmp_path / "seg.dcm")
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    "iop",
    [(-1, 0, 0, 0, 1, 0), (1, 0, 0, 0, -1, 0), (0, 1, 0, 1, 0, 0)],
    ids=["x-flipped", "y-flipped", "transposed"],
)
def test_seg_is_on_the_source_pixel_grid_whatever_the_orientation(
    tmp_path: Path, iop: tuple[int, ...]
) -> None:
    """Ingestion flips/transposes non-standard series; the SEG must still overlay the source pixels."""
    import highdicom as hd
    import pydicom

    from covidct.io import load_study

    rng = np.random.default_rng(5)
    labels_src = rng.integers(0, 3, size=(4, 12, 12)).astype(np.uint8)  # asymmetric, in the source grid
    hu_src = np.where(labels_src == 1, -850, np.where(labels_src == 2, -700, 40)).astype(np.int16)
    paths = write_dicom_series(tmp_path / "ct", hu_src, spacing=(2.5, 0.7, 0.7), iop=iop)
    volume = load_study(tmp_path / "ct")
    hu = np.asarray(volume.hu)
    mask = np.where(hu == -850, 1, np.where(hu == -700, 2, 0)).astype(np.uint8)  # the mask in the volume grid
    out = write_dicom_seg(volume, mask, tmp_path / "seg.dcm")
    seg = hd.seg.segread(str(out))
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths]
    back = np.asarray(seg.get_pixels_by_source_instance(uids, combine_segments=True))
    np.testing.assert_array_equal(back, labels_src)


@pytest.mark.slow
@pytest.mark.shared_data
def test_seg_on_real_covid_ct_md(p001_dir: Path, tmp_path: Path) -> None:
    """P001 of the real sample: every frame kept, pixels round-trip (threshold mask, no model)."""
    import highdicom as hd

    from covidct.io import load_study

    volume = load_study(p001_dir)
    hu = np.asarray(volume.hu)
    mask = np.zeros(hu.shape, np.uint8)
    lung = (hu < -400) & (hu > -1000)
    half = hu.shape[2] // 2
    mask[:, :, :half][lung[:, :, :half]] = 1
    mask[:, :, half:][lung[:, :, half:]] = 2
    out = write_dicom_seg(volume, mask, tmp_path / "p001_seg.dcm")  # verified on re-read inside
    assert int(hd.seg.segread(str(out)).NumberOfFrames) == 2 * volume.n_slices
