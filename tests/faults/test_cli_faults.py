"""Issue 12, item 5: the CLI never answers with a traceback.

An ``-o`` that cannot be written is refused in one line before any work; a U-Net on a missing CUDA device is
one line; Ctrl-C during ``diagnose`` prints one "interrupted" line (exit 130), not a traceback per decoding
worker.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from covidct.cli.main import main

UNWRITABLE = {
    "under /proc": Path("/proc/covidct-no-such/out"),
    "in /sys (permission denied even for root)": Path("/sys/covidct-out"),
}


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a study or loading a model fails the test: the refusal must come before any work."""
    import covidct.diagnose
    import covidct.io

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("work started although the output cannot be written")

    monkeypatch.setattr(covidct.io, "load_study", refuse)
    monkeypatch.setattr(covidct.diagnose, "Diagnoser", refuse)


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("where", list(UNWRITABLE))
def test_unwritable_output_is_one_line_before_any_work(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: None
) -> None:
    out = UNWRITABLE[where]
    study = str(tmp_path / "study")
    assert main(["segment", study, "-o", str(out / "mask.nii.gz")]) == 2
    line = _one_line(capsys)
    assert "cannot write" in line and "choose a folder you can write to" in line
    assert main(["segment", study, "-o", str(tmp_path / "m.nii.gz"), "--preview", str(out / "p.png")]) == 2
    assert "preview" in _one_line(capsys)
    assert main(["diagnose", study, "--model", str(tmp_path), "-o", str(out)]) == 2
    assert "cannot write" in _one_line(capsys)
    assert main(["convert", study, "-o", str(out)]) == 2
    assert "cannot write" in _one_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: None
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["segment", str(tmp_path), "-o", str(locked / "mask.nii.gz")]) == 2
        assert "Permission denied" in _one_line(capsys)
        assert main(["diagnose", str(tmp_path), "-o", str(locked / "out")]) == 2
        assert "Permission denied" in _one_line(capsys)
    finally:
        locked.chmod(0o755)


def test_a_write_that_fails_later_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Space running out mid-run (checked up front, it was fine) gives one line naming the file."""
    import errno

    import covidct.cli.info

    def full(_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json"))

    monkeypatch.setattr(covidct.cli.info, "run", full)
    assert main(["info", str(tmp_path)]) == 1
    line = _one_line(capsys)
    assert "No space left on device" in line and "x.json" in line


def test_unet_on_cuda_without_cuda_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: None
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    args = ["segment", str(tmp_path), "-o", str(tmp_path / "m.nii.gz"), "--method", "unet"]
    assert main([*args, "--model", str(tmp_path / "unet"), "--device", "cuda"]) == 2
    line = _one_line(capsys)
    assert "CUDA is not available" in line and "--device cpu" in line


# --- Ctrl-C -------------------------------------------------------------------------------------------------
#: Loaded by every Python process of the run (parent, forkserver, workers) through PYTHONPATH. "busy": decoding a
#: file takes 0.2 s and the first decode touches the marker, so Ctrl-C reaches workers at work. "idle": reading
#: the study touches the marker afterwards and the parent then works for a minute (as when classifying), so
#: Ctrl-C reaches workers waiting for work.
SLOW = """
import os
if os.environ.get("COVIDCT_TEST_PHASE") == "busy":
    import time
    import covidct.io.dicom as _d
    _decode = _d.decode_group
    def decode_group(*a, **k):
        open(os.environ["COVIDCT_TEST_MARKER"], "a").close()
        time.sleep(0.2)
        return _decode(*a, **k)
    _d.decode_group = decode_group
if os.environ.get("COVIDCT_TEST_PHASE") == "idle":
    import time
    import covidct.io.loader as _l
    _read = _l.Study.read
    def read(*a, **k):
        out = _read(*a, **k)
        open(os.environ["COVIDCT_TEST_MARKER"], "a").close()
        time.sleep(60)
        return out
    _l.Study.read = read
