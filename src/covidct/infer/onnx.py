"""Diagnosis without the training stack: both networks on ONNX Runtime, preprocessing in NumPy.

Neither torch nor MONAI is imported here. A component bundle (``segmenter/``, ``classifier/``) carries its
network as ``model.onnx`` with a sidecar ``onnx.json`` that names the weights it was exported from
(``weights_sha256``, the sha256 in the bundle's card) and the file's own sha256; a sidecar that does not
match the bundle's current weights is ignored (the model was retrained), so a stale export is never used.
:mod:`covidct.infer.export` writes them (with torch, once).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

import numpy as np

from covidct.classify.backend_names import cpu_threads
from covidct.classify.inference import RunnerClassifier
from covidct.errors import ModelError
from covidct.preprocess import SEGMENTER_WINDOW, resize_images, resize_labels, window
from covidct.registry import LUNG_WINDOW, SEGMENTER_IMAGE_SIZE, Window

log = logging.getLogger(__name__)

SIDECAR: str = "onnx.json"
ONNX_FILE: str = "model.onnx"


class ExportMismatch(ModelError):
    """A component's ONNX export is missing for its weights, or its file differs from the sidecar's sha256."""


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


@dataclass
class OnnxRunner:
    """An ONNX Runtime session on CPU: ``runner(x)`` maps float32 inputs to float32 outputs (first output).

    ``spin``: let idle worker threads spin-wait between operators (ONNX Runtime's default; faster on an idle
    machine, wasteful on a shared one). Sessions are thread-safe for ``run``.
    """

    name: str
    path: Path
    threads: int
    spin: bool = True
    session: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not self.spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32)


def sidecar_for(directory: Path, card: dict[str, Any]) -> dict[str, Any] | None:
    """The component's ONNX sidecar when it exists and matches the card's weights, else None."""
    path = directory / SIDECAR
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    weights = dict(card.get("weights", {})).get("sha256")
    if not isinstance(doc, dict) or not weights or doc.get("weights_sha256") != weights:
        return None
    if not (directory / str(doc.get("file", ONNX_FILE))).is_file():
        return None
    return doc


def open_onnx(directory: Path, card: dict[str, Any], *, name: str) -> tuple[OnnxRunner, dict[str, Any]]:
    """The runner of a component's ONNX export, its file checked against the sidecar's sha256."""
    from covidct.bundle import file_sha256

    doc = sidecar_for(directory, card)
    if doc is None:
        raise ExportMismatch(
            f"{directory}: no ONNX export for these weights; run `covidct export-onnx MODEL`"
        )
    path = directory / str(doc.get("file", ONNX_FILE))
    if file_sha256(path) != doc.get("sha256"):
        raise ExportMismatch(
            f"{path}: content does not match {directory / SIDECAR}; run `covidct export-onnx MODEL`"
        )
    return OnnxRunner(name, path, cpu_threads()), doc


def open_unet(
    directory: str | Path, *, kind: str, image_size: int, window: Window
) -> tuple[OnnxRunner, dict[str, Any], int, Window]:
    """A U-Net bundle's (lung segmenter or lesion model) export: its runner, card, input size and window (the
    given defaults where the card has none)."""
    from covidct.bundle import CARD_NAME, card_int, card_window, read_card

    directory = Path(directory)
    card = read_card(directory, kind=kind)
    where = directory / CARD_NAME
    size = card_int(
        card.get("preprocessing") or {}, "image_size", image_size, where=where, prefix="preprocessing."
    )
    win = card_window(card, default=window, where=where)
    runner, _ = open_onnx(directory, card, name="onnx")
    return runner, card, size, win


def _argmax_labels(logits: np.ndarray) -> np.ndarray:
    return np.asarray(np.argmax(logits, axis=1), dtype=np.uint8)


class OnnxUNet:
    """A U-Net bundle's export on ONNX Runtime: ``labels(x)`` gives the argmax labels ``(n, S, S)`` uint8 of
    inputs ``(n, 1, S, S)``, ``batch_size`` slices per run. Subclasses name the bundle kind and defaults."""

    kind: str = "segmenter"
    default_size: int = SEGMENTER_IMAGE_SIZE
    default_window: Window = SEGMENTER_WINDOW
    default_batch: int = 4

    def __init__(
        self,
        runner: OnnxRunner,
        *,
        image_size: int,
        window: Window,
        card: dict[str, Any],
        batch_size: int | None = None,
    ) -> None:
        self.runner = runner
        self.image_size = int(image_size)
        self.window = window
        self.card = dict(card)
        self.batch_size = max(1, int(batch_size or self.default_batch))

    @classmethod
    def from_bundle(cls, directory: str | Path) -> Self:
        runner, card, size, win = open_unet(
            directory, kind=cls.kind, image_size=cls.default_size, window=cls.default_window
        )
        return cls(runner, image_size=size, window=win, card=card)

    def labels(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, *x.shape[2:]), np.uint8)
        b = self.batch_size
        return np.concatenate([_argmax_labels(self.runner(x[i : i + b])) for i in range(0, len(x), b)])


class OnnxUNetSegmenter(OnnxUNet):
    """The trained lung U-Net on ONNX Runtime (the ``Segmenter`` protocol): same input and labels as
    :class:`covidct.segment.unet.UNetSegmenter`, preprocessing in NumPy."""

    name = "unet"

    def apply(self, volume: Any) -> np.ndarray:
        """The lung mask of ``volume``: uint8 ``(z, y, x)``, 0 background, 1 right, 2 left."""
        z, h, w = volume.shape
        mask = np.zeros((z, h, w), np.uint8)
        step = self.batch_size * 4
        for i in range(0, z, step):
            x = resize_images(window(volume.hu[i : i + step], self.window), self.image_size)[:, None]
            mask[i : i + step] = resize_labels(self.labels(x), (h, w))
        return mask


class OnnxSliceClassifier(RunnerClassifier):
    """The slice classifier on ONNX Runtime (preprocessing and probabilities from
    :class:`~covidct.classify.inference.RunnerClassifier`). ``network`` (for Grad-CAM) loads the torch network on
    first use, and only then."""

    calibration = None

    def __init__(
        self, runner: OnnxRunner, directory: Path, *, image_size: int, window: Window, card: dict[str, Any]
    ):
        self.runner = runner
        self.directory = directory
        self.image_size = int(image_size)
        self.window = window
        self.card = dict(card)
        self._torch: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(cls, directory: str | Path) -> OnnxSliceClassifier:
        from covidct.bundle import CARD_NAME, card_int, card_window, read_card

        directory = Path(directory)
        where = directory / CARD_NAME
        card = read_card(directory, kind="classifier")
        size = card_int(
            card.get("preprocessing") or {}, "image_size", 0, where=where, prefix="preprocessing."
        )
        if size < 32:
            raise ModelError(f"{where}: preprocessing.image_size missing or < 32")
        runner, _ = open_onnx(directory, card, name="onnx")
        return cls(
            runner,
            directory,
            image_size=size,
            window=card_window(card, default=LUNG_WINDOW, where=where),
            card=card,
        )

    @property
    def network(self) -> Any:
        """The torch network (Grad-CAM needs it): loaded from the bundle on first use."""
        with self._lock:
            if self._torch is None:
                from covidct.classify.inference import SliceClassifier

                self._torch = SliceClassifier.from_bundle(self.directory)
            return self._torch.network


def light_pipeline_reason(model_dir: str | Path) -> str | None:
    """Why the torch-free path cannot run ``model_dir`` (None: it can)."""
    from covidct.bundle import read_card

    if not onnxruntime_available():
        return "onnxruntime is not installed"
    model_dir = Path(model_dir)
    card = read_card(model_dir, kind="pipeline")
    parts = [str(card.get("classifier", "classifier"))]
    if str(card.get("segmenter", "classical")) != "classical":
        parts.append(str(card["segmenter"]))
    for part in parts:
        d = model_dir / part
        if sidecar_for(d, read_card(d, verify=False)) is None:
            return f"{d} has no ONNX export for its weights"
    return None
