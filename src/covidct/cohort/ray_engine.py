"""Ray Data streaming inference for a cohort: reading as CPU tasks, the models in an actor pool.

    studies ──map(read: load_study + chest check, 1 CPU each, many)──> volumes
            ──map_batches(DiagnoseActor, batch_size=1, actors load the models once; GPU actors when asked)──>
            per-study JSON documents (or errors) streamed back to the driver, which writes them

Without ``address`` a local Ray is started on this machine (loopback, no dashboard); with it, the run joins that
cluster (``ray start --head`` on one node, ``ray start --address HEAD:PORT`` on the others). The worker nodes
need covidct and the model folder at the same path (a shared file system, or the same container image).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from typing import Any

from covidct.cohort.table import CohortStudy
from covidct.errors import ConfigError

log = logging.getLogger(__name__)

#: Memory each model actor reserves on the cluster (models, one study's arrays and the classifier's batches).
ACTOR_MEMORY: int = 3 << 29  # 1.5 GiB: Ray measured 1.1 GiB per actor on a 168-slice study

INSTALL_HINT = "Ray is not installed: pip install 'covidct[ray]' (or pip install 'ray[data]')"


def require_ray() -> Any:
    """The ``ray`` module, or ConfigError saying in one line how to get it."""
    # no usage statistics leave this machine (a cluster joined with --ray-address: start it with
    # `ray start --disable-usage-stats`)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def _read(row: dict[str, Any]) -> dict[str, Any]:
    """CPU task: read one study and check that it is a chest CT; errors travel as text, never raise."""
    from covidct.errors import CovidCTError, NotChestCTError
    from covidct.io import check_chest_ct, load_study

    out = {"case": row["case"], "path": row["path"], "volume": b"", "t_load": 0.0, "error": ""}
    t = time.perf_counter()
    try:
        volume = load_study(row["path"], workers=1)
        check = check_chest_ct(volume)
        if not check.is_chest_ct:
            raise NotChestCTError(
                f"{row['path']}: {check.reason}; covidct needs a chest CT that shows the lungs"
            )
        out["volume"] = pickle.dumps(volume, protocol=pickle.HIGHEST_PROTOCOL)
    except CovidCTError as exc:
        out["error"] = str(exc)
    except Exception as exc:  # a failed study is a row, never a failed run
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["t_load"] = time.perf_counter() - t
    return out


class DiagnoseActor:
    """Loads the models once; diagnoses the volumes the read stage made."""

    def __init__(self, model_dir: str, device: str, backend: str, batch_size: int | None) -> None:
        from covidct.diagnose import Diagnoser

        self.diagnoser = Diagnoser(
            model_dir, device=device, backend=backend, batch_size=batch_size, workers=1
        )

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        from covidct.diagnose import study_document

        cases, docs, errors = [], [], []
        for i, case in enumerate(batch["case"]):
            doc, error = "", str(batch["error"][i])
            if not error:
                try:
                    volume = pickle.loads(bytes(batch["volume"][i]))
                    result = self.diagnoser.diagnose(volume)
                    result.input = str(batch["path"][i])
                    result.timing_s["load"] = float(batch["t_load"][i])
                    result.timing_s["total"] += float(batch["t_load"][i])
                    doc = json.dumps(study_document(result), allow_nan=False)
                except Exception as exc:  # reported in the row
                    error = str(exc) if hasattr(exc, "exit_code") else f"{type(exc).__name__}: {exc}"
            cases.append(str(case))
            docs.append(doc)
            errors.append(error)
        return {"case": cases, "doc": docs, "error": errors}


def run_ray(
    studies: Sequence[CohortStudy],
    model_dir: str,
    *,
    address: str | None = None,
    gpus_per_worker: float = 0.0,
    cpu_workers: int | None = None,
    device: str | None = None,
    backend: str = "auto",
    batch_size: int | None = None,
) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """Yield ``(case, document, error)`` for every study as it finishes (any order)."""
    ray = require_ray()
    if gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    if cpu_workers is not None and cpu_workers < 1:
        raise ConfigError(f"--cpu-workers must be >= 1, got {cpu_workers}")
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
    try:
        resources = ray.cluster_resources()
        gpus, cpus = float(resources.get("GPU", 0.0)), float(resources.get("CPU", 1.0))
        if gpus_per_worker > 0 and gpus < gpus_per_worker:
            raise ConfigError(f"--gpus-per-worker {gpus_per_worker}: the Ray cluster has {gpus:g} GPUs")
        # the actors reserve memory for the models and one study's arrays; that also keeps Ray from fusing the
        # reading tasks into the actors (it fuses stages with equal resource requests), so reading overlaps
        actor_res: dict[str, Any] = {"num_cpus": 1, "memory": ACTOR_MEMORY}
        if gpus_per_worker > 0:
            actors = max(1, int(gpus // gpus_per_worker))
            actor_res["num_gpus"] = gpus_per_worker
            device = device or "cuda"
        else:
            actors = cpu_workers or max(1, int(cpus) // 4)
            device = device or "cpu"
        log.info("Ray: %g CPUs, %g GPUs; %d model actor(s) on %s", cpus, gpus, actors, device)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.verbose_progress = False
        items = [{"case": s.case, "path": s.path} for s in studies]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map(_read, num_cpus=1)
        ds = ds.map_batches(
            DiagnoseActor,
            fn_constructor_kwargs={
                "model_dir": str(model_dir),
                "device": device,
                "backend": backend,
                "batch_size": batch_size,
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),
            **actor_res,
        )
        for row in ds.iter_rows():
            error = str(row["error"]) or None
            doc = json.loads(row["doc"]) if row["doc"] else None
            yield str(row["case"]), doc, error
    finally:
        if started_here:
            ray.shutdown()
