"""Dataset readers: COVID-CT-MD layout (real files and built layouts), manifests, slice-image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct.data.covidctmd import find_class_folders, label_row, pick_label_file, read_covidctmd, read_index
from covidct.data.imagefolder import load_slice_image, read_image_folder
from covidct.data.manifest import read_manifest
from covidct.data.records import StudyRecord, slice_classes
from covidct.errors import InputError


@pytest.mark.shared_data
def test_real_covid_ct_md_labels(covid_ct_md: Path) -> None:
    recs = {r.case: r for r in read_covidctmd(covid_ct_md)}
    assert set(recs) == {"P001", "cap001", "normal001"}
    assert (recs["P001"].diagnosis, recs["cap001"].diagnosis, recs["normal001"].diagnosis) == (
        "covid19",
        "cap",
        "normal",
    )
    index = read_index(covid_ct_md / "Index.csv")
    assert index["cap001"] == (55, "cap") and index["p001"] == (0, "covid19")
    labels = np.load(covid_ct_md / "Slice-level-labels-updated-1.npy")
    known = [v[0] for v in index.values()]
    assert label_row(55, labels.shape[0], known) == 54 and label_row(0, labels.shape[0], known) == 0
    p001 = recs["P001"].slice_labels
    assert p001 is not None and np.flatnonzero(p001)[[0, -1]].tolist() == [26, 124] and p001.sum() == 80
    cap = recs["cap001"].slice_labels
    assert cap is not None and np.flatnonzero(cap)[[0, -1]].tolist() == [48, 138] and cap.sum() == 86
    assert recs["normal001"].slice_labels is None
    classes = slice_classes(recs["P001"], 148)
    assert classes is not None and classes.shape == (148,)
    assert set(classes[26:125].tolist()) <= {0, 2} and (classes == 2).sum() == 80 and classes[:26].max() == 0
    cap_classes = slice_classes(recs["cap001"], 168)
    assert cap_classes is not None and (cap_classes == 1).sum() == 86 and cap_classes[48] == 1
    normal = slice_classes(recs["normal001"], 154)
    assert normal is not None and normal.max() == 0
    assert pick_label_file(covid_ct_md) == covid_ct_md / "Slice-level-labels-updated-1.npy"


def test_label_row_gap_at_43() -> None:
    current = [i for i in range(80) if i != 43]
    assert [label_row(i, 79, current) for i in (0, 42, 44, 55, 79)] == [0, 42, 43, 54, 78]
    assert label_row(55, 80, current) == 55  # the old 80-row arrays
    assert label_row(50, 60, list(range(60))) == 50  # a contiguous index (synthetic cohorts)
    with pytest.raises(ValueError, match="not listed"):
        label_row(43, 79, current)


def _write_layout(root: Path, names: dict[str, str], *, updated: bool) -> None:
    for folder, case in names.items():
        (root / "release" / folder / case).mkdir(parents=True)
    rows = [
        "Label Index,Diagnosis,Relative Path,Folder/ID",
        "0,COVID-19,./COVID-19/,P001",
        "1,CAP,./CAP/,cap001",
    ]
    (root / "Index.csv").write_text("\r\n".join(rows))  # CRLF, no newline at the end
    old = np.zeros((2, 200), np.int32)
    old[0, 3:5] = 1
    np.save(root / "Slice-level-labels.npy", old)
    if updated:
        new = old.copy()
        new[0, 3:7] = 1
        np.save(root / "Slice-level-labels-updated-1.npy", new)


@pytest.mark.parametrize(
    "folders",
    [
        {"COVID-19 Cases": "P001", "Cap Cases": "cap001", "Normal Cases": "normal001"},
        {"COVID-19 subjects": "P001", "CAP subjects": "cap001", "Normal subjects": "normal001"},
    ],
)
def test_folder_spellings_and_updated_labels(tmp_path: Path, folders: dict[str, str]) -> None:
    _write_layout(tmp_path, folders, updated=True)
    found = find_class_folders(tmp_path)
    assert sorted(c for c, _ in found) == ["cap", "covid19", "normal"]
    assert {f.name for _, f in found} == set(folders)
    recs = {r.case: r for r in read_covidctmd(tmp_path)}
    assert {r.diagnosis for r in recs.values()} == {"covid19", "cap", "normal"}
    p = recs["P001"].slice_labels
    assert p is not None and np.flatnonzero(p).tolist() == [3, 4, 5, 6]  # the -updated-1 file wins


def test_old_labels_when_no_update_and_missing_folders(tmp_path: Path) -> None:
    _write_layout(tmp_path, {"COVID-19 Cases": "P001"}, updated=False)
    (rec,) = read_covidctmd(tmp_path)
    assert rec.slice_labels is not None and np.flatnonzero(rec.slice_labels).tolist() == [3, 4]
    with pytest.raises(InputError, match="no class folders"):
        read_covidctmd(tmp_path / "release" / "COVID-19 Cases")


def test_unlabelled_abnormal_study_is_left_out() -> None:
    rec = StudyRecord(case="x", path=Path("x"), diagnosis="covid19")
    assert not rec.has_slice_classes and slice_classes(rec, 10) is None


def test_manifest(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b.nii.gz").write_bytes(b"")
    np.save(tmp_path / "a_flags.npy", np.array([0, 1, 1, 0]))
    (tmp_path / "b_flags.txt").write_text("0 0 1\n")
    (tmp_path / "m.csv").write_text(
        "path,class,split,slice_labels\na,COVID-19,train,a_flags.npy\nb.nii.gz,cap,val,b_flags.txt\n"
    )
    a, b = read_manifest(tmp_path / "m.csv")
    assert (a.case, a.diagnosis, a.split) == ("a", "covid19", "train")
    assert a.slice_labels is not None and a.slice_labels.tolist() == [0, 1, 1, 0]
    assert (b.case, b.diagnosis, b.split) == ("b", "cap", "val")
    assert b.slice_labels is not None and b.slice_labels.tolist() == [0, 0, 1]
    (tmp_path / "bad.csv").write_text("path,class\na,flu\n")
    with pytest.raises(InputError, match=r"bad\.csv:2: unknown class"):
        read_manifest(tmp_path / "bad.csv")
    (tmp_path / "gone.csv").write_text("path,class\nmissing,normal\n")
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(tmp_path / "gone.csv")


def test_image_folder(tmp_path: Path) -> None:
    img = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    for cls, names in {"normal": ["N1_000.png", "N1_001.png"], "COVID-19": ["P7/010.png"]}.items():
        for n in names:
            p = tmp_path / cls / n
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(p)
    (tmp_path / "val.txt").write_text("P7\n")
    slices = read_image_folder(tmp_path)
    assert sorted((s.label, s.patient, s.split) for s in slices) == [
        (0, "normal/N1", None),
        (0, "normal/N1", None),
        (2, "covid19/P7", "val"),
    ]
    arr = load_slice_image(slices[0].path)
    assert arr.dtype == np.float32 and arr.shape == (64, 64) and abs(float(arr.max()) - 1.0) < 1e-6
    with pytest.raises(InputError, match="no PNG/JPG"):
        read_image_folder(tmp_path / "normal")


def test_index_class_mismatch_warning_names_the_case(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The Index.csv/folder disagreement says which case it is about (the warning used to leave it out)."""
    _write_layout(tmp_path, {"CAP Cases": "P001"}, updated=False)  # Index.csv: P001 is COVID-19
    with caplog.at_level("WARNING", logger="covidct.data.covidctmd"):
        (rec,) = read_covidctmd(tmp_path)
    assert rec.diagnosis == "cap"
    (msg,) = [r.getMessage() for r in caplog.records if "Index.csv says" in r.getMessage()]
    assert "P001" in msg and "covid19" in msg


