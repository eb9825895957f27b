"""The DICOM node's folder: received instances, results, and which series were answered by which model.

Layout under ``--store DIR``::

    incoming/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   received, written whole before the SCU hears success
    results/<SeriesInstanceUID>/<model-hash>/*.dcm      the SR, SEG and Encapsulated PDF made for it
    answered/<SeriesInstanceUID>.<model-hash>.json      written last, once the results were sent

A series with instances in ``incoming/`` and no ``answered`` record was received and not yet answered: a
restarted node processes it. Once answered, the series' instances are deleted (its results stay), and the
same series sent again is acknowledged but not diagnosed again for the same model.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from covidct._files import atomic_write_bytes, atomic_write_text

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def series_key(series_uid: str) -> str:
    """A short stable name of a series for logs (UIDs stay out of logs, like patient identifiers)."""
    return hashlib.sha256(series_uid.encode("ascii", "replace")).hexdigest()[:12]


def safe_uid(uid: str) -> str:
    """``uid`` when it is a well-formed DICOM UID (usable as a file name), else ValueError."""
    uid = str(uid).strip().rstrip("\0")
    if not uid or len(uid) > 64 or not _UID.match(uid):
        raise ValueError("not a valid DICOM UID")
    return uid


def _model_tag(model_hash: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "", model_hash.split(":")[-1])[:16] or "unknown"


class NodeStore:
    """Atomic storage of received instances and the record of answered series."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for sub in ("incoming", "results", "answered"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    # --- received instances -----------------------------------------------------------------------
    def series_dir(self, series_uid: str) -> Path:
        return self.root / "incoming" / safe_uid(series_uid)

    def store_instance(self, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Write one encoded instance; it appears under its final name whole or not at all."""
        folder = self.series_dir(series_uid)
        folder.mkdir(exist_ok=True, mode=0o700)
        return atomic_write_bytes(folder / f"{safe_uid(sop_uid)}.dcm", data)

    def instances(self, series_uid: str) -> list[Path]:
        folder = self.series_dir(series_uid)
        return sorted(folder.glob("*.dcm")) if folder.is_dir() else []

    def pending_series(self) -> list[str]:
        """Series with received instances (oldest first): the ones a restarted node still has to answer."""
        found = []
        for d in (self.root / "incoming").iterdir():
            if d.is_dir() and _UID.match(d.name) and any(d.glob("*.dcm")):
                found.append((d.stat().st_mtime, d.name))
        return [uid for _, uid in sorted(found)]

    def drop_instances(self, series_uid: str) -> None:
        shutil.rmtree(self.series_dir(series_uid), ignore_errors=True)

    # --- results and answers ----------------------------------------------------------------------
    def results_dir(self, series_uid: str, model_hash: str) -> Path:
        folder = self.root / "results" / safe_uid(series_uid) / _model_tag(model_hash)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder

    def _answer_path(self, series_uid: str, model_hash: str) -> Path:
        return self.root / "answered" / f"{safe_uid(series_uid)}.{_model_tag(model_hash)}.json"

    def answered(self, series_uid: str, model_hash: str) -> dict[str, Any] | None:
        """The record of an answered series, or None."""
        path = self._answer_path(series_uid, model_hash)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def mark_answered(self, series_uid: str, model_hash: str, record: dict[str, Any]) -> None:
        doc = {"answered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
        atomic_write_text(self._answer_path(series_uid, model_hash), json.dumps(doc, indent=1))
