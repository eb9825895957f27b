"""A synthetic cohort on disk in the COVID-CT-MD layout, with ground truth.

``generate_cohort(out, patients=12, mix=(0.3, 0.2, 0.5))`` writes::

    out/COVID-19 subjects/syn-P001/*.dcm  one folder of DICOM files per patient (file names not in slice order)
    out/CAP subjects/syn-cap001/...
    out/Normal subjects/syn-normal001/...
    out/Index.csv                         Label Index,Diagnosis,Relative Path,Folder/ID (COVID-19 then CAP rows,
                                          CRLF, no newline after the last row, as in the real file)
    out/Slice-level-labels.npy            int32 (n_abnormal, 200): 1 = slice shows infection, superior first
    out/Lobe-level-labels.npy             float64 (n_abnormal, 200, 5): lobes LLL, LUL, RLL, RML, RUL
    out/masks/<id>_lung.nii.gz            ground-truth lung mask 0/1/2 (1 = patient's right)
    out/masks/<id>_lesion.nii.gz          ground-truth lesion mask 0/1
    out/cohort.csv                        patient, class, split suggestion, scanner settings, lesion burden

Label rows exist only for COVID-19 and CAP patients, in Index order (row = Label Index). Series longer than
200 slices keep their first 200 label columns. The whole cohort is written to a hidden, unique
``.<out>.*.partial`` folder beside ``out`` and renamed, so a failure never leaves half a cohort under ``out``. Same arguments -> same bytes.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covidct.data.synth.dicom_writer import write_series
from covidct.data.synth.phantom import SynthPatient, generate_patient
from covidct.data.synth.scanner import SITES, to_stored
from covidct.errors import ConfigError
from covidct.registry import CLASS_NAMES, class_index

log = logging.getLogger(__name__)

LABEL_COLUMNS = 200
FOLDERS = {"covid19": "COVID-19 subjects", "cap": "CAP subjects", "normal": "Normal subjects"}
INDEX_DIAGNOSIS = {"covid19": ("COVID-19", "./COVID-19/"), "cap": ("CAP", "./CAP/")}
#: Case names carry a ``syn-`` prefix so that a phantom never shares a name with a real case (COVID-CT-MD's own
#: P001, cap001, normal001) in one splits file, evaluation table or log.
ID_FORMAT = {"covid19": "syn-P{:03d}", "cap": "syn-cap{:03d}", "normal": "syn-normal{:03d}"}
COHORT_COLUMNS = (
    "patient",
    "class",
    "split",
    "folder",
    "seed",
    "site",
    "manufacturer",
    "model",
    "n_slices",
    "rows",
    "pixel_mm",
    "spacing_z_mm",
    "thickness_mm",
    "kernel",
    "noise_hu",
    "rescale_intercept",
    "signed",
    "bits_stored",
    "compression",
    "localizer",
    "pattern",
    "findings",
    "lesion_burden",
    "infected_slices",
    "label_index",
)


def class_counts(patients: int, mix: Sequence[float] | Sequence[str] | None) -> dict[str, int]:
    """Patients per class from fractions ``(normal, cap, covid19)`` or class names (split evenly).

    Largest-remainder rounding, so the counts add up to ``patients``.
    """
    if patients < 1:
        raise ConfigError(f"--patients must be at least 1, got {patients}")
    if mix is None:
        mix = (0.3, 0.2, 0.5)
    if len(mix) and all(isinstance(m, str) for m in mix):
        try:
            names = {CLASS_NAMES[class_index(str(m))] for m in mix}
        except ValueError as exc:
            raise ConfigError(f"{exc} (in --classes)") from None
        fractions = np.array([1.0 if c in names else 0.0 for c in CLASS_NAMES])
    else:
        fractions = np.asarray([float(m) for m in mix], dtype=float)
        if fractions.shape != (3,) or np.any(fractions < 0) or fractions.sum() <= 0:
            raise ConfigError(
                f"mix must be three non-negative fractions (normal, cap, covid19), got {list(mix)}"
            )
    fractions = fractions / fractions.sum()
    raw = fractions * patients
    counts = np.floor(raw).astype(int)
    for k in np.argsort(-(raw - counts), kind="stable")[: patients - counts.sum()]:
        counts[k] += 1
    return {c: int(n) for c, n in zip(CLASS_NAMES, counts, strict=True)}


def _split(i: int, n: int) -> str:
    """Deterministic split suggestion within a class: about 70 % train, 15 % val, 15 % test."""
    q = (i + 0.5) / n
    return "train" if q < 0.7 else "val" if q < 0.85 else "test"


def _write_patient(root: Path, pid: str, p: SynthPatient, rng: np.random.Generator, seed_key: str) -> str:
    folder_rel = f"{FOLDERS[p.cls]}/{pid}"
    s = p.settings
    stored = to_stored(p.hu, s)
    localizer = None
    if p.localizer is not None:
        localizer = to_stored(p.localizer.astype(np.int16)[None], s)[0]
    write_series(
        root / folder_rel,
        stored,
        s,
        origin_xy=(p.origin[0], p.origin[1]),
        z_positions=p.z_positions,
        seed_key=seed_key,
        patient_id=pid,
        rng=rng,
        localizer=localizer,
    )
    vol = p.volume()
    vol.save(root / "masks" / f"{pid}_lung.nii.gz", p.lung_mask)
    vol.save(root / "masks" / f"{pid}_lesion.nii.gz", p.lesion_mask)
    return folder_rel


def generate_cohort(
    out_dir: str | Path,
    *,
    patients: int,
    mix: Sequence[float] | Sequence[str] | None = None,
    seed: int = 0,
    size: str = "small",
    site: str = "default",
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``patients`` synthetic patients under ``out_dir`` (see the module docstring); returns ``out_dir``.

    ``mix``: fractions ``(normal, cap, covid19)`` or class names (default 0.3, 0.2, 0.5). ``out_dir`` must not
    exist or be empty unless ``overwrite``.
    """
    out = Path(out_dir)
    if site not in SITES:
        raise ConfigError(f"unknown scanner site {site!r}: use one of {', '.join(SITES)}")
    if size not in ("small", "full"):
        raise ConfigError(f"unknown size {size!r}: use 'small' or 'full'")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty: choose a new folder or pass overwrite")
    counts = class_counts(patients, mix)
    out.parent.mkdir(parents=True, exist_ok=True)  # a unique staging folder: concurrent runs never share it
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    order = [c for c in ("covid19", "cap", "normal") for _ in range(counts[c])]
    rows: list[dict[str, object]] = []
    index_rows: list[str] = []
    slice_rows: list[np.ndarray] = []
    lobe_rows: list[np.ndarray] = []
    seeds = np.random.SeedSequence(int(seed)).generate_state(len(order) + 1, dtype=np.uint32)
    from tqdm import tqdm

    bar = tqdm(
        total=len(order),
        desc="synth",
        unit="patient",
        file=sys.stderr,
        disable=not progress or not sys.stderr.isatty(),
    )
    numbers = dict.fromkeys(CLASS_NAMES, 0)
    try:
        for i, cls in enumerate(order):
            numbers[cls] += 1
            pid = ID_FORMAT[cls].format(numbers[cls])
            pseed = int(seeds[i])
            p = generate_patient(cls, seed=pseed, size=size, site=site)
            rng = np.random.default_rng(np.random.SeedSequence([pseed, 11]))
            folder = _write_patient(tmp, pid, p, rng, f"covidct-synth/{seed}/{pid}/{pseed}")
            label_index: object = ""
            if cls in INDEX_DIAGNOSIS:
                label_index = len(index_rows)
                diag, rel = INDEX_DIAGNOSIS[cls]
                index_rows.append(f"{label_index},{diag},{rel},{pid}")
                sl = np.zeros(LABEL_COLUMNS, dtype=np.int32)
                lb = np.zeros((LABEL_COLUMNS, 5), dtype=np.float64)
                n = min(len(p.slice_labels), LABEL_COLUMNS)
                sl[:n] = p.slice_labels[:n]
                lb[:n] = p.lobe_labels[:n]
                slice_rows.append(sl)
                lobe_rows.append(lb)
            s = p.settings
            rows.append(
                {
                    "patient": pid,
                    "class": cls,
                    "split": _split(numbers[cls] - 1, counts[cls]),
                    "folder": folder,
                    "seed": pseed,
                    "site": s.site,
                    "manufacturer": s.manufacturer,
                    "model": s.model,
                    "n_slices": s.n_slices,
                    "rows": s.size,
                    "pixel_mm": f"{s.pixel_mm:.4f}",
                    "spacing_z_mm": f"{s.spacing_z_mm:.4f}",
                    "thickness_mm": f"{s.thickness_mm:g}",
                    "kernel": s.kernel,
                    "noise_hu": f"{s.noise_hu:.1f}",
                    "rescale_intercept": s.intercept,
                    "signed": int(s.signed),
                    "bits_stored": s.bits_stored,
                    "compression": s.compression,
                    "localizer": int(p.localizer is not None),
                    "pattern": p.pattern,
                    "findings": ";".join(p.findings),
                    "lesion_burden": f"{p.lesion_burden:.5f}",
                    "infected_slices": int(p.slice_labels.sum()),
                    "label_index": label_index,
                }
            )
            bar.update(1)
        bar.close()
        (tmp / "Index.csv").write_bytes(
            "\r\n".join(["Label Index,Diagnosis,Relative Path,Folder/ID", *index_rows]).encode()
        )
        np.save(
            tmp / "Slice-level-labels.npy",
            np.stack(slice_rows) if slice_rows else np.zeros((0, 200), np.int32),
        )
        np.save(
            tmp / "Lobe-level-labels.npy",
            np.stack(lobe_rows) if lobe_rows else np.zeros((0, 200, 5), np.float64),
        )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(COHORT_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "cohort.csv").write_text(buf.getvalue())
    except BaseException:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    log.info("wrote %d synthetic patients to %s", len(order), out)
    return out
