"""``covidct segment`` on phantom volumes written as NIfTI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from covidct.cli.main import main


@pytest.fixture(scope="module")
def phantom_nifti(phantom, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("ct") / "phantom.nii.gz"
    phantom.volume.save(path)
    return Path(path)


def test_segment_writes_mask_preview_and_json(phantom, phantom_nifti: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "mask.nii.gz"
    png = tmp_path / "preview.png"
    rc = main(["segment", str(phantom_nifti), "-o", str(out), "--json", "--preview", str(png)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    image = sitk.ReadImage(str(out))
    mask = sitk.GetArrayFromImage(image)
    assert mask.dtype == np.uint8
    src = sitk.ReadImage(str(phantom_nifti))
    assert image.GetSize() == src.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), src.GetSpacing())
    np.testing.assert_allclose(image.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), src.GetDirection(), atol=1e-6)
    counts = np.bincount(mask.ravel(), minlength=3)
    assert doc["voxels"] == {
        "background": int(counts[0]),
        "right_lung": int(counts[1]),
        "left_lung": int(counts[2]),
    }
    voxel_ml = float(np.prod(phantom.volume.spacing)) / 1000
    assert doc["volume_ml"]["right"] == pytest.approx(counts[1] * voxel_ml, abs=0.1)
    assert doc["volume_ml"]["left"] == pytest.approx(counts[2] * voxel_ml, abs=0.1)
    assert counts[1] > 0 and counts[2] > 0
    assert png.exists() and png.stat().st_size > 1000


def test_no_lungs_fails_without_writing(make_phantom, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "nolungs.nii.gz"
    make_phantom(lungs=False).volume.save(src)
    out = tmp_path / "mask.nii.gz"
    rc = main(["segment", str(src), "-o", str(out), "--json"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "no lungs found" in err and "nolungs.nii.gz" in err
    assert not out.exists()
    assert not list(tmp_path.glob("*partial*"))


def test_bad_arguments(phantom_nifti: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["segment", str(phantom_nifti), "-o", str(tmp_path / "mask.png")]) == 2
    assert "suffix" in capsys.readouterr().err
    assert main(["segment", str(phantom_nifti), "-o", str(tmp_path / "m.nii.gz"), "--method", "unet"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "missing"), "-o", str(tmp_path / "m.nii.gz")]) != 0
    assert "missing" in capsys.readouterr().err
