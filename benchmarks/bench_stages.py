"""Decoding and segmentation stage timings (``benchmarks/run.py`` calls these).

Decoding: JPEG-Lossless COVID-CT-MD files with pydicom + pylibjpeg and with GDCM, serially and with two
processes, and ``covidct.io.load_study`` when present. Segmentation: the project's U-Net at 256x256 (per
backend), lungmask's U-Net architecture (random weights: timing only) at 256x256 (what lungmask runs after
cropping) and at 512x512, and the classical segmenter, as seconds per 150-slice study.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import count_flops, time_call
from _data import dicom_files

logger = logging.getLogger("benchmarks")

STUDY_SLICES = 150


def _decode(path: str, plugin: str) -> int:
    import pydicom

    ds = pydicom.dcmread(path)
    if plugin:
        ds.pixel_array_options(decoding_plugin=plugin)
    return int(ds.pixel_array.shape[0])


def _decode_many(paths: list[str], plugin: str) -> int:
    return sum(_decode(p, plugin) for p in paths)


def _decoder_available(plugin: str) -> str | None:
    mod = {"pylibjpeg": "libjpeg", "gdcm": "gdcm"}[plugin]
    return None if importlib.util.find_spec(mod) else f"{mod} not installed"


def bench_decode(folder: Path, *, repeats: int = 3, workers: int = 2) -> dict[str, Any]:
    """Slices/s decoding every file of ``folder`` (read + decode), per method; 'not available' notes."""
    files = [str(p) for p in dicom_files(folder)]
    out: dict[str, Any] = {"slices": len(files), "rates": {}, "unavailable": {}}
    for plugin in ("pylibjpeg", "gdcm"):
        why = _decoder_available(plugin)
        if why:
            out["unavailable"][f"{plugin} serial"] = why
            continue
        t = time_call(lambda plugin=plugin: _decode_many(files, plugin), repeats=repeats, warmup=1)
        out["rates"][f"pydicom + {plugin}, serial"] = len(files) / t.median
        chunks = [files[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers) as pool:

            def par(plugin: str = plugin, chunks: list[list[str]] = chunks) -> int:
                return sum(pool.map(_decode_many, chunks, [plugin] * workers))

            t = time_call(par, repeats=repeats, warmup=1)
        out["rates"][f"pydicom + {plugin}, {workers} processes"] = len(files) / t.median
    from covidct.io import load_study

    for w in (1, workers):
        t = time_call(lambda w=w: load_study(folder, workers=w), repeats=repeats, warmup=1)
        out["rates"][f"covidct.io.load_study(workers={w})"] = len(files) / t.median
    return out


def _lungmask_unet() -> Any:
    """lungmask's U-Net class, loaded from its file (the package's __init__ needs extra dependencies)."""
    spec = importlib.util.find_spec("lungmask")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("lungmask is not installed (pip install lungmask)")
    path = Path(next(iter(spec.submodule_search_locations))) / "resunet.py"
    mspec = importlib.util.spec_from_file_location("_lungmask_resunet", path)
    if mspec is None or mspec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    # the configuration of lungmask.mask.get_model (R231: 3 classes)
    return mod.UNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)


def _project_unet() -> tuple[torch.nn.Module, str]:
    from covidct.segment.unet import build_segmenter

    return (
        build_segmenter().eval(),
        "covidct.segment.unet.build_segmenter() (default features), random weights",
    )


def bench_segment(
    *,
    volume: Any | None,
    repeats: int = 3,
    threads: int = 2,
    batch: int = 8,
    backends: tuple[str, ...] = ("torch", "onnx", "openvino"),
    lungmask_slices: int = 1,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Seconds per 150-slice study per segmenter (network timings extrapolated from a few batches)."""
    from covidct.classify.backends import make_runner, unavailable_reason

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"rows": rows, "unavailable": {}, "notes": []}
    cdir = cache_dir or Path(tempfile.mkdtemp(prefix="covidct-bench-seg-"))

    unet, how = _project_unet()
    out["notes"].append(f"U-Net: {how}")
    x = np.random.default_rng(0).random((batch, 1, 256, 256), dtype=np.float32)
    gflop = count_flops(unet, torch.from_numpy(x[:1])) / 1e9
    for name in backends:
        why = unavailable_reason(name)
        if why:
            out["unavailable"][f"U-Net {name}"] = why
            continue
        try:
            r = make_runner(unet, backend=name, image_size=256, cache_dir=cdir, threads=threads)
            t = time_call(lambda r=r: r(x), repeats=repeats, warmup=1)
        except Exception as exc:
            out["unavailable"][f"U-Net {name}"] = f"{type(exc).__name__}: {exc}"
            continue
        sps = batch / t.median
        rows.append(
            {
                "segmenter": f"U-Net 256x256 ({name}, batch {batch})",
                "gflop": gflop,
                "slices_s": sps,
                "study_s": STUDY_SLICES / sps,
            }
        )

    try:
        lm = _lungmask_unet().eval()
    except ImportError as exc:
        out["unavailable"]["lungmask U-Net"] = str(exc)
    else:
        for size in (256, 512):
            xl = torch.rand(lungmask_slices, 1, size, size)
            g = count_flops(lm, xl[:1]) / 1e9
            with torch.inference_mode():
                t = time_call(lambda xl=xl: lm(xl), repeats=2 if size == 256 else 1, warmup=1)
            sps = lungmask_slices / t.median
            rows.append(
                {
                    "segmenter": f"lungmask U-Net {size}x{size} (torch, batch {lungmask_slices})",
                    "gflop": g,
                    "slices_s": sps,
                    "study_s": STUDY_SLICES / sps,
                }
            )

    if volume is None:
        out["unavailable"]["classical"] = "no real volume loaded"
        return out
    from covidct.segment import get_segmenter

    seg = get_segmenter("classical")
    n = volume.hu.shape[0]
    t = time_call(lambda: seg.apply(volume), repeats=repeats, warmup=1)
    rows.append(
        {
            "segmenter": f"classical (whole {n}-slice study, 512x512)",
            "gflop": float("nan"),
            "slices_s": n / t.median,
            "study_s": t.median * STUDY_SLICES / n,
        }
    )
    return out
