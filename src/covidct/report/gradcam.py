"""Class-activation heat maps (Grad-CAM) of the slice classifier, for chosen slices.

Uses :class:`monai.visualize.GradCAM` on the ResNet's last residual stage (``layer4``). The explainer works
on a private deep copy of the network: Grad-CAM registers forward/backward hooks, and those must never touch
the network the diagnoser is running inference with (possibly in another thread, under ``no_grad``).

The classifier inputs come from the classifier's own ``preprocess(volume, mask, indices)`` (lung window,
outside-lung zeroed, whole slice resized to ``S x S``), so the maps are resized back to the slice's
``(y, x)`` grid with bilinear interpolation and line up with the CT pixels.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from covidct.io.volume import CTVolume

#: The ResNet stage whose activations and gradients make the map.
TARGET_LAYER = "layer4"

Preprocess = Callable[..., np.ndarray]


class SliceExplainer:
    """Grad-CAM maps for slices of a volume; thread-safe (one map computation at a time).

    ``network`` is the classifier's torch module (logits ``(n, 3)`` from ``(n, 1, S, S)``), ``preprocess`` the
    classifier's ``preprocess(volume, mask, indices=...) -> (n, 1, S, S) float32``.
    """

    def __init__(
        self, network: torch.nn.Module, preprocess: Preprocess, *, target_layer: str = TARGET_LAYER
    ) -> None:
        import torch
        from monai.visualize import GradCAM

        names = {name for name, _ in network.named_modules()}
        if target_layer not in names:
            raise ValueError(
                f"the network has no layer {target_layer!r} for Grad-CAM; "
                f"choose one of its modules (e.g. {sorted(n for n in names if n)[-3:]})"
            )
        self.network = copy.deepcopy(network).eval()
        for p in self.network.parameters():
            p.requires_grad_(True)
        try:
            self.device = next(self.network.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")
        self.preprocess = preprocess
        self.target_layer = target_layer
        self._cam = GradCAM(nn_module=self.network, target_layers=target_layer)
        self._lock = threading.Lock()

    @classmethod
    def from_classifier(cls, classifier: Any, *, target_layer: str = TARGET_LAYER) -> SliceExplainer:
        """From a ``SliceClassifier`` (anything with ``.network`` and ``.preprocess``)."""
        return cls(classifier.network, classifier.preprocess, target_layer=target_layer)

    @classmethod
    def from_diagnoser(cls, diagnoser: Any, *, target_layer: str = TARGET_LAYER) -> SliceExplainer:
        """A new explainer from a ``Diagnoser`` (its ``pipeline.classifier``); see also :func:`explainer_for`."""
        return cls.from_classifier(diagnoser.pipeline.classifier, target_layer=target_layer)

    def maps_for_inputs(self, inputs: np.ndarray, *, class_idx: Sequence[int] | None = None) -> np.ndarray:
        """Grad-CAM of classifier inputs ``(n, 1, S, S)``: float32 ``(n, S, S)`` in [0, 1].

        ``class_idx`` gives the class to explain per input (default: the network's own top class).
        """
        import torch

        x_all = np.asarray(inputs, dtype=np.float32)
        if x_all.ndim != 4 or x_all.shape[1] != 1:
            raise ValueError(f"inputs must be (n, 1, S, S), got shape {x_all.shape}")
        if class_idx is not None and len(class_idx) != x_all.shape[0]:
            raise ValueError(f"class_idx has {len(class_idx)} entries for {x_all.shape[0]} inputs")
        out = np.zeros((x_all.shape[0], x_all.shape[2], x_all.shape[3]), dtype=np.float32)
        with self._lock, torch.enable_grad():
            for i in range(x_all.shape[0]):  # one at a time: the class to explain may differ per slice
                x = torch.from_numpy(x_all[i : i + 1]).to(self.device).requires_grad_(True)
                idx = None if class_idx is None else int(class_idx[i])
                cam = self._cam(x, class_idx=idx)
                arr = cam.detach().cpu().numpy() if hasattr(cam, "detach") else np.asarray(cam)
                out[i] = np.nan_to_num(arr.reshape(arr.shape[-2:]).astype(np.float32))
        return np.clip(out, 0.0, 1.0)

    def slice_maps(
        self,
        volume: CTVolume,
        mask: np.ndarray,
        indices: Sequence[int],
        *,
        class_idx: Sequence[int] | None = None,
        lung_only: bool = True,
    ) -> np.ndarray:
        """Grad-CAM of slices ``indices`` of ``volume``: float32 ``(len(indices), y, x)`` in [0, 1].

        With ``lung_only`` (default) the map is zeroed outside the lung mask: the classifier sees only lung
        pixels (the rest of its input is 0), so heat elsewhere is receptive-field spill, not evidence.
        """
        import torch
        import torch.nn.functional as F

        from covidct.report.images import check_index

        idx = [int(i) for i in indices]
        for i in idx:
            check_index(volume.n_slices, i)
        if not idx:
            return np.zeros((0, volume.shape[1], volume.shape[2]), dtype=np.float32)
        inputs = np.asarray(self.preprocess(volume, mask, indices=idx), dtype=np.float32)
        maps = self.maps_for_inputs(inputs, class_idx=class_idx)
        t = torch.from_numpy(maps[:, None])
        up = F.interpolate(t, size=(volume.shape[1], volume.shape[2]), mode="bilinear", align_corners=False)
        out = np.clip(up[:, 0].numpy(), 0.0, 1.0).astype(np.float32)
        if lung_only:
            out *= np.asarray(mask)[idx] > 0
        return out


# One explainer per diagnoser: building one deep-copies the network, too costly to repeat for every report.
# Keyed by id(diagnoser); the weak reference tells a live entry from a reused id, and a finalizer drops the
# entry when the diagnoser goes away. The entry also remembers the classifier it was built from, so swapping
# ``diagnoser.pipeline.classifier`` gives a fresh explainer.
_CACHE: dict[int, tuple[weakref.ref[Any], Any, SliceExplainer]] = {}
_CACHE_LOCK = threading.Lock()


def _forget(key: int) -> None:
    with _CACHE_LOCK:
        _CACHE.pop(key, None)


def explainer_for(diagnoser: Any) -> SliceExplainer:
    """The Grad-CAM explainer of ``diagnoser.pipeline.classifier`` at :data:`TARGET_LAYER`, built once.

    Later calls with the same diagnoser (and the same classifier) return the same explainer; it is thread-safe
    and is released with the diagnoser. Objects that cannot be weakly referenced get a new explainer per call.
    """
    classifier = diagnoser.pipeline.classifier
    key = id(diagnoser)
    with _CACHE_LOCK:
        entry = _CACHE.get(key)
        if entry is not None and entry[0]() is diagnoser and entry[1] is classifier:
            return entry[2]
        explainer = SliceExplainer.from_classifier(classifier)
        try:
            ref = weakref.ref(diagnoser)
        except TypeError:
            return explainer
        _CACHE[key] = (ref, classifier, explainer)
    if entry is None or entry[0]() is not diagnoser:
        weakref.finalize(diagnoser, _forget, key)
    return explainer
