"""The patient rule: slice predictions (superior -> inferior) -> one diagnosis, with its trace.

This is the paper's "customized discriminant rule" (first place, 2021 ICASSP SPGC on COVID-CT-MD):

1. **Truncation.** Slice 0 is the most superior. The first ``head`` fraction (superior end, near the apex) and
   the last ``tail`` fraction (inferior end, near the diaphragm) of the sequence are dropped. For ``n`` slices
   the kept range is the half-open interval ``[start, stop)`` with::

       start = floor(n * head + 1e-9)
       stop  = n - floor(n * tail + 1e-9)

   (the ``1e-9`` only protects exact products such as ``100 * 0.29 = 28.999999999999996`` from binary
   rounding). With the defaults (10 % / 14 %) and 148 slices this keeps ``[14, 128)``; 1 to 7 slices keep
   all of them. Because ``head + tail < 1`` the range is never empty (``floor(a) + floor(b) <= floor(a + b)
   < n``), but it can hold no *classified* slice (diagnosis passes NaN rows); then the whole sequence is
   used instead and ``Decision.truncation_fallback`` is ``True`` (``kept_range`` has the same guard).
2. **Counting.** Slice predictions inside the kept range are counted per class. Unclassified slices (NaN
   probability rows, or label ``-1``) are ignored: they count neither in the class counts nor in the kept
   length used for fractions (``fractions = counts / number of classified kept slices``).
3. **Rule** (variant ``"full"`` and ``"no_truncation"``):

   - if COVID-19 or CAP has the most slices, answer it (branch ``"majority"``);
   - if normal has strictly the most slices and COVID-19 + CAP > ``threshold`` (20 %) of the kept length,
     answer COVID-19 or CAP, whichever has more slices (branch ``"abnormal_fraction"``);
   - otherwise answer normal (branch ``"normal"``). Exactly 20 % is *not* above 20 %: normal.

**Ties** (the paper does not say; these are our documented choices). When classes tie for the most slices
the winner is taken in the order COVID-19, CAP, normal: a COVID-19/CAP tie answers COVID-19; a tie between
normal and an abnormal class answers the abnormal class (normal must have *strictly* the most slices to reach
the 20 % test; with the default threshold a tied abnormal class is at least a third of the slices anyway, so
the 20 % test would also answer abnormal). In the ``"abnormal_fraction"`` branch a COVID-19/CAP tie answers
COVID-19.

**Variants** (the paper's Table 2 ablation): ``"full"`` (truncation + rule), ``"no_truncation"`` (the rule on
the whole sequence), ``"no_rule"`` (plain majority of the kept slices, same tie order; branch
``"plain_majority"``).

**Lesion gate** (ours, not the paper's; off unless a pipeline's card or the caller sets it): with
``lesion_gate = t > 0`` and each slice's lesion fraction ``f`` (lesion pixels / lung pixels, from a lesion
model that never saw the classifier's training labels), the classifier's COVID-19 and CAP probabilities of a
slice are scaled by ``min(1, f / t)`` and normal takes the rest (:func:`gate_by_lesions`) before the rule
counts. A slice without visible lesion therefore cannot count as diseased however the classifier scored it;
``Decision.gated_slices`` counts the kept slices whose label the gate turned to normal.

**Degenerate inputs.** No slices, or no classified slice at all, raise :class:`NoSlicesError` (an
:class:`~covidct.errors.InputError` and a :class:`ValueError`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from covidct.errors import InputError
from covidct.registry import (
    ABNORMAL_FRACTION_THRESHOLD,
    CLASS_NAMES,
    DISPLAY_NAMES,
    NUM_CLASSES,
    TRUNCATE_HEAD,
    TRUNCATE_TAIL,
    Diagnosis,
)

__all__ = [
    "VARIANTS",
    "Decision",
    "NoSlicesError",
    "decide",
    "gate_by_lesions",
    "kept_range",
    "slice_labels",
]

#: The ablation variants of the paper's Table 2, in the order of that table.
VARIANTS: Final[tuple[str, ...]] = ("no_truncation", "no_rule", "full")
#: Label of a slice that was not classified (NaN probability row).
UNCLASSIFIED: Final[int] = -1
#: Winner order when classes tie for the most slices: COVID-19, then CAP, then normal.
_TIE_ORDER: Final[tuple[int, ...]] = (int(Diagnosis.COVID19), int(Diagnosis.CAP), int(Diagnosis.NORMAL))
_EPS: Final[float] = 1e-9


class NoSlicesError(InputError, ValueError):
    """There is no classified slice to decide from (empty series, or every probability row NaN)."""


@dataclass(frozen=True)
class Decision:
    """A patient-level diagnosis and the trace of how the rule reached it.

    ``slice_predictions`` holds every slice (superior -> inferior), ``-1`` where a slice was not classified.
    ``kept`` is the 0-based half-open range ``[start, stop)``; :meth:`explain` prints it 1-based and
    inclusive, as a radiologist counts slices. ``counts``/``fractions`` are within the kept range, over
    classified slices only.
    """

    diagnosis: str
    label: int
    slice_predictions: tuple[int, ...]
    kept: tuple[int, int]
    counts: dict[str, int]
    fractions: dict[str, float]
    branch: str
    variant: str
    params: dict[str, float]
    truncation_fallback: bool = False
    gated_slices: int = 0

    @property
    def n_slices(self) -> int:
        return len(self.slice_predictions)

    @property
    def kept_length(self) -> int:
        """Number of classified slices in the kept range (the denominator of ``fractions``)."""
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        """JSON-ready trace: kept range/slices, counts, fractions, branch, variant, params, explanation."""
        start, stop = self.kept
        return {
            "diagnosis": self.diagnosis,
            "label": self.label,
            "n_slices": self.n_slices,
            "kept_range": [start, stop],
            "kept_slices": list(range(start, stop)),
            "counts": dict(self.counts),
            "fractions": {k: round(v, 6) for k, v in self.fractions.items()},
            "branch": self.branch,
            "variant": self.variant,
            "params": dict(self.params),
            "truncation_fallback": self.truncation_fallback,
            "gated_slices": self.gated_slices,
            "explanation": self.explain(),
        }

    def explain(self) -> str:
        """The trace in words, e.g. ``kept slices 15-128 of 148; 60 normal, 2 CAP, 51 COVID-19; normal is the
        majority but COVID-19 + CAP = 46.9% > 20% -> COVID-19``."""
        start, stop = self.kept
        n = self.n_slices
        if self.variant == "no_truncation":
            where = f"all {n} slices kept (no truncation)"
        elif self.truncation_fallback:
            where = f"truncation would leave no classified slice; all {n} slices used"
        else:
            where = f"kept slices {start + 1}-{stop} of {n}"
        unclassified = sum(1 for p in self.slice_predictions[start:stop] if p == UNCLASSIFIED)
        if unclassified:
            where += f" ({unclassified} not classified)"
        counts = ", ".join(f"{self.counts[c]} {d if c != 'normal' else c}" for c, d in _names())
        answer = DISPLAY_NAMES[self.label]
        abnormal = self.counts["cap"] + self.counts["covid19"]
        frac = 100.0 * abnormal / self.kept_length
        thr = 100.0 * self.params["threshold"]
        if self.branch == "majority":
            why = f"{answer} has the most slices -> {answer}"
        elif self.branch == "abnormal_fraction":
            why = f"normal is the majority but COVID-19 + CAP = {frac:.1f}% > {thr:g}% -> {answer}"
        elif self.branch == "normal":
            why = f"normal is the majority and COVID-19 + CAP = {frac:.1f}% <= {thr:g}% -> Normal"
        else:  # plain_majority
            why = f"plain majority (no rule) -> {answer}"
        gate = self.params.get("lesion_gate", 0.0)
        if gate > 0:
            where += (
                f"; lesion gate {100.0 * gate:g}% of the lung: {self.gated_slices} kept slice(s) without "
                "that much lesion counted normal"
            )
        return f"{where}; {counts}; {why}"


def _names() -> list[tuple[str, str]]:
    return list(zip(CLASS_NAMES, DISPLAY_NAMES, strict=True))


def _check_params(head: float, tail: float, threshold: float) -> None:
    for name, value in (("head", head), ("tail", tail)):
        if not (math.isfinite(value) and 0.0 <= value < 1.0):
            raise ValueError(f"{name} truncation fraction must be in [0, 1), got {value!r}")
    if head + tail >= 1.0:
        raise ValueError(f"head + tail must be < 1 (got {head} + {tail}): nothing would be kept")
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")


def kept_range(n: int, *, head: float = TRUNCATE_HEAD, tail: float = TRUNCATE_TAIL) -> tuple[int, int]:
    """Slices ``[start, stop)`` kept after truncation of ``n`` slices (slice 0 most superior).

    ``start = floor(n*head)``, ``stop = n - floor(n*tail)``; if that is empty the whole range ``(0, n)`` is
    returned (the fallback :func:`decide` records). ``n`` must be >= 1.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise NoSlicesError(f"a study needs at least one slice to decide from, got n={n!r}")
    n = int(n)
    _check_params(head, tail, 0.0)
    start = math.floor(n * head + _EPS)
    stop = n - math.floor(n * tail + _EPS)
    if start >= stop:
        return (0, n)
    return (start, stop)


