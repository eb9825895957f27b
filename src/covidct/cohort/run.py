"""Diagnose a cohort into a folder: a JSON per study, then the results table; resumable; local or Ray.

>>> summary = diagnose_cohort(studies_from_inputs(["a/", "b.zip"]), "model/", "out/")   # doctest: +SKIP
>>> summary.done, summary.failed                                                        # doctest: +SKIP
(2, 0)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidct._files import atomic_write_text
from covidct.cohort.table import CohortStudy, done_document, row_of, write_table
from covidct.errors import ConfigError

log = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("local", "ray")


@dataclass
class CohortSummary:
    """What a cohort run did: studies diagnosed now, kept from a previous run, failed; the table files."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    tables: list[Path] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def model_hash(model_dir: str | Path) -> str:
    """The pipeline's content hash, read from its card (no model loaded)."""
    from covidct.bundle import read_card

    return str(read_card(model_dir).get("hash", ""))


def _local(
    studies: Sequence[CohortStudy], model_dir: str, **diagnoser_kw: Any
) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    from covidct.diagnose import Diagnoser, study_document
    from covidct.errors import CovidCTError

    diagnoser = Diagnoser(model_dir, **diagnoser_kw)
    for study, outcome in zip(studies, diagnoser.diagnose_many([s.path for s in studies]), strict=True):
        if outcome.error is not None:
            err = outcome.error
            yield (
                study.case,
                None,
                str(err) if isinstance(err, CovidCTError) else f"{type(err).__name__}: {err}",
            )
        else:
            assert outcome.result is not None
            yield study.case, study_document(outcome.result), None


def diagnose_cohort(
    studies: Sequence[CohortStudy],
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    engine: str = "local",
    resume: bool = False,
    progress: bool = False,
    ray_address: str | None = None,
    gpus_per_worker: float = 0.0,
    cpu_workers: int | None = None,
    device: str = "cpu",
    backend: str = "auto",
    batch_size: int | None = None,
) -> CohortSummary:
    """Diagnose ``studies`` into ``out_dir``: ``<case>.json`` each (written as it finishes, atomically), then
    ``results.csv`` / ``.parquet`` for all. A study that fails is a row with its error. With ``resume``, studies
    whose JSON exists for the same model (content hash) are not diagnosed again."""
    from tqdm import tqdm

    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if len({s.case for s in studies}) != len(studies):
        raise ConfigError("case ids must be unique in a cohort (a manifest repeats one)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mhash = model_hash(model_dir)
    docs: dict[str, dict[str, Any]] = {}
    summary = CohortSummary()
    todo = []
    for s in studies:
        doc = done_document(out, s.case, mhash) if resume else None
        if doc is not None:
            docs[s.case] = doc
            summary.skipped += 1
        else:
            todo.append(s)
    if summary.skipped:
        log.info("resume: %d of %d studies already diagnosed by this model", summary.skipped, len(studies))
    t0 = time.perf_counter()
    if engine == "ray":
        from covidct.cohort.ray_engine import run_ray

        stream = run_ray(
            todo, str(model_dir), address=ray_address, gpus_per_worker=gpus_per_worker, cpu_workers=cpu_workers,
            device=None if device == "cpu" and gpus_per_worker > 0 else device, backend=backend,
            batch_size=batch_size,
        )  # fmt: skip
    else:
        if ray_address or gpus_per_worker or cpu_workers:
            raise ConfigError("--ray-address, --gpus-per-worker and --cpu-workers need --engine ray")
        stream = _local(todo, str(model_dir), device=device, backend=backend, batch_size=batch_size)
    bar = tqdm(total=len(todo), desc="studies", unit="study", disable=not progress)
    for case, doc, error in stream:
        if doc is not None:
            atomic_write_text(out / f"{case}.json", json.dumps(doc, indent=1, allow_nan=False))
            docs[case] = doc
            summary.done += 1
        else:
            summary.failed += 1
            summary.errors[case] = error or "not diagnosed"
            log.warning("%s: FAILED: %s", case, error)
        bar.update(1)
        rate = (summary.done + summary.failed) / max(time.perf_counter() - t0, 1e-9) * 60
        bar.set_postfix(done=summary.done, failed=summary.failed, per_min=f"{rate:.1f}")
    bar.close()
    summary.seconds = time.perf_counter() - t0
    rows = [row_of(s.case, s.truth, docs.get(s.case), summary.errors.get(s.case)) for s in studies]
    summary.tables = write_table(rows, out)
    return summary
