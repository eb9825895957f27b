"""Ingestion of synthetic DICOM series: order, geometry, HU, series choice, damaged files, lazy decoding."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from covidct.errors import InputError
from covidct.io import dicom, load_study, open_study


def test_volume_matches_phantom_superior_first(tmp_path: Path, write_series, dw) -> None:
    hu = dw.phantom(6)
    write_series(tmp_path / "s", hu, z0=50.0, dz=2.5)
    vol = load_study(tmp_path / "s", workers=1)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.hu.dtype == np.int16
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert vol.slice_positions_mm == pytest.approx([50.0 - 2.5 * k for k in range(6)])
    assert vol.origin == pytest.approx((-10.0, -20.0, 50.0))
    np.testing.assert_allclose(vol.direction, np.diag([1.0, 1.0, -1.0]))
    assert [s.instance_number for s in vol.slices] == [1, 2, 3, 4, 5, 6]
    assert vol.meta.manufacturer == "SYNTH"
    assert vol.meta.warnings == []


def test_order_never_from_file_names_or_instance_numbers(tmp_path: Path, write_series, dw) -> None:
    hu = dw.phantom(7)
    names = [f"{n}.dcm" for n in (5, 1, 10, 3, 100, 2, 7)]  # a lexical or numeric name order is wrong
    paths = write_series(tmp_path / "s", hu, names=names)
    # and scramble the instance numbers too: position must win
    for p, inst in zip(paths, [3, 1, 7, 2, 5, 6, 4], strict=True):
        import pydicom

        ds = pydicom.dcmread(p)
        ds.InstanceNumber = inst
        ds.save_as(p)
    vol = load_study(tmp_path / "s", workers=1)
    np.testing.assert_array_equal(vol.hu, hu)


def test_shuffled_copy_gives_identical_volume(tmp_path: Path, write_series, dw) -> None:
    hu = dw.phantom(9)
    src = tmp_path / "orig"
    write_series(src, hu)
    files = sorted(src.iterdir())
    rng = random.Random(3)
    rng.shuffle(files)
    dst = tmp_path / "shuffled" / "deeper"
    dst.mkdir(parents=True)
    for i, f in enumerate(files):
        shutil.copy(f, dst / f"x{rng.randrange(10**6)}_{i}")
    a = load_study(src, workers=1)
    b = load_study(tmp_path / "shuffled", workers=1)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.slice_positions_mm == b.slice_positions_mm
    assert a.origin == b.origin


@pytest.mark.parametrize(("flip_x", "reverse_normal"), [(True, False), (False, True), (True, True)])
def test_flipped_orientation_gives_same_anatomy(
    tmp_path: Path, write_series, flip_x, reverse_normal, dw
) -> None:
    hu = dw.phantom(5)
    write_series(tmp_path / "ref", hu)
    write_series(tmp_path / "flip", hu, flip_x=flip_x, reverse_normal=reverse_normal)
    ref = load_study(tmp_path / "ref", workers=1)
    flipped = load_study(tmp_path / "flip", workers=1)
    np.testing.assert_array_equal(flipped.hu, ref.hu)
    assert flipped.origin == pytest.approx(ref.origin)
    np.testing.assert_allclose(flipped.direction, ref.direction)
    assert flipped.slice_positions_mm == pytest.approx(ref.slice_positions_mm)


def test_padding_and_out_of_field_become_air(tmp_path: Path, dw) -> None:
    uid, study = generate_uid(), generate_uid()
    hu = np.full((2, 8, 8), 40, dtype=np.int16)
    hu[:, 0, :] = -2000 - 1024  # GE: stored -2000 (the padding value) with intercept -1024
    hu[:, 1, :] = -3000  # out of field, no padding value
    for k in range(2):
        dw.write_slice(
            tmp_path / f"{k}.dcm", hu[k], ipp=(0, 0, -k), series_uid=uid, study_uid=study, padding=-2000
        )
    vol = load_study(tmp_path, workers=1)
    assert vol.hu.min() == -1024
    assert (vol.hu[:, 0, :] == -1024).all() and (vol.hu[:, 1, :] == -1024).all()
    assert (vol.hu[:, 2:, :] == 40).all()


def test_toshiba_style_intercept_zero_minus_2048(tmp_path: Path, dw) -> None:
    uid, study = generate_uid(), generate_uid()
    hu = np.full((8, 8), -2048, dtype=np.int16)
    hu[2:6, 2:6] = 30
    for k in range(3):
        dw.write_slice(
            tmp_path / f"{k}.dcm", hu, ipp=(0, 0, k), series_uid=uid, study_uid=study, intercept=0.0
        )
    vol = load_study(tmp_path, workers=1)
    assert vol.hu.min() == -1024 and vol.hu.max() == 30


def test_non_integer_rescale_gives_float(tmp_path: Path, dw) -> None:
    uid, study = generate_uid(), generate_uid()
    hu = np.full((8, 8), 100.0)
    for k in range(2):
        dw.write_slice(tmp_path / f"{k}.dcm", hu, ipp=(0, 0, k), series_uid=uid, study_uid=study, slope=0.5)
    vol = load_study(tmp_path, workers=1)
    assert vol.hu.dtype == np.float32
    assert np.allclose(vol.hu, 100.0)


def test_chooses_largest_axial_ct_series_and_reports_skipped(tmp_path: Path, write_series, dw) -> None:
    study = generate_uid()
    write_series(tmp_path / "a", dw.phantom(6), study_uid=study)
    write_series(tmp_path / "b", dw.phantom(3), study_uid=study, series_number=3)
    write_series(
        tmp_path / "loc", dw.phantom(9), study_uid=study, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")
    )
    write_series(
        tmp_path / "der", dw.phantom(9), study_uid=study, image_type=("DERIVED", "SECONDARY", "AXIAL")
    )
    write_series(tmp_path / "mr", dw.phantom(9), study_uid=study, modality="MR")
    uid = generate_uid()
    (tmp_path / "cor").mkdir()
    for k in range(9):  # a coronal reformat with more images than anything else
        dw.write_slice(
            tmp_path / "cor" / f"{k}.dcm",
            dw.phantom(1)[0],
            ipp=(0, k, 0),
            iop=(1, 0, 0, 0, 0, -1),
            series_uid=uid,
            study_uid=study,
        )
    vol = load_study(tmp_path, workers=1)
    assert vol.n_slices == 6
    reasons = {Path(s["path"]).parent.name: s["reason"] for s in vol.meta.skipped}
    assert "localizer" in reasons["loc"]
    assert "derived" in reasons["der"]
    assert "MR" in reasons["mr"] and "not CT" in reasons["mr"]
    assert "coronal" in reasons["cor"]
    assert "another series" in reasons["b"]
    assert len(vol.meta.skipped) == 3 + 9 + 9 + 9 + 9


def test_equal_series_tie_is_reported(tmp_path: Path, write_series, dw) -> None:
    study = generate_uid()  # two series of one study (of different studies they are refused: issue 12)
    write_series(tmp_path / "soft", dw.phantom(4), series_number=5, study_uid=study)
    write_series(tmp_path / "lung", dw.phantom(4) + 7, series_number=3, study_uid=study)
    vol = load_study(tmp_path, workers=1)
    np.testing.assert_array_equal(vol.hu, dw.phantom(4) + 7)  # series 3 wins the tie, deterministically
    assert any("2 axial CT series have 4 slices" in w for w in vol.meta.warnings)


def test_only_derived_series_is_used_with_a_warning(tmp_path: Path, write_series, dw) -> None:
    write_series(tmp_path, dw.phantom(4), image_type=("DERIVED", "SECONDARY", "AXIAL"))
    vol = load_study(tmp_path, workers=1)
    assert vol.n_slices == 4
    assert any("derived" in w for w in vol.meta.warnings)


def test_duplicate_positions_and_uneven_gaps_warn(tmp_path: Path, write_series, dw) -> None:
    hu = dw.phantom(6)
    paths = write_series(tmp_path / "hole", hu)
    paths[4].unlink()  # a missing slice: one gap of 4 mm among 2 mm gaps
    # issue 12: a slice missing inside the series is refused like one that fails to decode (it was kept
    # with a warning, and the volume had a hole); missing at the end, it only shortens the volume (below)
    with pytest.raises(InputError, match=r"IM0003\.dcm.*IM0005\.dcm.*would have a gap"):
        load_study(tmp_path / "hole", workers=1)
    paths = write_series(tmp_path / "s", hu)
    shutil.copy(paths[2], tmp_path / "s" / "dup.dcm")
    paths[5].unlink()
    ds = pydicom.dcmread(paths[3])  # uneven, but no slice missing: 2.6 and 1.4 mm steps among 2 mm ones
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], 94.0 - 0.6]
    ds.save_as(paths[3])
    vol = load_study(tmp_path / "s", workers=1)
    assert vol.n_slices == 5
    assert any("duplicat" in w for w in vol.meta.warnings)
    assert any("uneven slice gaps" in w for w in vol.meta.warnings)
    assert any("duplicate slice position" in s["reason"] for s in vol.meta.skipped)
    assert vol.spacing[0] == pytest.approx(2.0)


def test_truncated_and_garbage_files_are_skipped_with_warning(tmp_path: Path, write_series, dw) -> None:
    paths = write_series(tmp_path, dw.phantom(5))
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 200])
    (tmp_path / "junk.dcm").write_bytes(b"\x00garbage" * 50)
    # issue 12: truncated inside the series -> refused, naming the file (it was skipped, leaving a hole)
    with pytest.raises(InputError, match=r"IM0001\.dcm was left out \(truncated file.*would have a gap"):
        load_study(tmp_path, workers=1)
    paths[1].write_bytes(data)  # the same damage to the last slice only shortens the volume
    paths[4].write_bytes(paths[4].read_bytes()[:-200])
    vol = load_study(tmp_path, workers=1)
    assert vol.n_slices == 4
    skipped = {Path(s["path"]).name: s["reason"] for s in vol.meta.skipped}
    assert "truncated" in skipped[paths[4].name]
    assert "not a DICOM" in skipped["junk.dcm"]
    assert any("truncated" in w for w in vol.meta.warnings)


def test_broken_symlink_is_skipped_as_unreadable(tmp_path: Path, write_series, dw) -> None:
    """A dangling link in the folder is one more unreadable file (was a bare FileNotFoundError)."""
    write_series(tmp_path, dw.phantom(4))
    (tmp_path / "IM9999.dcm").symlink_to(tmp_path / "gone.dcm")
    vol = load_study(tmp_path, workers=1)
    assert vol.n_slices == 4
    skipped = {Path(s["path"]).name: s["reason"] for s in vol.meta.skipped}
    assert "unreadable file" in skipped["IM9999.dcm"]


def test_slice_location_fallback(tmp_path: Path, dw) -> None:
    uid, study = generate_uid(), generate_uid()
    hu = dw.phantom(3)
    for k, loc in enumerate([10.0, 8.0, 6.0]):
        dw.write_slice(
            tmp_path / f"f{2 - k}.dcm", hu[k], ipp=None, slice_location=loc, series_uid=uid, study_uid=study
        )
    vol = load_study(tmp_path, workers=1)
    np.testing.assert_array_equal(vol.hu, hu)
    assert any("SliceLocation" in w for w in vol.meta.warnings)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such file or folder"),
        (lambda p: p, "empty"),
        (lambda p: (p / "a.dcm").write_text("hello") and p, "no DICOM files"),
    ],
)
def test_bad_inputs_simple(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_study(make(tmp_path))


def test_folder_of_volume_files_only_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "ct.nii.gz").write_bytes(b"x")
    with pytest.raises(InputError, match=r"no DICOM files, only 1 file.*the volume file itself"):
        load_study(tmp_path)


def test_not_ct_is_refused(tmp_path: Path, write_series, dw) -> None:
    write_series(tmp_path, dw.phantom(4), modality="MR")
    with pytest.raises(InputError, match=r"not CT \(modality MR\)"):
        load_study(tmp_path)


def test_no_pixel_data_is_refused(tmp_path: Path, write_series, dw) -> None:
    write_series(tmp_path, dw.phantom(3), with_pixels=False)
    with pytest.raises(InputError, match="no image data"):
        load_study(tmp_path)


def test_single_slice_is_refused_unless_allowed(tmp_path: Path, write_series, dw) -> None:
    write_series(tmp_path, dw.phantom(1))
    with pytest.raises(InputError, match="a single slice where a volume"):
        load_study(tmp_path)
    assert load_study(tmp_path, min_slices=1).n_slices == 1


def test_open_study_reads_only_requested_slices(tmp_path: Path, write_series, monkeypatch, dw) -> None:
    hu = dw.phantom(8)
    write_series(tmp_path, hu)
    study = open_study(tmp_path, workers=1)
    assert study.n_slices == 8
    assert study.slice_positions_mm == pytest.approx([100.0 - 2 * k for k in range(8)])
    decoded: list[str] = []
    real = dicom.decode_group

    def spy(path, force, items):
        decoded.append(Path(path).name)
        return real(path, force, items)

    monkeypatch.setattr(dicom, "decode_group", spy)
    part = study.read([5, 2])
    assert sorted(decoded) == ["IM0002.dcm", "IM0005.dcm"]
    np.testing.assert_array_equal(part.hu, hu[[2, 5]])
    assert part.slice_positions_mm == pytest.approx([96.0, 90.0])
    assert part.meta.extra["indices"] == [2, 5]
    with pytest.raises(ValueError, match="slice indices"):
        study.read([8])


def test_slice_that_fails_to_decode_is_dropped_and_reported(
    tmp_path: Path, write_series, monkeypatch, dw
) -> None:
    hu = dw.phantom(5)
    write_series(tmp_path, hu)
    real = dicom.decode_group
    broken = {"name": "IM0003.dcm"}

    def flaky(path, force, items):
        if Path(path).name == broken["name"]:
            return ["cannot decode the pixel data (ValueError: broken)"] * len(items)
        return real(path, force, items)

    monkeypatch.setattr(dicom, "decode_group", flaky)
    # a slice inside the series: stacking the rest would shift every slice past the gap -> refused, named
    with pytest.raises(InputError, match=r"IM0003\.dcm.*gap"):
        load_study(tmp_path, workers=1)
    # the same failure on the last (most inferior) slice only shortens the volume: kept and reported
    broken["name"] = "IM0004.dcm"
    vol = load_study(tmp_path, workers=1)
    np.testing.assert_array_equal(vol.hu, hu[[0, 1, 2, 3]])
    assert vol.meta.extra["indices"] == [0, 1, 2, 3]
    assert any("IM0004.dcm" in w and "cannot decode" in w for w in vol.meta.warnings)
    # and on the first one
    broken["name"] = "IM0000.dcm"
    vol = load_study(tmp_path, workers=1)
    np.testing.assert_array_equal(vol.hu, hu[[1, 2, 3, 4]])
    assert vol.slices[0].position_mm == pytest.approx(98.0)
    monkeypatch.setattr(dicom, "decode_group", lambda p, f, items: ["broken"] * len(items))
    with pytest.raises(InputError, match="none of the requested slices could be decoded"):
        load_study(tmp_path, workers=1)


def test_parallel_equals_serial_and_load_equals_open_read(tmp_path: Path, write_series, dw) -> None:
    hu = dw.phantom(10)
    write_series(tmp_path, hu)
    serial = load_study(tmp_path, workers=1)
    parallel = load_study(tmp_path, workers=2)
    np.testing.assert_array_equal(serial.hu, parallel.hu)
    np.testing.assert_array_equal(open_study(tmp_path).read().hu, serial.hu)


def test_pool_is_kept_between_studies_and_headers_read_in_it(tmp_path: Path, write_series, dw) -> None:
    from covidct.io import loader

    hu = dw.phantom(6)
    write_series(tmp_path, hu)
    first = load_study(tmp_path, workers=2)  # headers and pixels both read by the 2-process pool
    pool = loader._POOLS[2]
    second = load_study(tmp_path, workers=2)
    assert loader._POOLS[2] is pool  # started once, used again
    np.testing.assert_array_equal(first.hu, hu)
    np.testing.assert_array_equal(second.hu, hu)
    assert [s.source for s in second.slices] == [s.source for s in load_study(tmp_path, workers=1).slices]


def test_broken_pool_falls_back_to_serial_and_is_dropped(
    tmp_path: Path, write_series, dw, monkeypatch, caplog
) -> None:
    from concurrent.futures.process import BrokenProcessPool

    from covidct.io import loader

    class Broken:
        shut = False

        def map(self, fn, chunks):
            raise BrokenProcessPool("a worker died")
            yield  # pragma: no cover - makes this a generator like Executor.map's result

        def shutdown(self, **kw) -> None:
            Broken.shut = True

    broken = Broken()
    monkeypatch.setitem(loader._POOLS, 3, broken)
    hu = dw.phantom(5)
    write_series(tmp_path, hu)
    with caplog.at_level(logging.WARNING):
        vol = load_study(tmp_path, workers=3)
    np.testing.assert_array_equal(vol.hu, hu)
    assert Broken.shut and loader._POOLS.get(3) is not broken
    assert "serially" in caplog.text


def test_no_worker_processes_means_serial(tmp_path: Path, write_series, dw, monkeypatch, caplog) -> None:
    """Where a pool cannot even be created (no /dev/shm in a sandbox) headers and pixels are read serially."""
    from covidct.io import loader

    def no_pool(n_workers, ctx):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(loader, "_shared_pool", no_pool)
    hu = dw.phantom(5)
    write_series(tmp_path, hu)
    with caplog.at_level(logging.WARNING):
        vol = load_study(tmp_path, workers=2)
    np.testing.assert_array_equal(vol.hu, hu)
    assert "reading headers serially" in caplog.text and "decoding serially" in caplog.text


def test_parallel_from_a_threaded_process(tmp_path: Path, write_series, dw) -> None:
    """With other threads alive the pool must not fork the threaded process (forkserver instead)."""
    from concurrent.futures import ThreadPoolExecutor

    hu = dw.phantom(4)
    write_series(tmp_path, hu)
    with ThreadPoolExecutor(2) as threads:
        vol = threads.submit(load_study, tmp_path, workers=2).result(timeout=120)
    np.testing.assert_array_equal(vol.hu, hu)


def test_phi_kept_apart_and_never_logged(tmp_path: Path, write_series, caplog, dw) -> None:
    paths = write_series(tmp_path, dw.phantom(4))
    paths[0].write_bytes(paths[0].read_bytes()[:-100])  # provoke a warning in the log
    with caplog.at_level(logging.DEBUG):
        vol = load_study(tmp_path, workers=1)
    assert vol.meta.phi["PatientName"] == "Doe^Jane"
    assert vol.meta.phi["PatientID"] == "SECRET-ID-42"
    assert caplog.records, "expected a warning about the truncated file"
    assert "SECRET-ID-42" not in caplog.text and "Doe^Jane" not in caplog.text
    assert "20200102" not in caplog.text


@pytest.mark.parametrize("guarded", [False, True])
def test_script_without_main_guard_decodes_quietly(tmp_path: Path, write_series, dw, guarded: bool) -> None:
    """A user script without ``if __name__ == "__main__":`` (workers would re-run it under forkserver/spawn)
    still loads the study, with no traceback from worker processes; a guarded script keeps the pool."""
    import subprocess
    import sys

    hu = dw.phantom(6)
    write_series(tmp_path / "series", hu)
    call = f"vol = load_study({str(tmp_path / 'series')!r}, workers=2)\nprint('SUM', int(vol.hu.sum()))\n"
    if guarded:
        call = 'if __name__ == "__main__":\n' + "".join(f"    {line}\n" for line in call.splitlines())
    script = tmp_path / "user_script.py"
    script.write_text(
        "import logging, threading\n"
        "from covidct.io import load_study\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "threading.Thread(target=threading.Event().wait, daemon=True).start()  # forces forkserver\n" + call
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"SUM {int(hu.astype(np.int64).sum())}" in done.stdout
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert ("decoding serially" in done.stderr) is (not guarded)


def test_stopped_pool_race_is_quiet_and_other_thread_errors_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython < 3.12 (gh-107219): stopping a busy pool can make its manager thread raise InvalidStateError;
    after stop_pools that one error is dropped, any other thread error still reaches the previous hook."""
    import threading
    from concurrent.futures import InvalidStateError

    from covidct.io import loader

    seen: list[type[BaseException]] = []
    monkeypatch.setattr(loader, "_STOPPED", threading.Event())
    monkeypatch.setattr(loader, "_POOLS", {})
    monkeypatch.setattr(loader, "_PREVIOUS_EXCEPTHOOK", threading.excepthook)  # restored after the test
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))

    def raise_in_thread(exc: BaseException) -> None:
        def target() -> None:
            raise exc

        t = threading.Thread(target=target)
        t.start()
        t.join()

    raise_in_thread(InvalidStateError("CANCELLED"))  # before any stop: a real error, reported
    assert seen == [InvalidStateError]
    loader.stop_pools()
    raise_in_thread(InvalidStateError("CANCELLED"))  # the known race after a stop: dropped
    raise_in_thread(ValueError("boom"))  # anything else: still reported
    assert seen == [InvalidStateError, ValueError]