def slice_labels(predictions: Sequence[int] | Sequence[float] | np.ndarray) -> np.ndarray:
    """Normalise predictions to an ``(n,)`` int array of labels, ``-1`` for unclassified slices.

    Accepts ``(n,)`` labels 0/1/2 (``-1`` or NaN = unclassified) or ``(n, 3)`` probabilities in the order
    normal, cap, covid19 (argmax per row; a row with any NaN = unclassified).
    """
    arr = np.asarray(predictions)
    if arr.dtype == object:
        raise ValueError("slice predictions must be numeric labels (n,) or probabilities (n, 3)")
    if arr.ndim == 2:
        if arr.shape[1] != NUM_CLASSES:
            raise ValueError(
                f"slice probabilities must have {NUM_CLASSES} columns (normal, cap, covid19), got {arr.shape}"
            )
        probs = arr.astype(np.float64)
        bad = np.isnan(probs).any(axis=1)
        labels = np.argmax(np.where(np.isnan(probs), -np.inf, probs), axis=1).astype(np.int64)
        labels[bad] = UNCLASSIFIED
        return labels
    if arr.ndim != 1:
        raise ValueError(f"slice predictions must be (n,) labels or (n, 3) probabilities, not {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind == "f":
        nan = np.isnan(arr)
        filled = np.where(nan, UNCLASSIFIED, arr)
        if not np.all(filled == np.round(filled)):
            raise ValueError("1-D slice predictions must be integer labels; pass (n, 3) for probabilities")
        labels = filled.astype(np.int64)
    elif arr.dtype.kind in "iub":
        labels = arr.astype(np.int64)
    else:
        raise ValueError(f"slice predictions must be numeric, got dtype {arr.dtype}")
    if np.any((labels < UNCLASSIFIED) | (labels >= NUM_CLASSES)):
        raise ValueError(
            "slice labels must be 0 (normal), 1 (cap), 2 (covid19) or -1 (unclassified), "
            f"got {sorted(set(arr.tolist()))}"
        )
    return labels


def gate_by_lesions(
    probabilities: np.ndarray, lesion_fraction: np.ndarray, *, min_fraction: float
) -> np.ndarray:
    """Slice probabilities with the COVID-19 and CAP columns scaled by ``min(1, f / min_fraction)``.

    ``probabilities``: ``(n, 3)`` (normal, cap, covid19; NaN rows stay NaN); ``lesion_fraction``: ``(n,)``,
    each slice's lesion pixels over its lung pixels (0 where the slice has no lung). Normal takes the mass the
    scaling removes, so each row still sums to 1. ``min_fraction`` must be in (0, 1).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    frac = np.asarray(lesion_fraction, dtype=np.float64).reshape(-1)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES:
        raise ValueError(f"the lesion gate needs (n, {NUM_CLASSES}) probabilities, got shape {probs.shape}")
    if frac.shape[0] != probs.shape[0]:
        raise ValueError(f"{frac.shape[0]} lesion fractions for {probs.shape[0]} slices; give one per slice")
    if not (math.isfinite(min_fraction) and 0.0 < min_fraction < 1.0):
        raise ValueError(f"lesion gate must be a lung fraction in (0, 1), got {min_fraction!r}")
    if np.any(~np.isfinite(frac)) or np.any(frac < 0):
        raise ValueError("lesion fractions must be finite and >= 0")
    weight = np.minimum(1.0, frac / min_fraction)[:, None]
    out = probs.copy()
    out[:, 1:] = probs[:, 1:] * weight
    out[:, 0] = 1.0 - out[:, 1:].sum(axis=1)
    return out


def _winner(counts: np.ndarray, candidates: Sequence[int]) -> int:
    """Class with the most slices among ``candidates``; ties resolved by ``_TIE_ORDER``."""
    best = max(int(counts[c]) for c in candidates)
    return next(c for c in _TIE_ORDER if c in candidates and int(counts[c]) == best)


def decide(
    predictions: Sequence[int] | Sequence[float] | np.ndarray,
    *,
    variant: str = "full",
    head: float = TRUNCATE_HEAD,
    tail: float = TRUNCATE_TAIL,
    threshold: float = ABNORMAL_FRACTION_THRESHOLD,
    lesion_fraction: np.ndarray | None = None,
    lesion_gate: float = 0.0,
) -> Decision:
    """Apply the patient rule (see the module docstring) to one study's slice predictions.

    ``predictions``: ``(n,)`` int labels or ``(n, 3)`` probabilities, superior -> inferior; NaN rows (or
    label ``-1``) are slices that were not classified. ``variant``: ``"full"``, ``"no_truncation"`` or
    ``"no_rule"``. ``head``/``tail``: fractions dropped at the superior/inferior end; ``threshold``: fraction
    of the kept length that COVID-19 + CAP must exceed when normal is the majority. ``lesion_gate`` > 0 (with
    ``(n, 3)`` probabilities and one ``lesion_fraction`` per slice) applies :func:`gate_by_lesions` first.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}")
    _check_params(head, tail, threshold)
    before: np.ndarray | None = None
    if lesion_gate:
        if lesion_fraction is None:
            raise ValueError("the lesion gate needs each slice's lesion fraction (lesion_fraction)")
        before = slice_labels(predictions)
        predictions = gate_by_lesions(np.asarray(predictions), lesion_fraction, min_fraction=lesion_gate)
    labels = slice_labels(predictions)
    n = int(labels.size)
    if n == 0:
        raise NoSlicesError("no slice predictions: the study has no slices to decide from")
    if not np.any(labels >= 0):
        raise NoSlicesError(f"none of the {n} slices was classified (all probability rows are NaN)")

    fallback = False
    if variant == "no_truncation":
        start, stop = 0, n
    else:
        start = math.floor(n * head + _EPS)
        stop = n - math.floor(n * tail + _EPS)
        if start >= stop or not np.any(labels[start:stop] >= 0):
            start, stop, fallback = 0, n, True
    kept = labels[start:stop]
    counts = np.bincount(kept[kept >= 0], minlength=NUM_CLASSES)
    total = int(counts.sum())

    normal, cap, covid = int(Diagnosis.NORMAL), int(Diagnosis.CAP), int(Diagnosis.COVID19)
    if variant == "no_rule":
        label, branch = _winner(counts, (normal, cap, covid)), "plain_majority"
    else:
        top = _winner(counts, (normal, cap, covid))
        if top != normal:
            label, branch = top, "majority"
        elif (counts[cap] + counts[covid]) / total > threshold:
            label, branch = _winner(counts, (cap, covid)), "abnormal_fraction"
        else:
            label, branch = normal, "normal"

    params = {"head": float(head), "tail": float(tail), "threshold": float(threshold)}
    gated = 0
    if before is not None:
        params["lesion_gate"] = float(lesion_gate)
        gated = int(np.sum((before[start:stop] > 0) & (labels[start:stop] == 0)))
    return Decision(
        diagnosis=CLASS_NAMES[label],
        label=label,
        slice_predictions=tuple(int(v) for v in labels),
        kept=(start, stop),
        counts={name: int(counts[i]) for i, name in enumerate(CLASS_NAMES)},
        fractions={name: float(counts[i]) / total for i, name in enumerate(CLASS_NAMES)},
        branch=branch,
        variant=variant,
        params=params,
        truncation_fallback=fallback,
        gated_slices=gated,
    )
