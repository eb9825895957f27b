"""covidct.classify: the slice classifier (networks, inference; backends live in ``backends``).

``SliceClassifier`` and ``build_classifier`` are imported lazily: ``import covidct.classify`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from covidct.classify.inference import SliceClassifier
    from covidct.classify.networks import build_classifier

__all__ = ["SliceClassifier", "build_classifier"]


def __getattr__(name: str) -> Any:
    if name == "SliceClassifier":
        from covidct.classify.inference import SliceClassifier

        return SliceClassifier
    if name == "build_classifier":
        from covidct.classify.networks import build_classifier

        return build_classifier
    raise AttributeError(f"module 'covidct.classify' has no attribute {name!r}")
