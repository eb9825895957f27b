"""Ingestion of the real CT in ../shared/data (skipped where absent; failing if COVIDCT_REQUIRE_SHARED_DATA=1).

Each COVID-CT-MD series is decoded once per module (module-scoped fixtures, about 2 s each).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from covidct.errors import InputError, NotChestCTError
from covidct.io import CTVolume, check_chest_ct, load_study, open_study, require_chest_ct
from covidct.io.formats import read_volume_image

pytestmark = pytest.mark.shared_data

EXPECTED = {"P001": 148, "cap001": 168, "normal001": 154}
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
ABDOMEN_ONLY = ("A027284", "A058062", "A062055")  # the SBU patients whose two slices show no lung


@pytest.fixture(scope="module")
def series(p001_dir: Path, cap001_dir: Path, normal001_dir: Path) -> dict[str, CTVolume]:
    return {d.name: load_study(d) for d in (p001_dir, cap001_dir, normal001_dir)}


@pytest.mark.slow  # the fixture decodes three 150-slice series (~7 s on an idle 2-core machine)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_covid_ct_md_series(series: dict[str, CTVolume], name: str) -> None:
    vol = series[name]
    assert vol.n_slices == EXPECTED[name]
    assert vol.shape[1:] == (512, 512)
    assert vol.hu.dtype == np.int16
    assert vol.spacing[0] == pytest.approx(2.0)
    assert 0.58 <= vol.spacing[1] == vol.spacing[2] <= 0.76
    pos = np.asarray(vol.slice_positions_mm)
    np.testing.assert_allclose(np.diff(pos), -2.0, atol=1e-3)  # superior -> inferior, evenly
    assert vol.slices[0].instance_number == 1  # the dataset's InstanceNumber 1 is the most superior slice
    assert vol.slices[-1].instance_number == EXPECTED[name]
    assert vol.hu.min() == -1024
    assert 1000 < vol.hu.max() < 4000
    assert vol.meta.transfer_syntax == JPEG_LOSSLESS_SV1
    assert vol.meta.manufacturer == "SIEMENS"
    assert vol.meta.warnings == [] and vol.meta.skipped == []
    check = check_chest_ct(vol)
    assert check.is_chest_ct, check.reason
    assert 2000 < check.lung_air_ml < 8000


@pytest.mark.slow
def test_shuffled_real_copy_orders_the_same(tmp_path: Path, series, normal001_dir: Path) -> None:
    files = sorted(normal001_dir.iterdir())
    random.Random(7).shuffle(files)
    for i, f in enumerate(files):
        shutil.copy(f, tmp_path / f"{random.Random(i).randrange(10**9):09d}")
    study = open_study(tmp_path)
    ref = series["normal001"]
    assert study.slice_positions_mm == ref.slice_positions_mm
    part = study.read([0, 77, 153])
    np.testing.assert_array_equal(part.hu, ref.hu[[0, 77, 153]])


def test_sbu_axial_slices_no_value_below_air(more_ct: Path) -> None:
    files = sorted((more_ct / "covid19-ny-sbu").glob("*/axial/*.dcm"))
    assert len(files) == 20
    vendors = set()
    padded = 0
    for f in files:
        vol = load_study(f, min_slices=1)
        ds = pydicom.dcmread(f)
        vendors.add(vol.meta.manufacturer.split()[0])
        raw = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert vol.hu.min() >= -1024, f.name
        low = raw < -1024  # padding (GE: -3024) or out-of-field (Toshiba: -2048)
        if low.any():
            padded += 1
            assert (vol.hu[0][low] == -1024).all()
        np.testing.assert_array_equal(vol.hu[0][~low], raw[~low])
    assert vendors == {"GE", "TOSHIBA"}
    assert padded >= 10


def test_sbu_axial_chosen_over_reformats(more_ct: Path) -> None:
    folder = more_ct / "covid19-ny-sbu" / "A002304"
    # the folder holds two studies (two dates) of the patient: one must be picked (issue 12, item 7)
    with pytest.raises(InputError, match=r"2 different studies.*--series"):
        load_study(folder, min_slices=1)
    uid = str(
        pydicom.dcmread(sorted((folder / "axial").iterdir())[-1], stop_before_pixels=True).SeriesInstanceUID
    )
    vol = load_study(folder, min_slices=1, series=uid)
    assert "/axial/" in vol.slices[0].source
    reasons = {
        s["path"].split("/")[-2] + "/" + s["path"].split("/")[-1]: s["reason"] for s in vol.meta.skipped
    }
    assert sum("coronal reformat" in r for k, r in reasons.items() if k.startswith("coronal/")) == 2
    assert sum("sagittal reformat" in r for k, r in reasons.items() if k.startswith("sagittal/")) == 2


def test_sbu_chest_check(more_ct: Path) -> None:
    verdicts = {}
    for f in sorted((more_ct / "covid19-ny-sbu").glob("*/axial/*.dcm")):
        verdicts[f"{f.parts[-3]}/{f.name}"] = check_chest_ct(load_study(f, min_slices=1)).is_chest_ct
    abdomen = {k: v for k, v in verdicts.items() if k.split("/")[0] in ABDOMEN_ONLY}
    assert len(abdomen) == 6 and not any(abdomen.values()), abdomen
    assert sum(verdicts.values()) >= 12


def test_lidc_headerless(more_ct: Path) -> None:
    vol = load_study(more_ct / "lidc-two-slices")
    assert vol.shape == (2, 512, 512)
    assert vol.spacing[0] == pytest.approx(1.0)
    assert vol.slice_positions_mm == pytest.approx([1.0, 0.0])
    assert vol.hu.min() == -1024 and 500 < vol.hu.max() < 4000
    assert any("no Modality" in w for w in vol.meta.warnings)
    assert require_chest_ct(vol).lung_slices == 2


def test_j2k_abdomen_read_then_flagged(more_ct: Path) -> None:
    vol = load_study(more_ct / "abdomen-j2k")  # the folder also holds NIfTI files: DICOM series chosen
    assert vol.shape == (20, 512, 512)
    assert vol.meta.transfer_syntax == JPEG_2000_LOSSLESS
    assert vol.hu.min() == -1024 and vol.hu.max() > 500
    check = check_chest_ct(vol)
    assert not check.is_chest_ct and "no lungs" in check.reason
    with pytest.raises(NotChestCTError, match="not a chest CT"):
        require_chest_ct(vol)


def test_truncated_compressed_file_is_skipped(more_ct: Path, tmp_path: Path) -> None:
    files = sorted((more_ct / "abdomen-j2k" / "example_ct_dicom").iterdir())
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    victim = tmp_path / files[5].name
    data = victim.read_bytes()
    victim.write_bytes(data[:-3000])  # cut inside the JPEG 2000 fragments
    # issue 12: the hole it leaves inside the series is refused, naming the file (was: kept with a warning)
    with pytest.raises(InputError, match=rf"{files[5].name} was left out \(truncated file.*would have a gap"):
        load_study(tmp_path, workers=1)
    victim.write_bytes(data)
    vol0 = load_study(tmp_path, workers=1)  # the same cut in the last (most inferior) slice: kept, reported
    last = Path(vol0.slices[-1].source)
    last.write_bytes(last.read_bytes()[:-3000])
    vol = load_study(tmp_path, workers=1)
    assert vol.n_slices == 19
    assert [s["reason"] for s in vol.meta.skipped if s["path"].endswith(last.name)] == [
        "truncated file (pixel data shorter than declared)"
    ]


def test_nifti_example_superior_first(more_ct: Path) -> None:
    path = more_ct / "abdomen-j2k" / "example_ct_sm.nii.gz"
    vol = load_study(path)
    assert vol.n_slices == 30 and vol.spacing[0] == pytest.approx(3.0)
    assert vol.meta.input_format == "nifti"
    assert np.all(np.diff(vol.slice_positions_mm) < 0)
    seg, *_ = read_volume_image(more_ct / "abdomen-j2k" / "example_seg.nii.gz")
    assert seg.shape == vol.shape
    lung = np.isin(seg, (10, 11, 13, 14))
    z_lung = np.nonzero(lung)[0]
    assert z_lung.size > 0 and z_lung.mean() < vol.n_slices / 2  # the lower chest is at the top
    assert vol.hu[lung].mean() < -600  # and the labelled lungs are air-filled in our array too
    assert check_chest_ct(vol).is_chest_ct
