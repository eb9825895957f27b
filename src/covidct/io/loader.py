"""The one entry point of ingestion: :func:`open_study` (headers only) and :func:`load_study` (pixels too).

Accepted inputs: a DICOM folder (searched recursively), a zip of one, a single DICOM file (an Enhanced
multi-frame CT, or one slice when ``min_slices=1``), or a NIfTI / NRRD / MHA volume. Every result is a
:class:`CTVolume` in HU, (z, y, x), slice 0 most superior, column 0 the patient's right.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import InvalidStateError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from covidct.errors import InputError
from covidct.io import dicom, dicom_headers
from covidct.io.formats import canonicalize, read_volume_image, safe_extract_zip, volume_format
from covidct.io.volume import CTVolume, SliceInfo, StudyMeta

log = logging.getLogger(__name__)

#: Below this many files a process pool costs more than it saves.
_PARALLEL_MIN_FILES = 24


def available_cpus() -> int:
    """CPU cores this process may run on (affinity-aware: a container's or ``taskset``'s limit), at least 1.

    The one core count of covidct: decoding workers here, inference threads in ``classify.backends``.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Decoding processes used when ``workers`` is None: the CPUs available, at most 4."""
    return min(4, available_cpus())


class Study:
    """An opened study: headers read, slices sorted, pixels not yet decoded.

    ``n_slices`` and ``slice_positions_mm`` (superior to inferior) describe the full series; ``read(indices)``
    decodes only the slices asked for. Keep the object alive while reading (an extracted zip lives as long).
    """

    def __init__(
        self,
        source: str,
        *,
        series: dicom_headers.Series | None = None,
        volume: CTVolume | None = None,
        workers: int | None = None,
        tmpdir: tempfile.TemporaryDirectory[str] | None = None,
        input_format: str = "dicom",
    ) -> None:
        if (series is None) == (volume is None):
            raise ValueError("Study needs exactly one of series or volume")
        self.source = source
        self.workers = workers
        self._series = series
        self._volume = volume
        self._tmpdir = tmpdir
        if series is not None:
            ts = series.meta["transfer_syntax"]
            extra: dict[str, Any] = {
                "transfer_syntax_name": _ts_name(ts),
                "slice_thickness_mm": series.meta.get("slice_thickness_mm"),
                "n_files": len({r.path for r in series.slices}),
            }
            if series.meta.get("series_choice") is not None:
                extra["series_choice"] = series.meta["series_choice"]
            self.meta = StudyMeta(
                modality=series.meta["modality"],
                manufacturer=series.meta["manufacturer"],
                transfer_syntax=ts,
                series_description=series.meta["series_description"],
                series_uid=series.meta["series_uid"],
                study_uid=series.meta["study_uid"],
                input_format=input_format,
                skipped=list(series.skipped),
                warnings=list(series.warnings),
                phi=dict(series.phi),
                extra=extra,
            )
        else:
            assert volume is not None  # for the type checker; guarded above
            self.meta = volume.meta

    @property
    def n_slices(self) -> int:
        if self._series is not None:
            return len(self._series.slices)
        assert self._volume is not None
        return self._volume.n_slices

    @property
    def slice_positions_mm(self) -> list[float]:
        if self._series is not None:
            return [r.position_mm for r in self._series.slices]
        assert self._volume is not None
        return self._volume.slice_positions_mm

    def close(self) -> None:
        """Remove the extracted archive, if any (also done when the object is collected)."""
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _indices(self, indices: Sequence[int] | None) -> list[int]:
        n = self.n_slices
        if indices is None:
            return list(range(n))
        out = sorted({int(i) for i in indices})
        if not out:
            raise ValueError("indices is empty: give at least one slice index")
        if out[0] < 0 or out[-1] >= n:
            raise ValueError(f"slice indices must lie in [0, {n}); got {out[0]}..{out[-1]}")
        return out

    def read(self, indices: Sequence[int] | None = None, *, progress: bool = False) -> CTVolume:
        """Decode the slices ``indices`` (all when None; sorted, superior first) into a :class:`CTVolume`."""
        idx = self._indices(indices)
        if self._volume is not None:
            vol = self._volume
            if len(idx) == vol.n_slices:
                return vol
            meta = _copy_meta(vol.meta)
            meta.extra["indices"] = idx
            origin = np.asarray(vol.origin) + vol.direction[:, 2] * vol.spacing[0] * idx[0]
            return CTVolume(
                vol.hu[idx].copy(), vol.spacing, tuple(origin), vol.direction.copy(),
                [vol.slices[i] for i in idx], meta,
            )  # fmt: skip
        assert self._series is not None
        return self._read_dicom(idx, progress)

    def _read_dicom(self, idx: list[int], progress: bool) -> CTVolume:
        series = self._series
        assert series is not None
        refs = [series.slices[i] for i in idx]
        arrays = _decode(refs, workers=self.workers, progress=progress)
        meta = _copy_meta(self.meta)
        keep = []
        kept_at: list[int] = []  # positions in refs of the decoded slices
        failed: list[tuple[int, str, str]] = []  # (position in refs, source, reason)
        for k, (ref, arr) in enumerate(zip(refs, arrays, strict=True)):
            if isinstance(arr, str):
                failed.append((k, ref.source, arr))
            elif arr.shape != (series.rows, series.cols):
                reason = f"image size {arr.shape} differs from the series' {(series.rows, series.cols)}"
                failed.append((k, ref.source, reason))
            else:
                keep.append((ref, arr))
                kept_at.append(k)
        if not keep:
            raise InputError(f"{self.source}: none of the requested slices could be decoded ({arrays[0]})")
        first_kept, last_kept = kept_at[0], kept_at[-1]
        for k, source, reason in failed:
            if first_kept < k < last_kept:  # stacking the rest would shift every slice past the gap
                raise InputError(
                    f"{self.source}: slice {source} inside the series could not be read ({reason}); the volume "
                    "would have a gap. Replace that file with an intact copy, or export the series again"
                )
            meta.warnings.append(f"skipped {source}: {reason}")
            meta.skipped.append({"path": source, "reason": reason})
            log.warning("skipped a slice at the end of the series: %s", reason)
        if len(keep) != self.n_slices:  # a subset, or slices lost to decoding errors: say which remain
            kept_ids = {id(r) for r, _ in keep}
            meta.extra["indices"] = [i for i, r in zip(idx, refs, strict=True) if id(r) in kept_ids]
        hu = np.stack([a for _, a in keep])
        first = keep[0][0]
        direction = np.stack([series.row_cosine, series.col_cosine, -series.normal], axis=1)
        origin = np.asarray(first.ipp if first.ipp is not None else series.normal * first.position_mm)
        hu, spacing, origin, direction = canonicalize(hu, series.spacing, origin, direction)
        slices = [SliceInfo(r.source, r.position_mm, r.instance_number) for r, _ in keep]
        return CTVolume(
            hu, spacing, (float(origin[0]), float(origin[1]), float(origin[2])), direction, slices, meta
        )


def _ts_name(uid: str) -> str:
    if not uid:
        return ""
    from pydicom.uid import UID

    return str(UID(uid).name)


def _copy_meta(meta: StudyMeta) -> StudyMeta:
    return StudyMeta(
        modality=meta.modality,
        manufacturer=meta.manufacturer,
        transfer_syntax=meta.transfer_syntax,
        series_description=meta.series_description,
        series_uid=meta.series_uid,
        study_uid=meta.study_uid,
        input_format=meta.input_format,
        skipped=list(meta.skipped),
        warnings=list(meta.warnings),
        phi=dict(meta.phi),
        extra=dict(meta.extra),
    )


def _pool_context() -> Any:
    """forkserver where it exists (workers forked from a small, clean server process: never a copy of this
    process, which may be large and threaded, e.g. holding torch, CUDA or a web server); spawn elsewhere."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["covidct.io.dicom"])
        return ctx
    return multiprocessing.get_context("spawn")


