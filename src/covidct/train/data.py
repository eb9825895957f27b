"""Training data: find the studies, decode each once into a preprocessing cache, serve slices.

The cache holds, per study and per preprocessing setting, the network inputs exactly as inference computes
them (:func:`covidct.preprocess.classifier_inputs` / :func:`~covidct.preprocess.segmenter_inputs`), stored as
float16 ``.npy`` (memory-mapped while training) with the slice classes or resized lung labels beside them. The
key is a SHA-256 of the study path, its size/mtime, the settings and :data:`CACHE_VERSION`, so changing a
setting or the data makes a new entry and epochs never decode DICOM again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from covidct._files import atomic_write
from covidct.data.records import StudyRecord, slice_classes
from covidct.errors import ConfigError, InputError
from covidct.registry import Window

log = logging.getLogger(__name__)

#: Bump when the preprocessing changes: old cache entries are then ignored.
CACHE_VERSION: Final[int] = 1


def read_sources(paths: Sequence[Path]) -> list[StudyRecord]:
    """Studies from every data source: a manifest ``.csv`` or a COVID-CT-MD-layout folder (incl. cohorts)."""
    from covidct.data.covidctmd import read_covidctmd
    from covidct.data.manifest import read_manifest

    records: list[StudyRecord] = []
    for p in paths:
        p = Path(p)
        if p.suffix.lower() == ".csv":
            records.extend(read_manifest(p))
        elif p.is_dir():
            records.extend(read_covidctmd(p))
            _attach_cohort_masks(p, records)
        else:
            raise InputError(f"training data {p} is neither a folder nor a manifest .csv")
    return records


def _attach_cohort_masks(root: Path, records: list[StudyRecord]) -> None:
    """Synthetic cohorts: the scanner site from ``cohort.csv`` (its split suggestion is not used)."""
    import csv

    table = root / "cohort.csv"
    if not table.is_file():
        return
    with table.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_case = {(r.get("patient") or r.get("case") or "").strip(): r for r in rows}
    for rec in records:
        row = by_case.get(rec.case)
        if row is not None and row.get("site"):
            rec.site = row["site"]


def pick_slices(n: int, max_slices: int | None) -> np.ndarray:
    """``max_slices`` evenly spaced slice indices of ``n`` (all when ``None`` or ``n <= max_slices``)."""
    if max_slices is None or n <= max_slices:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, max_slices)).astype(np.int64))


def _fingerprint(path: Path) -> dict[str, Any]:
    p = Path(path)
    st = p.stat()
    fp: dict[str, Any] = {"path": str(p.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file())
        fp["files"] = len(files)
        fp["bytes"] = sum(q.stat().st_size for q in files)
    return fp


def cache_key(record: StudyRecord, settings: dict[str, Any]) -> str:
    body = {"v": CACHE_VERSION, "study": _fingerprint(record.path), "settings": settings}
    if record.mask_path is not None and settings.get("mask") == "gt":
        body["mask"] = _fingerprint(record.mask_path)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, arr)

    atomic_write(path, write)


def resolve_mask_source(record: StudyRecord, mask_source: str) -> str:
    if mask_source == "gt" and record.mask_path is None:
        raise ConfigError(f"mask source 'gt' but study {record.case} has no ground-truth mask")
    if mask_source == "auto":
        return "gt" if record.mask_path is not None else "classical"
    return mask_source


def load_mask(record: StudyRecord, volume: Any, source: str, segmenter: Any | None) -> np.ndarray:
    """The lung mask (uint8 0/1/2, volume shape): the record's ground truth or the classical segmenter's."""
    if source == "gt":
        from covidct.io import load_study

        if record.mask_path is None:
            raise ConfigError(f"study {record.case} has no ground-truth mask")
        m = np.asarray(load_study(record.mask_path).hu)
        if m.shape != volume.shape:
            raise InputError(f"mask {record.mask_path} has shape {m.shape}, the study has {volume.shape}")
        return np.clip(np.rint(m), 0, 2).astype(np.uint8)
    if segmenter is None:
        from covidct.segment import get_segmenter

        segmenter = get_segmenter("classical")
    return np.asarray(segmenter.apply(volume), dtype=np.uint8)


@dataclass
class CachedStudy:
    """One study's preprocessed slices in the cache (memory-mapped)."""

    record: StudyRecord
    x: np.ndarray  # (n, S, S) float16
    y: np.ndarray  # classifier: (n,) int64 slice classes; segmenter: (n, S, S) uint8 labels
    indices: np.ndarray  # slice indices of the study the rows come from


