"""Synthetic cohorts: layout, labels, masks, DICOM validity, determinism, and the quality bar."""

from __future__ import annotations

import csv
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from covidct.data.synth import class_counts, generate_cohort, generate_patient
from covidct.errors import ConfigError
from covidct.registry import LOBES


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("synth") / "c", patients=6, mix=(1, 1, 1), seed=3)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_patient_arrays_and_labels_consistent() -> None:
    p = generate_patient("covid19", seed=5)
    z = p.hu.shape[0]
    assert p.hu.dtype == np.int16 and p.hu.shape[1:] == (128, 128) and 30 <= z <= 60
    assert set(np.unique(p.lung_mask)) <= {0, 1, 2} and set(np.unique(p.lesion_mask)) <= {0, 1}
    assert not np.any(p.lesion_mask & (p.lung_mask == 0))
    assert p.slice_labels.sum() > 0
    np.testing.assert_array_equal(p.lobe_labels.max(axis=1) > 0, p.slice_labels > 0)
    # right lung (label 1) lies on the low-column side (patient's right, LPS)
    cols = np.nonzero(p.lung_mask)[2]
    right = cols[p.lung_mask[p.lung_mask > 0] == 1].mean()
    left = cols[p.lung_mask[p.lung_mask > 0] == 2].mean()
    assert right < left
    # HU realism: parenchyma, air outside the body
    lung_hu = np.median(p.hu[(p.lung_mask > 0) & (p.lesion_mask == 0)])
    assert -900 < lung_hu < -750


def test_normal_has_no_lesions_and_covid_is_bilateral() -> None:
    n = generate_patient("normal", seed=1)
    assert n.lesion_mask.sum() == 0 and n.slice_labels.sum() == 0
    c = generate_patient("covid19", seed=2)
    sides = set(np.unique(c.lung_mask[c.lesion_mask > 0]))
    assert sides == {1, 2}
    lesion_hu = np.median(c.hu[c.lesion_mask > 0])
    assert -750 < lesion_hu < 0


def test_cap_consolidation_is_dense_and_one_sided() -> None:
    hits = 0
    for seed in range(4):
        p = generate_patient("cap", seed=seed)
        if p.pattern.startswith("lobar"):
            hits += 1
            assert len(set(np.unique(p.lung_mask[p.lesion_mask > 0]))) == 1
            assert np.percentile(p.hu[p.lesion_mask > 0], 75) > -300
    assert hits >= 1


def test_same_seed_same_patient() -> None:
    a = generate_patient("cap", seed=9)
    b = generate_patient("cap", seed=9)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert not np.array_equal(a.hu.shape, generate_patient("cap", seed=10).hu.shape) or not np.array_equal(
        a.hu, generate_patient("cap", seed=10).hu
    )


def test_layout_index_and_label_arrays(cohort: Path) -> None:
    for folder in ("COVID-19 subjects", "CAP subjects", "Normal subjects"):
        assert len(list((cohort / folder).iterdir())) == 2
    raw = (cohort / "Index.csv").read_bytes()
    assert raw.startswith(b"Label Index,Diagnosis,Relative Path,Folder/ID\r\n") and not raw.endswith(b"\n")
    rows = list(csv.reader(raw.decode().splitlines()))[1:]
    assert [r[1] for r in rows] == ["COVID-19", "COVID-19", "CAP", "CAP"]
    sl = np.load(cohort / "Slice-level-labels.npy")
    lb = np.load(cohort / "Lobe-level-labels.npy")
    assert sl.shape == (4, 200) and lb.shape == (4, 200, 5) and len(LOBES) == 5
    np.testing.assert_array_equal(lb.max(axis=2) > 0, sl > 0)
    manifest = list(csv.DictReader((cohort / "cohort.csv").open()))
    assert len(manifest) == 6
    for r in manifest:
        n = int(r["n_slices"])
        if r["label_index"]:
            row = sl[int(r["label_index"])]
            assert row[n:].sum() == 0 and row.sum() == int(r["infected_slices"]) > 0
        assert (cohort / "masks" / f"{r['patient']}_lung.nii.gz").exists()


