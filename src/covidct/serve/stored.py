"""A finished study on disk: its arrays, its result, and no more of its upload than its documents need.

When a job is done the service keeps, in the job's folder:

- ``arrays/hu.npy`` (int16 when the HU values are whole numbers in range, as CT's are; else as computed),
  ``arrays/mask.npy`` and, with a lesion model, ``arrays/lesions.npy``;
- ``result.pkl``: the :class:`~covidct.diagnose.StudyResult` without its arrays (decision, probabilities,
  timing, slice sources, metadata), so a restarted service answers for the study without diagnosing it again;
- of the upload, only the DICOM headers (pixel data removed, same file names): the DICOM SEG needs the source
  instances' headers, never their pixels. Everything else of the upload (NIfTI, extracted zip members that are
  not slices of the study) is deleted.

A finished study thus costs about its volume once on disk (int16) instead of about four times its upload, and
nothing in memory: the arrays are :class:`StoredArray` objects that map the file only for the length of one
read, so viewing slices of many studies leaves the service's resident memory flat (memory-mapped results
kept mapped grew it by the size of every slice ever shown).

``result.pkl`` is written and read only by the service, in its own 0700 job folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from covidct import __version__
from covidct._files import atomic_write, atomic_write_bytes

if TYPE_CHECKING:
    from covidct.diagnose import StudyResult

log = logging.getLogger(__name__)

__all__ = ["RESULT_FILE", "StoredArray", "load_result", "store_result"]

#: The pickled result (arrays left out) of a finished study, in its job folder.
RESULT_FILE = "result.pkl"
#: Format of ``result.pkl``: ``{"format": RESULT_FORMAT, "covidct": version, "result": StudyResult}``. Raise it
#: when ``StudyResult`` changes in a way an older pickle would not satisfy: a restarted service then reports
#: such studies as unreadable ("upload it again") instead of serving a result of another shape.
RESULT_FORMAT = 1
_ARRAYS = "arrays"
_INT16 = np.iinfo(np.int16)


class StoredArray:
    """A read-only array kept in a ``.npy`` file and mapped only while one read copies out of it.

    Indexing returns a fresh in-memory array (``dtype`` as when stored, whatever the file holds); ``np.asarray``
    reads it whole. Any other ndarray attribute reads it whole first, so code written for arrays keeps working.
    """

    def __init__(self, path: Path, dtype: np.dtype[Any] | None = None) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:  # shape and dtype from the header, without mapping the data
            major, _ = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            shape, _, stored = read_header(fh)
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.stored_dtype = np.dtype(stored)
        self.dtype = np.dtype(dtype) if dtype is not None else self.stored_dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        data = np.load(self.path, mmap_mode="r")
        try:
            return np.array(data[key], dtype=self.dtype)
        finally:
            del data  # unmapped here, not whenever the garbage collector gets to it

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("path", "shape", "stored_dtype", "dtype"):
            raise AttributeError(name)
        return getattr(self[...], name)

    def __repr__(self) -> str:
        return f"StoredArray({self.path.name}, shape={self.shape}, dtype={self.dtype})"


def _save(folder: Path, name: str, array: Any, *, compact_hu: bool = False) -> StoredArray:
    arr = np.ascontiguousarray(np.asarray(array))
    dtype = arr.dtype
    if compact_hu and arr.dtype.kind == "f" and arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        if _INT16.min <= lo and hi <= _INT16.max and np.array_equal(arr, np.rint(arr)):
            arr = arr.astype(np.int16)  # lossless: CT values are whole HU
    atomic_write(folder / f"{name}.npy", lambda tmp: np.save(tmp, arr))
    return StoredArray(folder / f"{name}.npy", dtype)


def _dicom_sources(result: StudyResult) -> set[Path]:
    return {Path(s.source.rpartition("#")[0] or s.source) for s in result.volume.slices if s.source}


def _keep_headers_only(input_dir: Path, keep: set[Path]) -> None:
    """Delete every file of ``input_dir`` except the ``keep`` ones, which lose their pixel data."""
    import pydicom

    resolved = {p.resolve() for p in keep}
    for dirpath, _, names in os.walk(input_dir):
        for name in names:
            path = Path(dirpath) / name
            if path.resolve() not in resolved:
                path.unlink(missing_ok=True)
                continue
            header = pydicom.dcmread(path, stop_before_pixels=True)

            def write(tmp: Path, ds: pydicom.Dataset = header) -> None:
                ds.save_as(tmp, enforce_file_format=True)

            atomic_write(path, write)


def store_result(result: StudyResult, job_dir: Path) -> StudyResult:
    """Keep a finished study in ``job_dir`` (see the module's text) and return it with :class:`StoredArray`
    arrays. The upload is shrunk last, once the result is safely on disk."""
    folder = job_dir / _ARRAYS
    hu = _save(folder, "hu", result.volume.hu, compact_hu=True)
    mask = _save(folder, "mask", np.asarray(result.mask, dtype=np.uint8))
    lesions = _save(folder, "lesions", result.lesions) if result.lesions is not None else None
    # placeholders keep the dtype the pipeline gave, so reads give it back (whatever the file holds)
    empty_hu = np.zeros((0, 0, 0), dtype=hu.dtype)
    bare = dataclasses.replace(
        result,
        volume=dataclasses.replace(result.volume, hu=empty_hu),
        mask=np.zeros((0, 0, 0), dtype=np.uint8),
        lesions=None,
    )
    doc = {"format": RESULT_FORMAT, "covidct": __version__, "result": bare}
    atomic_write_bytes(job_dir / RESULT_FILE, pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL))
    input_dir = job_dir / "input"
    if input_dir.is_dir():
        sources = _dicom_sources(result)
        try:
            if sources:
                _keep_headers_only(input_dir, sources)
            else:
                shutil.rmtree(input_dir)
        except Exception as exc:  # the study stays served; only the disk saving is lost
            log.warning("could not shrink a finished upload (%s)", type(exc).__name__)
    return _with_arrays(bare, hu, mask, lesions)


def _with_arrays(
    bare: StudyResult, hu: StoredArray, mask: StoredArray, lesions: StoredArray | None
) -> StudyResult:
    volume = dataclasses.replace(bare.volume)
    volume.hu = cast(np.ndarray, hu)  # __post_init__ checked the placeholder; the stored array is 3-D too
    return dataclasses.replace(
        bare, volume=volume, mask=cast(np.ndarray, mask), lesions=cast("np.ndarray | None", lesions)
    )


def load_result(job_dir: Path) -> StudyResult | None:
    """The finished study kept in ``job_dir`` by :func:`store_result`; None when it is not there whole."""
    folder = job_dir / _ARRAYS
    try:
        doc = pickle.loads((job_dir / RESULT_FILE).read_bytes())
        if not isinstance(doc, dict) or doc.get("format") != RESULT_FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else "none"
            raise ValueError(f"result format {found}, this service reads {RESULT_FORMAT}")
        bare = doc["result"]
        hu = StoredArray(folder / "hu.npy", bare.volume.hu.dtype)
        mask = StoredArray(folder / "mask.npy")
        lesion_file = folder / "lesions.npy"
        lesions = StoredArray(lesion_file) if lesion_file.exists() else None
    except Exception as exc:  # missing, cut short or from another version: the caller decides
        log.debug("stored result not readable (%s)", type(exc).__name__)
        return None
    return _with_arrays(bare, hu, mask, lesions)