def test_write_manifest_round_trip_with_split_weight_and_slice_labels(tmp_path: Path) -> None:
    from covidct.data.manifest import write_manifest

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    records = [
        StudyRecord("A1", tmp_path / "a", "covid19", slice_labels=np.array([0, 1, 1], np.uint8)),
        StudyRecord("B1", tmp_path / "b", "normal", split="val"),
    ]
    csv_path = write_manifest(records, tmp_path / "m" / "real.csv", split="train", weight=4)
    back = {r.case: r for r in read_manifest(csv_path)}
    assert back["A1"].split == back["B1"].split == "train"
    assert back["A1"].extra["weight"] == back["B1"].extra["weight"] == 4.0
    np.testing.assert_array_equal(back["A1"].slice_labels, [0, 1, 1])
    assert back["B1"].slice_labels is None and back["A1"].path == (tmp_path / "a").resolve()
    plain = read_manifest(write_manifest(records, tmp_path / "m2.csv"))
    assert [r.split for r in plain] == [None, "val"] and all("weight" not in r.extra for r in plain)


@pytest.mark.parametrize("weight", ["0", "-2", "heavy", "nan"])
def test_manifest_bad_weight_names_the_row(tmp_path: Path, weight: str) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "m.csv").write_text(f"path,class,weight\ns,normal,{weight}\n")
    with pytest.raises(InputError, match=r"m.csv:2: weight .* must be a positive number"):
        read_manifest(tmp_path / "m.csv")


def test_write_manifest_refuses_repeated_cases_and_bad_arguments(tmp_path: Path) -> None:
    from covidct.data.manifest import write_manifest

    rec = StudyRecord("A1", tmp_path, "normal")
    with pytest.raises(InputError, match="case names repeat"):
        write_manifest([rec, rec], tmp_path / "m.csv")
    with pytest.raises(InputError, match="split 'dev'"):
        write_manifest([rec], tmp_path / "m.csv", split="dev")
    with pytest.raises(InputError, match="weight 0"):
        write_manifest([rec], tmp_path / "m.csv", weight=0)
    assert not (tmp_path / "m.csv").exists()