class SegmenterSource:
    """Lazily built classical segmenter shared by all studies of a run (load once)."""

    def __init__(self) -> None:
        self._seg: Any | None = None

    def get(self) -> Any:
        if self._seg is None:
            from covidct.segment import get_segmenter

            self._seg = get_segmenter("classical")
        return self._seg


def prepare_study(
    record: StudyRecord,
    *,
    task: str,
    image_size: int,
    window: Window,
    mask_source: str,
    max_slices: int | None,
    cache_dir: Path,
    segmenters: SegmenterSource | None = None,
    weak: bool = False,
) -> CachedStudy | None:
    """Decode, mask and resize one study into the cache (or reuse the entry); ``None`` if it is unusable.

    ``task`` "classifier": inputs are lung-window, lung-only slices; targets slice classes (a study without
    slice classes, i.e. an abnormal study without slice labels, is skipped unless ``weak``: its targets are
    then the codes ``-(class + 1)`` of :mod:`covidct.train.weak`). Classifier targets are recomputed from the
    record on every call (slice labels are not part of the cache key). ``task`` "segmenter": inputs are
    segmenter-window slices; targets the lung labels resized with nearest neighbour.
    """
    from covidct.preprocess import classifier_inputs, resize_labels, segmenter_inputs

    if task == "classifier" and not record.has_slice_classes and not weak:
        return None
    source = resolve_mask_source(record, mask_source)
    settings = {
        "task": task,
        "size": image_size,
        "window": [window.level, window.width],
        "mask": source,
        "max_slices": max_slices,
    }
    key = cache_key(record, settings)
    cache_dir.mkdir(parents=True, exist_ok=True)
    xp, yp, ip = (cache_dir / f"{key}.{s}.npy" for s in ("x", "y", "idx"))
    if xp.is_file() and yp.is_file() and ip.is_file():
        idx = np.load(ip)
        y_cached = classifier_targets(record, idx) if task == "classifier" else np.load(yp)
        return CachedStudy(record, np.load(xp, mmap_mode="r"), y_cached, idx)
    from covidct.io import load_study

    volume = load_study(record.path)
    idx = pick_slices(volume.n_slices, max_slices)
    seg = segmenters.get() if segmenters is not None and source == "classical" else None
    mask = load_mask(record, volume, source, seg)
    if task == "classifier":
        x = classifier_inputs(volume, mask, indices=idx, image_size=image_size, window=window)[:, 0]
        y: np.ndarray = classifier_targets(record, idx)
    elif task == "segmenter":
        x = segmenter_inputs(volume, indices=idx, image_size=image_size, window=window)[:, 0]
        y = resize_labels(mask[idx], image_size).astype(np.uint8)
    else:
        raise ValueError(f"unknown task {task!r}")
    _save_npy(yp, y)
    _save_npy(ip, idx)
    _save_npy(xp, x.astype(np.float16))
    return CachedStudy(record, np.load(xp, mmap_mode="r"), y, idx)


def classifier_targets(record: StudyRecord, indices: np.ndarray) -> np.ndarray:
    """Slice classes of the study's rows ``indices``, or (no slice labels) the weak codes ``-(class + 1)``."""
    n = int(indices.max()) + 1 if indices.size else 0
    classes = slice_classes(record, n)
    if classes is None:
        return np.full(indices.size, -(record.label + 1), dtype=np.int64)
    return classes[indices]