#: Decoding pools kept for the life of the process, one per worker count: starting a pool costs more than
#: decoding a study on a small machine, so a Diagnoser reading many studies starts it once.
_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.RLock()  # re-entrant: stop_pools may run in a signal handler of the holding thread
#: Set by :func:`stop_pools`: work cut short by it is not redone serially (a study read in another thread).
_STOPPED = threading.Event()


def _shared_pool(n_workers: int, ctx: Any) -> ProcessPoolExecutor:
    """The process's decoding pool of ``n_workers`` processes (started on first use)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(n_workers)
        if pool is None:
            pool = ProcessPoolExecutor(
                max_workers=n_workers,
                mp_context=ctx,
                initializer=dicom_headers.init_worker,
                initargs=(os.getpid(),),
            )
            _POOLS[n_workers] = pool
        return pool


def _quiet_stopped_pool_race(args: Any) -> None:
    """``threading.excepthook`` that drops CPython's known race in a stopped pool, and passes on the rest.

    Python before 3.12 (gh-107219) lets the executor's manager thread raise ``InvalidStateError`` when it
    marks a future as failed that was cancelled a moment before, which is exactly what stopping a busy pool
    does: the traceback would follow the one-line "interrupted" of the command line.
    """
    if _STOPPED.is_set() and args.exc_type is not None and issubclass(args.exc_type, InvalidStateError):
        log.debug("ignored %s in %s after the pools were stopped", args.exc_type.__name__, args.thread)
        return
    _PREVIOUS_EXCEPTHOOK(args)


_PREVIOUS_EXCEPTHOOK = threading.excepthook


def stop_pools() -> None:
    """Stop every decoding pool now: queued work is cancelled and the worker processes are terminated.

    For an interrupted run (Ctrl-C): without it, exiting waits for the workers to finish their chunks, and a
    study being read in another thread is read to the end. No pool starts afterwards in this process.
    """
    global _PREVIOUS_EXCEPTHOOK
    _STOPPED.set()
    if threading.excepthook is not _quiet_stopped_pool_race:
        _PREVIOUS_EXCEPTHOOK = threading.excepthook
        threading.excepthook = _quiet_stopped_pool_race
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        # CPython's executor keeps these here, and shutdown() forgets them: read them first
        processes = list(getattr(pool, "_processes", {}).values())
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        for proc in processes:
            proc.join(timeout=5)
        if manager is not None and manager is not threading.current_thread():
            # it notices the dead workers and closes its wake-up pipe; exiting before that races with
            # concurrent.futures' exit hook writing to the pipe ("Exception ignored ... send_bytes")
            manager.join(timeout=20)


def _drop_pool(n_workers: int, pool: ProcessPoolExecutor) -> None:
    """Forget a broken pool so that the next study starts a fresh one."""
    with _POOLS_LOCK:
        if _POOLS.get(n_workers) is pool:
            del _POOLS[n_workers]
    pool.shutdown(wait=False, cancel_futures=True)


def _main_reimport_safe(ctx: Any) -> bool:
    """May a ``ctx`` pool start here without re-running the user's script in every worker?

    forkserver and spawn workers re-import the ``__main__`` script (as ``__mp_main__``); a script that calls
    covidct at module level without an ``if __name__ == "__main__":`` guard would then run again in each
    worker, fail there and print tracebacks. fork never re-imports; nor is a ``-c`` command or an interactive
    session (no ``__main__.__file__``) re-run. Otherwise the script's source must mention the guard.
    """
    if ctx.get_start_method() == "fork":
        return True
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path:
        return True
    try:
        text = Path(path).read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return False
    return "__name__" in text and "__main__" in text


class _NoBar:
    """Stands in for a hidden progress bar."""

    def update(self, n: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def _decode_serial(jobs: list[Any], bar: Any) -> list[np.ndarray | str]:
    out: list[np.ndarray | str] = []
    for job in jobs:
        res = dicom.decode_group(*job)
        out.extend(res)
        bar.update(len(res))
    return out


def _n_workers(workers: int | None, n_jobs: int) -> int:
    """Processes for ``n_jobs`` files: ``workers`` (None = automatic: serial below a few dozen files)."""
    n = default_workers() if workers is None else max(1, int(workers))
    if workers is None and n_jobs < _PARALLEL_MIN_FILES:
        n = 1
    return max(1, min(n, n_jobs))


def _chunks(items: list[Any], n_workers: int) -> list[list[Any]]:
    """``items`` cut into about four pieces per worker, in order."""
    n_chunks = min(len(items), n_workers * 4)
    bounds = np.linspace(0, len(items), n_chunks + 1).astype(int)
    return [items[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _parallel(fn: Any, chunks: list[Any], n_workers: int, what: str) -> Iterator[list[Any]] | None:
    """``fn`` over ``chunks`` in the shared pool, results in order; None when processes cannot be used here
    (the caller then works serially). A pool that breaks mid-way raises BrokenProcessPool and is dropped."""
    if _STOPPED.is_set():  # the run was interrupted: start no new workers (e.g. for a prefetched study)
        raise InputError(f"{what} stopped: the run was interrupted")
    ctx = _pool_context()
    if not _main_reimport_safe(ctx):
        log.info(
            "%s serially: the calling script has no 'if __name__ == \"__main__\":' guard, which worker "
            "processes need (%s start method); add it to work in parallel",
            what,
            ctx.get_start_method(),
        )
        return None
    try:
        pool = _shared_pool(n_workers, ctx)
    except OSError as exc:  # no processes here (a sandbox without /dev/shm semaphores)
        log.warning("worker processes unavailable (%s); %s serially", exc, what)
        return None

    def results() -> Iterator[list[Any]]:
        try:
            yield from pool.map(fn, chunks)
        except (OSError, BrokenProcessPool):
            _drop_pool(n_workers, pool)
            raise

    return results()


def _read_headers(files: list[str], workers: int | None) -> list[Any]:
    """``dicom_headers.read_header`` of every file, in order; in the shared pool when there are many files."""
    n = _n_workers(workers, len(files))
    if n > 1:
        chunks = _parallel(dicom_headers.read_headers, _chunks(files, n), n, "reading headers")
        if chunks is not None:
            try:
                return [h for chunk in chunks for h in chunk]
            except (OSError, BrokenProcessPool) as exc:  # no processes here (sandbox, no /dev/shm)
                if _STOPPED.is_set():
                    raise
                log.warning("parallel header reading unavailable (%s); reading serially", exc)
    return dicom_headers.read_headers(files)


def _decode(
    refs: list[dicom_headers.SliceRef], *, workers: int | None, progress: bool
) -> list[np.ndarray | str]:
    """Decode ``refs`` in order, serially or with a process pool of ``workers`` (None = automatic)."""
    jobs = dicom.group_by_file(refs)
    n_workers = _n_workers(workers, len(jobs))
    bar: Any = _NoBar()
    if progress and sys.stderr.isatty():  # a tqdm bar starts a monitor thread: only make one when shown
        from tqdm import tqdm

        bar = tqdm(total=len(refs), unit="slice", desc="decoding", file=sys.stderr)
    out: list[np.ndarray | str] = []
    try:
        chunks = None
        if n_workers > 1:
            chunks = _parallel(dicom.decode_chunk, _chunks(jobs, n_workers), n_workers, "decoding")
        if chunks is not None:
            try:
                for res in chunks:
                    out.extend(res)
                    bar.update(len(res))
                return out
            except (OSError, BrokenProcessPool) as exc:  # no processes here (sandbox, no /dev/shm)
                if _STOPPED.is_set():
                    raise
                log.warning("parallel decoding unavailable (%s); decoding serially", exc)
                bar.reset()
        return _decode_serial(jobs, bar)
    finally:
        bar.close()


def open_study(
    path: str | Path, *, workers: int | None = None, min_slices: int = 2, series: str | None = None
) -> Study:
    """Open a study: read headers, choose and sort the series; decode nothing yet.

    ``workers``: decoding processes for :meth:`Study.read` (None = automatic, 1 = serial). ``min_slices``:
    fewer slices than this is an :class:`InputError` (a volume needs 2; pass 1 to read a lone slice).
    ``series``: the SeriesInstanceUID or SeriesNumber to read when a DICOM input holds several series
    (default: the axial CT series with the most slices; series of different patients or studies are refused).
    Raises :class:`InputError` with a message that names the input and the fix.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder; check the path")
    if p.is_dir():
        ignored: list[str] = []
        files = dicom_headers.find_files(p, ignored)
        if not files and not ignored:
            raise InputError(
                f"{p}: the folder is empty (no files); give a folder of DICOM files of one CT study"
            )
        chosen = dicom.discover(
            p, files, ignored=ignored, header_reader=lambda fs: _read_headers(fs, workers), series=series
        )
        study = Study(str(p), series=chosen, workers=workers)
    elif volume_format(p) is not None:
        study = _open_volume(p, volume_format(p) or "")
    elif zipfile.is_zipfile(p):
        study = _open_zip(p, workers, series)
    else:
        study = Study(str(p), series=dicom.discover(p, [str(p)], series=series), workers=workers)
    if study.n_slices < min_slices:
        what = "a single slice" if study.n_slices == 1 else f"{study.n_slices} slices"
        raise InputError(
            f"{p}: {what} where a volume of at least {min_slices} slices is needed; give the folder of the "
            "whole series"
        )
    for w in study.meta.warnings:
        log.warning("%s: %s", p.name, w)
    return study