"""


def _series(folder: Path, dicom_writer: SimpleNamespace, n: int) -> Path:
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    hu = dicom_writer.phantom(n, 32, 32)
    series, study = generate_uid(), generate_uid()
    for k in range(n):
        dicom_writer.write_slice(
            folder / f"IM{k:04d}.dcm", hu[k], ipp=(0, 0, -2.0 * k), series_uid=series, study_uid=study,
            instance=k + 1,
        )  # fmt: skip
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["idle", "busy", "busy, two studies"])
def test_ctrl_c_during_diagnose_is_one_line(
    phase: str, tmp_path: Path, tiny_model_dir: Path, dicom_writer: SimpleNamespace
) -> None:
    studies = [str(_series(tmp_path / "study", dicom_writer, 80))]
    if phase.endswith("two studies"):  # the second is read in a thread while the first is diagnosed
        studies.append(str(_series(tmp_path / "study2", dicom_writer, 80)))
        phase = "busy"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SLOW))
    marker = tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=str(site), COVIDCT_TEST_PHASE=phase, COVIDCT_TEST_MARKER=str(marker))
    cmd = [sys.executable, "-m", "covidct", "diagnose", *studies, "--model", str(tiny_model_dir)]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: Ctrl-C in a terminal reaches the whole group
    )
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"never reached the {phase} phase"
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        started = time.time()
        _, err = proc.communicate(timeout=60)
        stopped_in = time.time() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "covidct diagnose: interrupted"
    assert stopped_in < 10, f"stopping took {stopped_in:.1f} s"  # not after the rest was decoded serially


def _descendants(pid: int) -> set[int]:
    """Processes under ``pid`` (from /proc), at any depth."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigterm_during_diagnose_leaves_nothing_behind(
    tmp_path: Path, tiny_model_dir: Path, dicom_writer: SimpleNamespace, request: pytest.FixtureRequest
) -> None:
    """SIGTERM (to the command only, as a service manager sends it): one line, exit 143, no worker process
    left running, the extracted zip and multiprocessing's temporary folders removed."""
    import zipfile

    series = _series(tmp_path / "study", dicom_writer, 80)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, f.name)
    site = tmp_path / "site"
    site.mkdir()
    temp = Path(tempfile.mkdtemp(prefix="cvf-", dir="/tmp"))  # short: forkserver's socket lives there
    request.addfinalizer(lambda: shutil.rmtree(temp, ignore_errors=True))
    (site / "sitecustomize.py").write_text(textwrap.dedent(SLOW))
    marker = tmp_path / "marker"
    env = dict(
        os.environ,
        PYTHONPATH=str(site),
        COVIDCT_TEST_PHASE="idle",
        COVIDCT_TEST_MARKER=str(marker),
        TMPDIR=str(temp),
    )
    cmd = [sys.executable, "-m", "covidct", "diagnose", str(archive), "--model", str(tiny_model_dir)]
    log = tmp_path / "stderr.txt"  # a file, not a pipe: orphaned workers would hold a pipe open
    children: set[int] = set()
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [*cmd, "--workers", "2", "--no-progress"],
            stderr=stderr,
            text=True,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "never reached the idle phase"
        assert list(temp.glob("covidct-zip-*")), "the zip was not extracted into TMPDIR"
        children = _descendants(proc.pid)
        assert len(children) >= 3, "no decoding workers were started"  # forkserver, 2 workers (+ tracker)
        assert list(temp.glob("pymp-*"))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        err = log.read_text()
        assert proc.returncode == 143, err
        assert "Traceback" not in err and err.strip().splitlines()[-1] == "covidct diagnose: terminated"
        deadline = time.time() + 10
        while [p for p in children if _alive(p)] and time.time() < deadline:
            time.sleep(0.1)
        assert not [p for p in children if _alive(p)], "worker processes outlived the command"
    finally:
        for pid in [proc.pid, *children]:  # whatever this test started and is still there
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    left = sorted(p.name for p in temp.iterdir() if p.name.startswith(("covidct-", "pymp-", "tmp")))
    assert not left, f"left in the temp folder: {left}"