def test_dicom_valid_sorted_and_masks_aligned(cohort: Path) -> None:
    import SimpleITK as sitk

    manifest = list(csv.DictReader((cohort / "cohort.csv").open()))
    uids: set[str] = set()
    for r in manifest:
        files = sorted((cohort / r["folder"]).iterdir())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dss = [pydicom.dcmread(f) for f in files]
            axial = [d for d in dss if "LOCALIZER" not in d.ImageType]
            assert len(axial) == int(r["n_slices"])
            for d in axial[:3]:
                assert d.SOPClassUID == pydicom.uid.CTImageStorage and d.Modality == "CT"
                assert d.pixel_array.shape == (128, 128)
                assert "-600" in [str(v) for v in d.WindowCenter]
        for d in dss:
            assert d.SOPInstanceUID not in uids
            uids.add(d.SOPInstanceUID)
        axial.sort(key=lambda d: -float(d.ImagePositionPatient[2]))
        assert [int(d.InstanceNumber) for d in axial] == list(range(1, len(axial) + 1))
        img = sitk.ReadImage(str(cohort / "masks" / f"{r['patient']}_lung.nii.gz"))
        assert img.GetSize() == (128, 128, len(axial))
        assert img.GetOrigin() == pytest.approx([float(v) for v in axial[0].ImagePositionPatient], abs=1e-3)
        assert img.GetSpacing()[0] == pytest.approx(float(axial[0].PixelSpacing[0]), abs=1e-5)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = generate_cohort(tmp_path / "a", patients=2, mix=["cap", "covid19"], seed=4)
    b = generate_cohort(tmp_path / "b", patients=2, mix=["cap", "covid19"], seed=4)
    assert _digest(a) == _digest(b)


def test_bad_arguments(tmp_path: Path) -> None:
    assert class_counts(10, (0.3, 0.2, 0.5)) == {"normal": 3, "cap": 2, "covid19": 5}
    assert class_counts(3, ["normal"]) == {"normal": 3, "cap": 0, "covid19": 0}
    with pytest.raises(ConfigError):
        class_counts(3, ["flu"])
    with pytest.raises(ConfigError):
        generate_cohort(tmp_path / "x", patients=1, site="nowhere")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        generate_cohort(tmp_path / "full", patients=1)


def test_ingestion_reads_what_we_write(cohort: Path) -> None:
    io = pytest.importorskip("covidct.io")
    for r in csv.DictReader((cohort / "cohort.csv").open()):
        vol = io.load_study(cohort / r["folder"], workers=1)  # localizers in the folder must be skipped
        p = generate_patient(r["class"], seed=int(r["seed"]))
        assert vol.hu.shape == p.hu.shape
        inside = p.hu > -1500  # outside the reconstruction circle some scanners store padding
        np.testing.assert_array_equal(np.asarray(vol.hu)[inside], p.hu[inside])
        assert vol.spacing == pytest.approx(p.spacing, abs=1e-3)


def test_cli_writes_a_cohort(tmp_path: Path) -> None:
    from covidct.cli.main import main

    out = tmp_path / "cli"
    rc = main(
        [
            "synth",
            "-o",
            str(out),
            "--patients",
            "2",
            "--classes",
            "normal",
            "--size",
            "small",
            "--seed",
            "1",
            "--site",
            "ge-lightspeed",
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader((out / "cohort.csv").open()))
    assert [r["class"] for r in rows] == ["normal", "normal"] and {r["site"] for r in rows} == {
        "ge-lightspeed"
    }
    assert (out / "Index.csv").read_bytes() == b"Label Index,Diagnosis,Relative Path,Folder/ID"
    assert np.load(out / "Slice-level-labels.npy").shape == (0, 200)
    assert main(["synth", "-o", str(out), "--patients", "1"]) != 0  # not empty, no --overwrite
    assert main(["synth", "-o", str(tmp_path / "y"), "--patients", "1", "--mix", "a,b"]) != 0


def _dice_by_class(cohort: Path) -> dict[str, list[float]]:
    """Dice (both lungs together) of the classical segmentation against the ground truth, per class."""
    seg_mod = pytest.importorskip("covidct.segment", reason="covidct.segment not written yet")
    import SimpleITK as sitk

    from covidct.io import load_study
    from covidct.segment.quality import dice

    seg = seg_mod.get_segmenter("classical")
    scores: dict[str, list[float]] = {}
    for r in csv.DictReader((cohort / "cohort.csv").open()):
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / "masks" / f"{r['patient']}_lung.nii.gz")))
        mask = seg.apply(load_study(cohort / r["folder"], workers=1))
        scores.setdefault(r["class"], []).append(dice(mask > 0, gt > 0))
    return scores


