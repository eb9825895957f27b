"""Atomic writes: whole files or nothing, unique temporary names under concurrency."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from covidct._files import atomic_write, atomic_write_bytes, atomic_write_text, full_suffix


def test_writes_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_failure_leaves_old_content_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_temp_name_keeps_the_format_suffix(tmp_path: Path) -> None:
    seen: list[str] = []
    atomic_write(tmp_path / "mask.nii.gz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert seen[0].endswith(".nii.gz") and seen[0].startswith(".mask.nii.gz.")
    assert full_suffix(Path("x.png")) == ".png"


def test_concurrent_writers_never_collide(tmp_path: Path) -> None:
    target = tmp_path / "report.pdf"
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            atomic_write_bytes(target, bytes([i]) * 10_000)
        except BaseException as exc:  # pragma: no cover - the failure this test looks for
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = target.read_bytes()
    assert len(data) == 10_000 and len(set(data)) == 1  # one writer's whole content


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os

    target = atomic_write_text(tmp_path / "a.json", "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
