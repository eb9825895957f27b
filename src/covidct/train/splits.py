"""Patient-level splits: stratified by class, reproducible from a seed, written to disk."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covidct._files import atomic_write
from covidct.data.records import StudyRecord
from covidct.errors import ConfigError
from covidct.registry import CLASS_NAMES

SPLITS = ("train", "val", "test")


def study_key(record: StudyRecord) -> str:
    """The identity of a study across runs: its resolved path (or the reader's ``extra["key"]``)."""
    key = record.extra.get("key")
    return str(key) if key else str(Path(record.path).resolve())


def make_splits(
    records: Sequence[StudyRecord], *, seed: int, val_fraction: float = 0.2, test_fraction: float = 0.0
) -> dict[str, str]:
    """``{study key: split}``, by patient (study), stratified by class.

    Studies with a prescribed ``split`` keep it. Within each class the rest are shuffled with ``seed`` and
    ``round(n * fraction)`` go to val/test, with at least one validation study per class when the class has
    two or more free studies and ``val_fraction > 0``; train always keeps at least one study of each class.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for r in records:
        if r.split is not None:
            out[study_key(r)] = r.split
    for cls in CLASS_NAMES:
        keys = sorted(study_key(r) for r in records if r.diagnosis == cls and r.split is None)
        keys = list(dict.fromkeys(keys))
        order = [keys[i] for i in rng.permutation(len(keys))]
        n = len(order)
        n_test = round(n * test_fraction)
        n_val = round(n * val_fraction)
        if val_fraction > 0 and n >= 2:
            n_val = max(n_val, 1)
        while n_test + n_val > max(n - 1, 0) and (n_test or n_val):
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        for i, k in enumerate(order):
            out[k] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def write_splits(path: Path, records: Sequence[StudyRecord], splits: dict[str, str]) -> Path:
    """Write ``case,class,split,path`` rows (atomic)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["case", "class", "split", "path"])
    for r in sorted(records, key=study_key):
        w.writerow([r.case, r.diagnosis, splits[study_key(r)], study_key(r)])
    return atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue().encode("utf-8")))


def read_splits(path: Path) -> dict[str, str]:
    """``{study key: split}`` from a file written by :func:`write_splits`."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        out = {r["path"]: r["split"] for r in rows}
    except (OSError, KeyError) as exc:
        raise ConfigError(f"{path}: not a splits file (case,class,split,path): {exc}") from None
    bad = sorted({s for s in out.values() if s not in SPLITS})
    if bad:
        raise ConfigError(f"{path}: unknown split names {bad}; use {', '.join(SPLITS)}")
    return out


def assign(
    records: Sequence[StudyRecord], splits: dict[str, str], *, source: Path
) -> dict[str, list[StudyRecord]]:
    """Group records by split; a study missing from ``splits`` is an error naming ``source``."""
    groups: dict[str, list[StudyRecord]] = {s: [] for s in SPLITS}
    for r in records:
        split = splits.get(study_key(r))
        if split is None:
            raise ConfigError(f"{source}: study {r.case} ({r.path}) has no split; delete the file to redraw")
        groups[split].append(r)
    return groups
