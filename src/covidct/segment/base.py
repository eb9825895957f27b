"""The one segmentation interface: load once, apply to many volumes (as lungmask's ``LMInferer``)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from covidct.io.volume import CTVolume


@runtime_checkable
class Segmenter(Protocol):
    """Anything that turns a CT volume into a lung mask.

    ``apply`` returns a uint8 array shaped like ``volume.hu`` with values from
    :class:`covidct.registry.LungLabel`: 0 background, 1 right lung, 2 left lung (the patient's right/left).
    """

    name: str

    def apply(self, volume: CTVolume) -> np.ndarray: ...
