"""Write the ONNX exports that :mod:`covidct.infer.onnx` runs (needs torch; done once per set of weights).

``export_pipeline(MODEL)`` writes ``model.onnx`` and ``onnx.json`` into the classifier and U-Net segmenter
bundles of a pipeline folder (and the lesion bundle when there is one), checks each export against PyTorch
float32 on random inputs, and records the largest difference in the sidecar. Existing exports that match the
current weights are kept.
"""

from __future__ import annotations

import json
import logging
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from covidct._files import atomic_write, atomic_write_text
from covidct.classify.backend_names import ONNX_OPSET
from covidct.errors import ModelError
from covidct.infer.onnx import ONNX_FILE, SIDECAR, OnnxRunner, sidecar_for

log = logging.getLogger(__name__)

#: Opset of the exports (the classifier backends' cache uses the same; ONNX Runtime >= 1.18 runs it).
OPSET: int = ONNX_OPSET
#: Largest difference of outputs (logits) from PyTorch float32 accepted for an export.
MAX_ABS_DIFF: float = 1e-3


def write_onnx(path: Path, *, network: Any, image_size: int, in_channels: int = 1, fold: bool = True) -> None:
    """``torch.onnx.export`` of a CPU float32 network to ``path``: input ``x`` ``(n, C, S, S)`` with a dynamic
    batch axis, output ``logits``, opset :data:`OPSET` (the TorchScript exporter). ``fold=False`` keeps the
    weights as they are (batch norm not folded into the convolutions; ONNX Runtime fuses them when loading)."""
    import torch

    dummy = torch.zeros(1, in_channels, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (dummy,),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
            opset_version=OPSET,
            do_constant_folding=fold,
        )


def store_weights_as_float16(path: Path, *, min_size: int = 1024) -> int:
    """Rewrite the ONNX file ``path`` with its float32 initializers of ``min_size`` values or more stored as
    float16, each followed by a ``Cast`` back to float32 (ONNX Runtime folds the casts when the session starts,
    so inference still runs in float32). Halves the file of a bundle whose weights are float16 anyway; the
    export check against PyTorch then measures what the rounding of folded weights costs. Returns how many
    initializers were stored as float16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits, casts = [], []
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= min_size:
            half = numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float16), f"{init.name}__fp16"
            )
            inits.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
        else:
            inits.append(init)
    if casts:
        del graph.initializer[:]
        graph.initializer.extend(inits)
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(casts + nodes)
        onnx.checker.check_model(model)
        atomic_write(path, lambda tmp: onnx.save(model, str(tmp)))
    return len(casts)


def export_component(directory: Path, network: Any, *, image_size: int, card: dict[str, Any]) -> Path:
    """Export ``network`` (eval, CPU float32) with a dynamic batch axis into ``directory``; returns the sidecar.

    A bundle whose card says its weights are float16 (``weights_dtype``, the shipped ones) gets its export's
    weights stored as float16 too (:func:`store_weights_as_float16`) when that stays within
    :data:`MAX_ABS_DIFF` of PyTorch; else the float32 export is kept."""
    import torch

    from covidct.bundle import file_sha256

    net = network.to("cpu", torch.float32).eval()
    half = str(card.get("weights_dtype", "")).startswith("float16")
    # float16 weights stay exact in float16 only if nothing is folded into them at export
    write = partial(write_onnx, network=net, image_size=image_size, fold=not half)
    path = atomic_write(directory / ONNX_FILE, write)
    x = np.random.default_rng(0).random((2, 1, image_size, image_size), dtype=np.float32)
    with torch.inference_mode():
        want = net(torch.from_numpy(x)).numpy()
    storage = "float32"
    if half:
        full = path.read_bytes()
        if store_weights_as_float16(path):
            diff16 = float(np.abs(OnnxRunner("check", path, 1)(x) - want).max())
            if diff16 <= MAX_ABS_DIFF:
                storage = "float16 (cast to float32 when loaded)"
            else:
                log.info("%s: float16 storage differs by %.2e; kept float32", directory, diff16)
                atomic_write(path, lambda tmp: tmp.write_bytes(full))
    got = OnnxRunner("check", path, 1)(x)
    diff = float(np.abs(got - want).max())
    if not diff <= MAX_ABS_DIFF:
        path.unlink(missing_ok=True)
        raise ModelError(f"{directory}: the ONNX export differs from PyTorch by {diff:.2e}; not written")
    doc = {
        "file": ONNX_FILE,
        "sha256": file_sha256(path),
        "weights_sha256": dict(card.get("weights", {})).get("sha256"),
        "image_size": int(image_size),
        "opset": OPSET,
        "input": "x (n, 1, S, S) float32 in [0, 1]",
        "output": "logits (n, C[, S, S])",
        "max_abs_diff_vs_torch": diff,
        "weights_storage": storage,
    }
    return atomic_write_text(directory / SIDECAR, json.dumps(doc, indent=1))


def export_pipeline(model_dir: str | Path, *, force: bool = False) -> list[Path]:
    """Export every network of a pipeline folder that has no current export; returns the sidecars written."""
    from covidct.bundle import read_card
    from covidct.registry import LESION_FOLDER

    model_dir = Path(model_dir)
    if read_card(model_dir, verify=False).get("kind") == "lesions":  # a lesion bundle on its own
        return _export_lesions(model_dir, force=force)
    card = read_card(model_dir, kind="pipeline")
    written: list[Path] = []
    cdir = model_dir / str(card.get("classifier", "classifier"))
    if force or sidecar_for(cdir, read_card(cdir, verify=False)) is None:
        from covidct.classify.inference import SliceClassifier

        clf = SliceClassifier.from_bundle(cdir)
        written.append(export_component(cdir, clf.network, image_size=clf.image_size, card=clf.card))
    seg = str(card.get("segmenter", "classical"))
    if seg != "classical":
        sdir = model_dir / seg
        if force or sidecar_for(sdir, read_card(sdir, verify=False)) is None:
            from covidct.segment.unet import UNetSegmenter

            unet = UNetSegmenter.from_bundle(sdir)
            written.append(export_component(sdir, unet.network, image_size=unet.image_size, card=unet.card))
    if (model_dir / LESION_FOLDER / "model.json").is_file():
        written += _export_lesions(model_dir / LESION_FOLDER, force=force)
    for p in written:
        log.info("wrote %s", p)
    return written


def _export_lesions(ldir: Path, *, force: bool) -> list[Path]:
    from covidct.bundle import read_card
    from covidct.lesions.model import LesionSegmenter

    if not force and sidecar_for(ldir, read_card(ldir, verify=False)) is not None:
        return []
    les = LesionSegmenter.from_bundle(ldir)
    return [export_component(ldir, les.network, image_size=les.image_size, card=les.card)]
