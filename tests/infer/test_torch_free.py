"""Diagnosis on CPU without torch: NumPy preprocessing equal to the torch version, both networks on ONNX
Runtime with the same answers, torch and MONAI never imported, stale exports never used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from covidct.preprocess import resize_images, resize_tensor

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((3, 512, 512), 224),
        ((2, 512, 512), 128),
        ((2, 100, 80), 256),
        ((2, 333, 517), (64, 96)),
        ((1, 48, 48), 48),
    ],
)
def test_numpy_resize_equals_torch(shape: tuple[int, int, int], size: int | tuple[int, int]) -> None:
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    want = resize_tensor(torch.from_numpy(x), size).numpy()
    enlarging = isinstance(size, int) and size > shape[1]
    np.testing.assert_allclose(resize_images(x, size), want, atol=2e-6 if enlarging else 5e-7)


@pytest.fixture(scope="module")
def unet_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from covidct.testing import random_pipeline, random_segmenter_bundle

    root = tmp_path_factory.mktemp("tf")
    seg = random_segmenter_bundle(root / "seg", image_size=64)
    return random_pipeline(root / "model", segmenter_dir=seg, name="tiny-unet-resnet18")


def _diagnose_in_fresh_process(model: Path, study: Path, *extra: str) -> dict[str, object]:
    code = (
        "import json, sys\n"
        "from covidct.diagnose import Diagnoser\n"
        f"d = Diagnoser({str(model)!r}, workers=1{''.join(extra)})\n"
        f"r = d.diagnose({str(study)!r})\n"
        "print(json.dumps({'backend': d.backend, 'torch': 'torch' in sys.modules, 'monai': 'monai' in sys.modules,"
        " 'probs': [[None if v != v else float(v) for v in row] for row in r.probabilities.tolist()],"
        " 'mask_sum': int(r.mask.astype('int64').sum()), 'mask_hash': hash(r.mask.tobytes()),"
        " 'diagnosis': r.diagnosis}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_cpu_diagnosis_needs_no_torch_and_answers_as_torch_does(unet_pipeline: Path, p001_dir: Path) -> None:
    first = _diagnose_in_fresh_process(unet_pipeline, p001_dir)  # exports once (imports torch to do so)
    assert (unet_pipeline / "segmenter" / "onnx.json").is_file()
    assert (unet_pipeline / "classifier" / "onnx.json").is_file()
    light = _diagnose_in_fresh_process(unet_pipeline, p001_dir)
    assert light["backend"] == "onnxruntime (torch-free)"
    assert light["torch"] is False and light["monai"] is False
    ref = _diagnose_in_fresh_process(unet_pipeline, p001_dir, ", backend='torch'")
    assert ref["backend"] == "torch" and ref["torch"] is True
    assert light["mask_hash"] == ref["mask_hash"] == first["mask_hash"]  # the same lung mask, voxel for voxel
    got, want = (np.array(d["probs"], dtype=float) for d in (light, ref))
    np.testing.assert_allclose(got, want, atol=1e-5, equal_nan=True)
    assert light["diagnosis"] == ref["diagnosis"]


def test_an_export_of_other_weights_is_never_used(unet_pipeline: Path, tmp_path: Path) -> None:
    import shutil

    from covidct.diagnose import Diagnoser
    from covidct.infer.onnx import light_pipeline_reason

    model = tmp_path / "m"
    shutil.copytree(unet_pipeline, model)
    side = model / "classifier" / "onnx.json"
    if not side.is_file():
        from covidct.infer.export import export_pipeline

        export_pipeline(model)
    doc = json.loads(side.read_text())
    doc["weights_sha256"] = "0" * 64  # as if the classifier had been retrained after the export
    side.write_text(json.dumps(doc))
    assert light_pipeline_reason(model) is not None
    import covidct.diagnose

    with pytest.MonkeyPatch.context() as mp:  # a read-only install cannot re-export: the torch pipeline runs
        mp.setattr(covidct.diagnose.os, "access", lambda *a, **k: False)
        assert Diagnoser(model, workers=1).backend != "onnxruntime (torch-free)"
    d = Diagnoser(model, workers=1)  # writable: exported again for the current weights, then torch-free
    assert d.backend == "onnxruntime (torch-free)"
    assert json.loads(side.read_text())["weights_sha256"] != "0" * 64
    (model / "segmenter" / "model.onnx").write_bytes(b"not the export")  # altered: refused, exported again
    d = Diagnoser(model, workers=1)
    assert d.backend == "onnxruntime (torch-free)"
    assert (model / "segmenter" / "model.onnx").read_bytes() != b"not the export"


def test_info_and_help_never_import_torch(p001_dir: Path) -> None:
    code = (
        "import sys\n"
        "from covidct.cli.main import main\n"
        f"rc = main(['info', {str(p001_dir)!r}, '--json'])\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "NO-TORCH 0"


def test_a_slim_install_diagnoses_and_says_what_else_needs_torch(
    unet_pipeline: Path, p001_dir: Path, tmp_path: Path
) -> None:
    """As without the training stack installed: importing torch, MONAI or onnx fails."""
    block = "import sys\nfor m in ('torch', 'monai', 'onnx'):\n    sys.modules[m] = None\nfrom covidct.cli.main import main\n"
    from covidct.infer.export import export_pipeline

    export_pipeline(unet_pipeline)
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", block + f"sys.exit(main(['diagnose', {str(p001_dir)!r}, '--model', "
         f"{str(unet_pipeline)!r}, '-o', {str(out)!r}, '--no-progress']))"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(next(out.glob("*.json")).read_text())["model"]["backend"] == "onnxruntime (torch-free)"
    run = subprocess.run(
        [sys.executable, "-c", block + f"sys.exit(main(['export-onnx', {str(unet_pipeline)!r}, '--force']))"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "pip install 'covidct[train]'" in run.stderr


def test_the_lesion_model_on_onnx_runtime_gives_the_torch_labels(p001_dir: Path, tmp_path: Path) -> None:
    """The shipped lesion U-Net (real radiologist masks), exported to a copy, on the real series P001."""
    import shutil

    from covidct.infer.export import export_pipeline
    from covidct.io import load_study
    from covidct.lesions.api import load_lesion_segmenter, shipped_lesion_dir
    from covidct.lesions.inference import OnnxLesionSegmenter
    from covidct.lesions.model import LesionSegmenter
    from covidct.segment.classical import ClassicalSegmenter

    shipped = shipped_lesion_dir()
    assert shipped is not None
    bundle = tmp_path / "lesions"
    shutil.copytree(shipped, bundle, ignore=shutil.ignore_patterns("model.onnx", "onnx.json"))
    assert isinstance(load_lesion_segmenter(bundle), LesionSegmenter)  # no export yet: PyTorch
    export_pipeline(bundle)
    light = load_lesion_segmenter(bundle)
    assert isinstance(light, OnnxLesionSegmenter)
    volume = load_study(p001_dir, workers=1)
    lung = ClassicalSegmenter().apply(volume)
    got = light.apply(volume, lung)
    want = LesionSegmenter.from_bundle(bundle).apply(volume, lung)
    assert got.any()
    agree = float((got == want).mean())
    assert agree > 0.99999, agree  # argmax ties aside, the same labels


def test_float16_storage_halves_the_file_and_keeps_the_outputs(tmp_path: Path) -> None:
    from covidct.infer.export import store_weights_as_float16, write_onnx
    from covidct.infer.onnx import OnnxRunner

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3), torch.nn.BatchNorm2d(32), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3)
    ).eval()
    with torch.no_grad():  # weights that float16 holds exactly, as a float16 bundle's are
        for p in net.parameters():
            p.copy_(p.half().float())
    path = tmp_path / "m.onnx"
    write_onnx(path, network=net, image_size=32, fold=False)
    size = path.stat().st_size
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    want = OnnxRunner("a", path, 1)(x)
    assert store_weights_as_float16(path, min_size=64) == 3  # two kernels and the 64-value bias
    assert path.stat().st_size < 0.7 * size
    np.testing.assert_allclose(OnnxRunner("b", path, 1)(x), want, atol=1e-5)