def _open_volume(p: Path, fmt: str) -> Study:
    hu, spacing, origin, direction = read_volume_image(p)
    normal = -direction[:, 2] / np.linalg.norm(direction[:, 2])
    positions = [float(np.dot(origin + direction[:, 2] * spacing[0] * k, normal)) for k in range(hu.shape[0])]
    meta = StudyMeta(modality="CT", input_format=fmt)
    slices = [SliceInfo("", pos, None) for pos in positions]
    org = (float(origin[0]), float(origin[1]), float(origin[2]))
    return Study(str(p), volume=CTVolume(hu, spacing, org, direction, slices, meta), input_format=fmt)


def _open_zip(p: Path, workers: int | None, series: str | None = None) -> Study:
    tmp = tempfile.TemporaryDirectory(prefix="covidct-zip-")
    try:
        root = safe_extract_zip(p, tmp.name)
        ignored: list[str] = []
        files = dicom_headers.find_files(root, ignored)
        if not files and not ignored:
            raise InputError(f"{p}: the zip archive holds no files; zip the folder of one DICOM series")

        def display(real: str) -> str:
            return f"{p}!{Path(real).relative_to(root).as_posix()}"

        chosen = dicom.discover(
            p,
            files,
            display=display,
            ignored=ignored,
            header_reader=lambda fs: _read_headers(fs, workers),
            series=series,
        )
    except BaseException:
        tmp.cleanup()
        raise
    return Study(str(p), series=chosen, workers=workers, tmpdir=tmp, input_format="dicom-zip")


def load_study(
    path: str | Path,
    *,
    workers: int | None = None,
    progress: bool = False,
    min_slices: int = 2,
    series: str | None = None,
) -> CTVolume:
    """Load a whole study as a :class:`CTVolume` (``open_study(path).read()``); see :func:`open_study`."""
    study = open_study(path, workers=workers, min_slices=min_slices, series=series)
    try:
        return study.read(progress=progress)
    finally:
        study.close()