class SliceDataset:
    """Map-style dataset over the slices of cached studies: item ``i`` -> ``(x (1,S,S) float32, target)``."""

    def __init__(self, studies: Sequence[CachedStudy]) -> None:
        self.studies = list(studies)
        self.index = np.array(
            [(s, j) for s, st in enumerate(self.studies) for j in range(st.x.shape[0])], dtype=np.int64
        ).reshape(-1, 2)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def targets(self) -> np.ndarray:
        """Slice classes of every item (classifier datasets)."""
        return np.concatenate([np.asarray(s.y) for s in self.studies]) if self.studies else np.zeros(0, int)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch

        s, j = self.index[i]
        st = self.studies[int(s)]
        x = torch.from_numpy(np.asarray(st.x[int(j)], dtype=np.float32))[None]
        y = st.y[int(j)]
        target = torch.from_numpy(np.asarray(y, dtype=np.int64)) if np.ndim(y) else torch.tensor(int(y))
        return x, target


def image_folder_studies(root: Path, image_size: int) -> list[CachedStudy]:
    """A folder of slice images as in-memory 'studies' (one per patient), resized to ``image_size``."""
    from covidct.data.imagefolder import load_slice_image, read_image_folder
    from covidct.preprocess import resize_images
    from covidct.registry import CLASS_NAMES

    slices = read_image_folder(root)
    by_patient: dict[str, list[Any]] = {}
    for s in slices:
        by_patient.setdefault(s.patient, []).append(s)
    out = []
    for patient, items in sorted(by_patient.items()):
        labels = np.array([it.label for it in items], dtype=np.int64)
        cls = CLASS_NAMES[int(labels.max())]
        x = np.stack([resize_images(load_slice_image(it.path)[None], image_size)[0] for it in items])
        rec = StudyRecord(case=patient, path=items[0].path.parent, diagnosis=cls, split=items[0].split)
        rec.extra["key"] = f"{root.resolve()}::{patient}"
        out.append(CachedStudy(rec, x.astype(np.float16), labels, np.arange(len(items))))
    return out


def is_lesion_folder(path: Path) -> bool:
    """A 2-D slice folder with lesion masks (``ROOT/Imgs`` + ``ROOT/GT``, the COVID-SemiSeg layout)."""
    return (Path(path) / "Imgs").is_dir() and (Path(path) / "GT").is_dir()


def lesion_folder_studies(root: Path, image_size: int, *, min_infected_px: int = 200) -> list[CachedStudy]:
    """A lesion folder of COVID-19 slices as in-memory 'studies' (one per patient of
    :func:`covidct.data.lesionfolder.patient_of`): a slice whose mask marks at least ``min_infected_px``
    pixels is an infected COVID-19 slice, any other a clean slice of a COVID-19 patient (normal), as the
    paper labels slices; inputs from :func:`~covidct.data.lesionfolder.classifier_inputs_from_image`."""
    from covidct.data.lesionfolder import lesion_folder_inputs, patient_of

    x, infected, names = lesion_folder_inputs(
        root, image_size=image_size, split="all", min_infected_px=min_infected_px
    )
    by_patient: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_patient.setdefault(patient_of(name), []).append(i)
    out = []
    for patient, rows in sorted(by_patient.items()):
        flags = infected[rows].astype(np.uint8)
        rec = StudyRecord(case=f"{Path(root).name}-{patient}", path=Path(root), diagnosis="covid19")
        rec.slice_labels = flags
        rec.extra["key"] = f"{Path(root).resolve()}::{patient}"
        y = np.where(flags > 0, 2, 0).astype(np.int64)
        out.append(CachedStudy(rec, x[rows, 0].astype(np.float16), y, np.arange(len(rows))))
    return out


def is_image_folder(path: Path) -> bool:
    """A folder whose class sub-folders hold PNG/JPG files directly or one level down."""
    from covidct.data.imagefolder import IMAGE_SUFFIXES, _class_of

    if not path.is_dir():
        return False
    for c in path.iterdir():
        if c.is_dir() and _class_of(c.name) is not None:
            for f in c.rglob("*"):
                return f.suffix.lower() in IMAGE_SUFFIXES or any(
                    g.suffix.lower() in IMAGE_SUFFIXES for g in f.iterdir() if f.is_dir()
                )
    return False
