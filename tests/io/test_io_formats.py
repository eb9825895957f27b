"""NIfTI/NRRD/MHA volumes, zip archives (and their guards), pydicom's own CT test files."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from covidct.errors import InputError
from covidct.io import load_study, open_study, safe_extract_zip
from covidct.io.formats import canonicalize


def _write_image(path: Path, hu_zyx: np.ndarray, direction: np.ndarray, origin=(1.0, 2.0, 3.0)) -> None:
    image = sitk.GetImageFromArray(hu_zyx)
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.reshape(-1)))
    sitk.WriteImage(image, str(path))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_volume_formats_come_back_canonical(tmp_path: Path, suffix: str, dw) -> None:
    hu = dw.phantom(5)  # canonical: z toward the feet
    # store it the NIfTI-typical way: z index toward the head, i.e. the slices reversed
    _write_image(tmp_path / f"v{suffix}", np.ascontiguousarray(hu[::-1]), np.diag([1.0, 1.0, 1.0]))
    vol = load_study(tmp_path / f"v{suffix}")
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.8))
    np.testing.assert_allclose(vol.direction, np.diag([1.0, 1.0, -1.0]))
    assert vol.origin == pytest.approx((1.0, 2.0, 3.0 + 4 * 2.5))  # the top slice
    assert vol.slice_positions_mm == pytest.approx([13.0 - 2.5 * k for k in range(5)])
    assert vol.meta.input_format in ("nifti", "nrrd", "mha")


def test_canonicalize_undoes_a_transpose_and_flips(dw) -> None:
    hu = dw.phantom(4, rows=6, cols=5)
    stored = np.ascontiguousarray(np.transpose(hu, (0, 2, 1))[:, ::-1, :])  # x<->y, then new y flipped
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # x->P, y->-L, z->I
    out, spacing, origin, d = canonicalize(stored, (2.0, 0.5, 0.9), np.zeros(3), direction)
    np.testing.assert_array_equal(out, hu)
    np.testing.assert_allclose(d, np.diag([1.0, 1.0, -1.0]))
    assert spacing == pytest.approx((2.0, 0.9, 0.5))
    assert origin == pytest.approx([-0.5 * 4, 0.0, 0.0])  # x index 0 = stored row 4, 0.5 mm toward -L


def test_open_study_read_subset_of_volume_file(tmp_path: Path, dw) -> None:
    hu = dw.phantom(6)
    _write_image(tmp_path / "v.nii.gz", np.ascontiguousarray(hu), np.diag([1.0, 1.0, -1.0]))
    study = open_study(tmp_path / "v.nii.gz")
    part = study.read([1, 4])
    np.testing.assert_array_equal(part.hu, hu[[1, 4]])
    assert part.slice_positions_mm == pytest.approx(
        [study.slice_positions_mm[1], study.slice_positions_mm[4]]
    )


def test_corrupt_volume_file_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti at all")
    with pytest.raises(InputError, match="cannot read this volume file"):
        load_study(tmp_path / "bad.nii.gz")


def test_zip_of_a_dicom_folder(tmp_path: Path, write_series, dw) -> None:
    hu = dw.phantom(5)
    write_series(tmp_path / "series" / "sub", hu)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "series").rglob("*.dcm"), reverse=True):
            zf.write(f, f.relative_to(tmp_path))
    vol = load_study(archive, workers=1)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.slices[0].source.startswith(f"{archive}!series/sub/")
    assert vol.meta.input_format == "dicom-zip"


def test_zip_refuses_path_traversal(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escape.txt", "x")
    with pytest.raises(InputError, match="path traversal"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_zip_refuses_links_too_many_files_and_too_many_bytes(tmp_path: Path) -> None:
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"):
        safe_extract_zip(link, tmp_path / "o1")
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(5):
            zf.writestr(f"f{i}", "x")
    with pytest.raises(InputError, match="exceed the limit of 4 files"):
        safe_extract_zip(many, tmp_path / "o2", max_files=4)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros", b"\0" * 100_000)
    with pytest.raises(InputError, match="exceed the limit"):
        safe_extract_zip(bomb, tmp_path / "o3", max_bytes=10_000)
    assert safe_extract_zip(bomb, tmp_path / "o4").joinpath("zeros").stat().st_size == 100_000


def test_pydicom_ct_small_single_slice() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    with pytest.raises(InputError, match="single slice"):
        load_study(path)
    vol = load_study(path, min_slices=1)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert vol.shape == (1, 128, 128)
    np.testing.assert_array_equal(vol.hu[0], np.maximum(expected, -1024))
    assert vol.hu.min() >= -1024
    assert vol.spacing[1:] == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))


def test_pydicom_enhanced_multiframe_ct() -> None:
    path = get_testdata_file("eCT_Supplemental.dcm")
    if path is None:
        pytest.skip("pydicom-data's eCT_Supplemental.dcm is not installed")
    vol = load_study(path, workers=1)
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.astype(np.int32) - 1024  # RescaleIntercept -1024 in the shared groups
    assert vol.shape == (2, 512, 512)
    # frame 1 lies at z = -149, frame 0 at -159: frame 1 is the more superior; the row cosine is (-1, 0, 0)
    assert vol.slices[0].source.endswith("#1") and vol.slices[1].source.endswith("#0")
    assert vol.slice_positions_mm == pytest.approx([-149.0, -159.0])
    np.testing.assert_array_equal(vol.hu[0], np.maximum(frames[1][:, ::-1], -1024))
    np.testing.assert_allclose(vol.direction, np.diag([1.0, 1.0, -1.0]))
    assert vol.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    assert open_study(path).read([1]).hu.shape == (1, 512, 512)


def test_volume_save_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch, dw) -> None:
    """A failing writer leaves neither the target nor a temporary file (was a stale ``.partial`` file)."""
    from covidct.io.volume import CTVolume

    vol = CTVolume(dw.phantom(3), (2.0, 0.7, 0.8))
    out = vol.save(tmp_path / "ok.nii.gz")
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    np.testing.assert_array_equal(back, vol.hu)

    def failing_write(image, name, *a, **k):
        Path(name).write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        vol.save(tmp_path / "bad.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.nii.gz"]


def test_available_cpus_is_the_affinity_count() -> None:
    import os

    from covidct.io import available_cpus
    from covidct.io.loader import default_workers

    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    assert available_cpus() == max(1, expected)
    assert 1 <= default_workers() <= min(4, available_cpus())
