"""The dispatcher: version, help for every command, user errors as one line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidct import __version__
from covidct.cli.main import COMMANDS, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"covidct {__version__}"


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert f"covidct {name}" in capsys.readouterr().out


def test_user_error_is_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_study"
    code = main(["info", str(missing)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and str(missing) in err[0] and "Traceback" not in err[0]


def test_python_m_entry_point() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "covidct", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and __version__ in done.stdout


def test_building_the_parser_imports_no_heavy_library() -> None:
    """``covidct --help`` must stay fast: numpy, torch, pydicom and the readers load only when a command runs."""
    import subprocess
    import sys

    code = (
        "import sys, covidct.cli.main as m; m.build_parser(); "
        "print(','.join(n for n in ('numpy', 'torch', 'pydicom', 'covidct.io', 'SimpleITK') if n in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "", f"imported while building the parser: {proc.stdout.strip()}"


@pytest.mark.parametrize("where", ["under_a_file", "a_folder"])
def test_segment_unwritable_output_fails_before_loading(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad ``-o`` is a one-line ConfigError before the study is read (was a FileExistsError at the end)."""
    import covidct.io

    def no_load(*_a: object, **_k: object) -> None:
        raise AssertionError("load_study called although the output cannot be written")

    monkeypatch.setattr(covidct.io, "load_study", no_load)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "mask.nii.gz" if where == "under_a_file" else tmp_path / "dir.nii.gz"
    if where == "a_folder":
        out.mkdir()
    code = main(["segment", str(tmp_path / "study"), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and "Traceback" not in err[0]
    assert ("is a file" in err[0]) if where == "under_a_file" else ("is a folder" in err[0])
