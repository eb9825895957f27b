"""A loaded pipeline: the lung segmenter and slice classifier of a pipeline folder, checked against its card.

:mod:`covidct.bundle` reads and writes the cards and weights; this module builds the two stages from them
(so ``bundle`` stays below ``classify`` and ``segment``, which load their own bundles through it).

>>> pipe = load_pipeline("models")            # doctest: +SKIP
>>> pipe.classifier.classes, pipe.rule         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from covidct.bundle import (
    CARD_NAME,
    ModelIdentity,
    check_lesion_gate,
    check_rule,
    default_rule,
    read_card,
)
from covidct.errors import ModelError

if TYPE_CHECKING:
    from covidct.classify.inference import SliceClassifier
    from covidct.segment.base import Segmenter


@dataclass
class Pipeline:
    """A loaded pipeline: segmenter + classifier + the top-level card."""

    directory: Path
    card: dict[str, Any]
    segmenter: Segmenter
    classifier: SliceClassifier

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(
            name=str(self.card.get("name", self.directory.name)),
            hash=str(self.card.get("hash", "")),
            version=str(self.card.get("version", "")),
        )

    @property
    def rule(self) -> dict[str, float]:
        """The checked patient-rule parameters (``head``, ``tail``, ``threshold``)."""
        return check_rule(self.card.get("rule", default_rule()), where=str(self.directory / CARD_NAME))

    @property
    def lesion_gate(self) -> float:
        """The card's ``lesion_gate`` (a lung fraction, see :func:`covidct.decide.gate_by_lesions`; 0: off)."""
        return check_lesion_gate(self.card.get("lesion_gate", 0.0), where=str(self.directory / CARD_NAME))


def load_pipeline(
    model_dir: str | Path, *, device: str = "cpu", backend: str = "torch", onnx: bool = False
) -> Pipeline:
    """Load a pipeline MODEL_DIR: check the top card, its components and their hashes; build both stages.

    ``onnx``: both networks from the bundles' ONNX exports on ONNX Runtime, without torch (CPU;
    :mod:`covidct.infer.onnx`; :class:`~covidct.infer.onnx.ExportMismatch` when an export is missing or altered).
    """
    from covidct.classify.inference import SliceClassifier

    model_dir = Path(model_dir)
    card = read_card(model_dir, kind="pipeline")
    check_rule(card.get("rule", default_rule()), where=str(model_dir / CARD_NAME))
    components = dict(card.get("components", {}))
    cdir = model_dir / str(card.get("classifier", "classifier"))
    if onnx:
        from covidct.infer.onnx import OnnxSliceClassifier

        # duck-typed: the parts of SliceClassifier diagnosis uses (RunnerClassifier), Grad-CAM's network lazily
        classifier = cast("SliceClassifier", OnnxSliceClassifier.from_bundle(cdir))
    else:
        classifier = SliceClassifier.from_bundle(cdir, device=device, backend=backend)
    expected = dict(components.get("classifier", {})).get("hash")
    if expected and classifier.card.get("hash") != expected:
        raise ModelError(
            f"{cdir}: classifier hash {classifier.card.get('hash')} does not match the pipeline card "
            f"({expected}); the classifier was retrained: rerun `covidct train ... --pipeline {model_dir}`"
        )
    pre = dict(card.get("preprocessing", {}))
    if pre and pre.get("image_size") not in (None, classifier.image_size):
        raise ModelError(
            f"{model_dir / CARD_NAME}: image_size {pre.get('image_size')} differs from the classifier's "
            f"{classifier.image_size}; refresh the pipeline card"
        )
    seg_entry = str(card.get("segmenter", "classical"))
    segmenter: Segmenter
    if seg_entry == "classical":
        from covidct.segment import get_segmenter

        segmenter = get_segmenter("classical", device=device)
    else:
        sdir = model_dir / seg_entry
        unet: Any
        if onnx:
            from covidct.infer.onnx import OnnxUNetSegmenter

            unet = OnnxUNetSegmenter.from_bundle(sdir)
        else:
            from covidct.segment.unet import UNetSegmenter

            unet = UNetSegmenter.from_bundle(sdir, device=device)
        expected = dict(components.get("segmenter", {})).get("hash")
        if expected and unet.card.get("hash") != expected:
            raise ModelError(
                f"{sdir}: segmenter hash {unet.card.get('hash')} does not match the pipeline card "
                f"({expected}); rerun `covidct train ... --pipeline {model_dir}`"
            )
        segmenter = unet
    return Pipeline(directory=model_dir, card=card, segmenter=segmenter, classifier=classifier)