def _assert_quality_bar(scores: dict[str, list[float]]) -> None:
    """Issue 3's bar: Dice >= 0.95 for every class (class mean), and no patient far below it.

    Measured (segmentation engineer; cohorts read back from DICOM, segmented at full resolution, commit
    31d6aee): 9-patient cohorts of seeds 3 and 7, class means normal 0.996/0.993, CAP 0.980/0.980, COVID-19
    0.988/0.971, patients 0.955-0.997. The 6-patient cohorts of these tests: seed 3 CAP 0.955/0.971, seed 7
    CAP 0.942/0.959 (mean 0.9505: the thinnest margin), COVID-19 0.955/0.990, normal >= 0.995. The lowest are
    a COVID-19 patient with dense lesions on the diaphragm and CAP consolidation that reaches the lung base.
    """
    assert set(scores) == {"normal", "cap", "covid19"}, scores
    for cls, values in scores.items():
        assert np.mean(values) >= 0.95, (cls, scores)
    assert min(v for vals in scores.values() for v in vals) >= 0.93, scores


def test_classical_segmentation_reaches_dice_095(cohort: Path) -> None:
    """Quality bar on a small cohort read back from DICOM (128 x 128 slices, segmented at full resolution)."""
    _assert_quality_bar(_dice_by_class(cohort))


def test_classical_segmentation_reaches_dice_095_second_seed(tmp_path: Path) -> None:
    """The same bar on a cohort of another seed, so that it does not hold by the luck of one draw."""
    other = generate_cohort(tmp_path / "c7", patients=6, mix=(1, 1, 1), seed=7)
    _assert_quality_bar(_dice_by_class(other))


def test_rle_fallback_without_gdcm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from covidct.data.synth import dicom_writer
    from covidct.data.synth.scanner import to_stored

    monkeypatch.setattr(dicom_writer, "have_jpeg_lossless_encoder", lambda: False)
    p = generate_patient("normal", seed=0, site="siemens-scope")
    assert p.settings.compression == "jpeg-lossless"
    stored = to_stored(p.hu[:3], p.settings)
    paths = dicom_writer.write_series(
        tmp_path,
        stored,
        p.settings,
        origin_xy=(0.0, 0.0),
        z_positions=p.z_positions[:3],
        seed_key="k",
        patient_id="X",
        rng=np.random.default_rng(0),
    )
    for path, frame in zip(paths, stored, strict=True):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
        np.testing.assert_array_equal(ds.pixel_array, frame)


def test_jpeg_lossless_roundtrip(tmp_path: Path) -> None:
    pytest.importorskip("gdcm")
    from covidct.data.synth import dicom_writer
    from covidct.data.synth.scanner import to_stored

    p = generate_patient("cap", seed=1, site="siemens-scope")
    stored = to_stored(p.hu[:2], p.settings)
    paths = dicom_writer.write_series(
        tmp_path,
        stored,
        p.settings,
        origin_xy=(0.0, 0.0),
        z_positions=p.z_positions[:2],
        seed_key="k",
        patient_id="X",
        rng=np.random.default_rng(0),
    )
    for path, frame in zip(paths, stored, strict=True):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
        np.testing.assert_array_equal(ds.pixel_array, frame)


@pytest.mark.slow
def test_classical_segmentation_dice_full_size() -> None:
    """The quality bar at the resolution the classical segmenter is made for (512 x 512)."""
    seg_mod = pytest.importorskip("covidct.segment", reason="covidct.segment not written yet")
    from covidct.segment.quality import dice

    seg = seg_mod.get_segmenter("classical")
    for cls, seed in (("normal", 1), ("covid19", 2)):
        p = generate_patient(cls, seed=seed, size="full", n_slices=100)
        assert p.hu.shape == (100, 512, 512)
        assert dice(seg.apply(p.volume()) > 0, p.lung_mask > 0) >= 0.95


def test_registry_lists_every_scanner_site() -> None:
    from covidct.data.synth.scanner import SITES
    from covidct.registry import SYNTH_SITES

    assert tuple(SITES) == SYNTH_SITES
