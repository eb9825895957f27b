"""``covidct info`` and ``covidct convert`` through the CLI dispatcher."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct.cli.main import main
from covidct.io import load_study
from covidct.preprocess import window_uint8
from covidct.registry import Window

INFO_FIELDS = {
    "n_slices",
    "shape",
    "spacing_mm",
    "slice_positions_mm",
    "hu_min",
    "hu_max",
    "modality",
    "manufacturer",
    "transfer_syntax",
    "is_chest_ct",
    "skipped",
    "warnings",
}


@pytest.fixture
def series_dir(tmp_path: Path, write_series, dw) -> Path:
    write_series(tmp_path / "study", dw.phantom(5), z0=20.0, dz=2.5)
    return tmp_path / "study"


def test_info_json_fields_and_no_phi(series_dir: Path, capsys) -> None:
    assert main(["info", str(series_dir), "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert set(doc) >= INFO_FIELDS
    assert doc["n_slices"] == 5 and doc["shape"] == [5, 24, 20]
    assert doc["spacing_mm"] == pytest.approx([2.5, 0.7, 0.8])
    assert doc["slice_positions_mm"] == pytest.approx([20.0, 17.5, 15.0, 12.5, 10.0])
    assert doc["hu_min"] == -1000 and doc["hu_max"] == -1000 + 400 + 3 * 23 + 19
    assert doc["modality"] == "CT" and doc["manufacturer"] == "SYNTH"
    assert doc["transfer_syntax"] == "1.2.840.10008.1.2.1"
    assert doc["is_chest_ct"] is False  # a gradient phantom has no lungs
    assert doc["skipped"] == [] and doc["warnings"] == []
    assert "SECRET-ID-42" not in out and "Doe^Jane" not in out and "20200102" not in out
    assert "phi" not in doc


def test_info_show_phi(series_dir: Path, capsys) -> None:
    assert main(["info", str(series_dir), "--json", "--show-phi"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["phi"]["PatientID"] == "SECRET-ID-42"
    assert doc["phi"]["PatientName"] == "Doe^Jane"


def test_info_text_output(series_dir: Path, capsys) -> None:
    assert main(["info", str(series_dir)]) == 0
    out = capsys.readouterr().out
    assert "slices:         5" in out and "+20.00 (superior)" in out
    assert "SECRET-ID-42" not in out


def test_info_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["info", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "covidct info: error:" in err and "no such file or folder" in err


def test_convert_png_names_keep_order(series_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "png"
    assert main(["convert", str(series_dir), "-o", str(out), "--window=-800,400"]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "slice_0000_pos+20.00.png",
        "slice_0001_pos+17.50.png",
        "slice_0002_pos+15.00.png",
        "slice_0003_pos+12.50.png",
        "slice_0004_pos+10.00.png",
    ]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging leftovers
    vol = load_study(series_dir)
    for i, name in enumerate(pngs):
        img = np.asarray(Image.open(out / name))
        np.testing.assert_array_equal(img, window_uint8(vol.hu[i], Window(-800, 400)))
    with open(out / "slices.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["png"] for r in rows] == pngs
    assert [float(r["position_mm"]) for r in rows] == pytest.approx(vol.slice_positions_mm)


def test_convert_nifti_round_trip(series_dir: Path, tmp_path: Path) -> None:
    assert main(["convert", str(series_dir), "-o", str(tmp_path / "n"), "--format", "nifti"]) == 0
    back = load_study(tmp_path / "n" / "study.nii.gz")
    original = load_study(series_dir)
    np.testing.assert_array_equal(back.hu, original.hu)
    assert back.origin == pytest.approx(original.origin)
    assert back.slice_positions_mm == pytest.approx(original.slice_positions_mm)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--window", "abc"], "bad window"), (["--window=-600,1200", "--format", "nifti"], "PNG output only")],
)
def test_convert_bad_options(series_dir: Path, tmp_path: Path, capsys, extra, message) -> None:
    assert main(["convert", str(series_dir), "-o", str(tmp_path / "x"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


@pytest.mark.shared_data
def test_info_json_on_lidc(more_ct: Path, capsys) -> None:
    assert main(["info", str(more_ct / "lidc-two-slices"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_slices"] == 2 and doc["is_chest_ct"] is True
    assert doc["hu_min"] == -1024
    assert any("no Modality" in w for w in doc["warnings"])
