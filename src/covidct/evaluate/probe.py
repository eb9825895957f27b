"""The "synthetic vs real" shortcut probe: can the classifier's own features tell phantoms from real CT?

A slice classifier trained on synthetic and real slices can learn "real texture" as the disease cue (a normal
real series then looks diseased). This probe measures how easily the classifier's penultimate-layer features
(global-average-pooled, before the final ``fc``) separate real slices (label 0) from synthetic ones (label 1):
an L2-regularised logistic regression, scored out of fold with stratified k-fold cross-validation. High
balanced accuracy means the information is there for the classifier to use as a shortcut; it does not prove
that the classifier uses it.

Deterministic for a given ``seed``: the subsample and the folds are drawn from ``numpy.random.default_rng``
and the fit (L-BFGS from zero) has no randomness. The two groups weigh the same in the fit (class weights),
and balanced accuracy and AUC do not depend on their sizes. Undefined values are NaN (``null`` in JSON).

    >>> from covidct.evaluate.probe import shortcut_probe                 # doctest: +SKIP
    >>> result = shortcut_probe(classifier, real_inputs, synthetic_inputs, max_per_group=400)
    >>> print(result.line())                                              # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from covidct.errors import ConfigError
from covidct.evaluate.metrics import roc_auc

if TYPE_CHECKING:
    from covidct.classify.inference import SliceClassifier

__all__ = [
    "SEPARATES",
    "ProbeResult",
    "extract_features",
    "probe_features",
    "probe_line",
    "probe_verdict",
    "shortcut_probe",
]

#: Balanced accuracy from which the verdict says the features separate synthetic from real.
SEPARATES: Final[float] = 0.9
#: Balanced accuracy from which the verdict says they partly separate them.
PARTLY: Final[float] = 0.7
#: Balanced accuracy under which the probe is below chance (e.g. the same slices in both groups).
BELOW: Final[float] = 0.35


def probe_verdict(balanced_accuracy: float) -> str:
    """The probe's balanced accuracy in plain words."""
    if math.isnan(balanced_accuracy):
        return "undefined: the probe could not be scored"
    if balanced_accuracy >= SEPARATES:
        return "the features separate synthetic from real: a shortcut is possible"
    if balanced_accuracy >= PARTLY:
        return "the features partly separate synthetic from real: a shortcut may be possible"
    if balanced_accuracy < BELOW:
        return (
            "the features do not separate synthetic from real (below chance, as when both groups hold "
            "near-identical slices): no shortcut found"
        )
    return "the features barely separate synthetic from real (near chance): no strong shortcut"


@dataclass(frozen=True)
class ProbeResult:
    """Out-of-fold scores of the synthetic-vs-real probe.

    ``accuracy`` and ``balanced_accuracy`` (mean of the two groups' recalls) use the threshold 0.5 on the
    probe's probability of "synthetic"; ``auc`` is the ROC AUC of that probability (synthetic positive).
    ``n_real`` / ``n_synthetic`` are the slices used, ``*_available`` those given before subsampling.
    ``folds_by``: ``"study"`` when the folds kept each study's slices together, ``"slice"`` otherwise (then a
    probe may also recognise the patients themselves when there are few studies).
    """

    accuracy: float
    balanced_accuracy: float
    auc: float
    n_real: int
    n_synthetic: int
    n_real_available: int
    n_synthetic_available: int
    n_features: int
    n_splits: int
    seed: int
    verdict: str
    folds_by: str = "slice"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; NaN -> ``None``."""

        def num(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "accuracy": num(self.accuracy),
            "balanced_accuracy": num(self.balanced_accuracy),
            "auc": num(self.auc),
            "n_real": self.n_real,
            "n_synthetic": self.n_synthetic,
            "n_real_available": self.n_real_available,
            "n_synthetic_available": self.n_synthetic_available,
            "n_features": self.n_features,
            "n_splits": self.n_splits,
            "folds_by": self.folds_by,
            "seed": self.seed,
            "features": "classifier penultimate layer (global average pool, before fc)",
            "method": "L2 logistic regression (C=1, balanced class weights), stratified k-fold, out of fold",
            "verdict": self.verdict,
        }

    def line(self) -> str:
        """One line for a terminal or a report."""
        return probe_line(self.to_json())


def probe_line(doc: dict[str, Any]) -> str:
    """:meth:`ProbeResult.line` from its JSON form (as read back from ``metrics.json``)."""

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    return (
        f"synthetic-vs-real probe: balanced accuracy {f(doc['balanced_accuracy'])}, accuracy "
        f"{f(doc['accuracy'])}, AUC {f(doc['auc'])} ({doc['n_real']} real CT, {doc['n_synthetic']} synthetic "
        f"slices, {doc['n_splits']}-fold by {doc.get('folds_by', 'slice')}): {doc['verdict']}"
    )


def _check_inputs(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 4 or arr.shape[1] != 1 or arr.shape[2] != arr.shape[3]:
        raise ConfigError(f"{what} must be classifier inputs (n, 1, S, S), got shape {arr.shape}")
    return arr


def extract_features(classifier: SliceClassifier, inputs: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Penultimate-layer features ``(n, d)`` float32 of classifier inputs ``(n, 1, S, S)`` in [0, 1].

    Runs the classifier's torch network (in eval mode, on its device) whatever backend it classifies with.
    """
    import torch

    from covidct.classify.networks import penultimate_features

    x = _check_inputs(inputs, "inputs")
    if x.shape[2] != classifier.image_size:
        raise ConfigError(
            f"inputs are {x.shape[2]}x{x.shape[3]} but the classifier takes {classifier.image_size} pixels"
        )
    net = classifier.network
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for i in range(0, x.shape[0], max(1, batch_size)):
                chunk = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32))
                feats = penultimate_features(net, chunk.to(device))
                out.append(feats.float().cpu().numpy())
    finally:
        net.train(was_training)
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out, axis=0).astype(np.float32)


def _as_features(a: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0 and arr.ndim < 2:
        arr = arr.reshape(0, 0)
    if arr.ndim != 2:
        raise ConfigError(f"{what} must be a 2-D array (n, d), got shape {arr.shape}")
    return arr


def _check_groups(n_real: int, n_synthetic: int, *, n_splits: int, max_per_group: int | None) -> None:
    if n_splits < 2:
        raise ConfigError(f"the probe needs n_splits >= 2, got {n_splits}")
    if max_per_group is not None and max_per_group < n_splits:
        raise ConfigError(f"max_per_group ({max_per_group}) must be at least n_splits ({n_splits})")
    if min(n_real, n_synthetic) < n_splits:
        empty = [name for name, n in (("real", n_real), ("synthetic", n_synthetic)) if n == 0]
        why = (
            "both groups are empty"
            if len(empty) == 2
            else f"the {empty[0]} group is empty"
            if empty
            else "a group is too small"
        )
        raise ConfigError(
            f"synthetic-vs-real probe: {why} ({n_real} real, {n_synthetic} synthetic slices); it needs at "
            f"least {n_splits} slices of each group ({n_splits}-fold cross-validation): evaluate real CT "
            "and synthetic studies together"
        )


def _subsample(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


def _folds(
    y: np.ndarray, n_splits: int, rng: np.random.Generator, studies: np.ndarray | None = None
) -> np.ndarray:
    """Stratified fold number of every sample: each group's samples (or, with ``studies``, its studies)
    shuffled, then dealt round-robin."""
    fold = np.empty(y.size, dtype=np.int64)
    for g in (0, 1):
        idx = np.flatnonzero(y == g)
        if studies is None:
            fold[rng.permutation(idx)] = np.arange(idx.size) % n_splits
            continue
        names, which = np.unique(studies[idx], return_inverse=True)
        dealt = np.empty(names.size, dtype=np.int64)
        dealt[rng.permutation(names.size)] = np.arange(names.size) % n_splits
        fold[idx] = dealt[which]
    return fold


def _study_ids(ids: Sequence[object] | np.ndarray | None, n: int, what: str) -> np.ndarray | None:
    if ids is None:
        return None
    arr = np.asarray([str(v) for v in ids])
    if arr.shape != (n,):
        raise ConfigError(f"{what} must name the study of each of the {n} slices, got {arr.size} names")
    return arr


def _fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray, c: float) -> np.ndarray:
    """``(bias, coef...)`` of the weighted L2 logistic regression (scikit-learn's objective with ``C=c``)."""
    from scipy.optimize import minimize
    from scipy.special import expit

    total = float(weight.sum())
    lam = 1.0 / (c * total)  # 0.5 |w|^2 + C sum(w_i loss_i), divided by C sum(w_i)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ theta[1:] + theta[0]
        loss = float((weight * (np.logaddexp(0.0, z) - y * z)).sum()) / total
        g = weight * (expit(z) - y) / total
        coef = theta[1:]
        grad = np.concatenate([[g.sum()], x.T @ g + lam * coef])
        return loss + 0.5 * lam * float(coef @ coef), grad

    res = minimize(objective, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return np.asarray(res.x, dtype=np.float64)


def probe_features(
    real: np.ndarray,
    synthetic: np.ndarray,
    *,
    n_splits: int = 5,
    seed: int = 0,
    max_per_group: int | None = None,
    c: float = 1.0,
    real_studies: Sequence[object] | np.ndarray | None = None,
    synthetic_studies: Sequence[object] | np.ndarray | None = None,
) -> ProbeResult:
    """Cross-validated logistic-regression probe of features ``(n_real, d)`` vs ``(n_synthetic, d)``.

    Each group is first subsampled to ``max_per_group`` (seeded; ``None``: all). Features are standardised
    on each training fold. ``real_studies`` / ``synthetic_studies``: the study each row comes from; when
    both are given and each group has at least ``n_splits`` studies, the folds keep studies whole (the probe
    then cannot score by recognising a patient it trained on), else they split slices. Raises
    :class:`ConfigError` when a group has fewer than ``n_splits`` samples (every fold needs one of each) or
    the feature widths differ.
    """
    from scipy.special import expit

    if c <= 0:
        raise ConfigError(f"the probe's C must be > 0, got {c}")
    r = _as_features(real, "real features")
    s = _as_features(synthetic, "synthetic features")
    n_r, n_s = r.shape[0], s.shape[0]
    _check_groups(n_r, n_s, n_splits=n_splits, max_per_group=max_per_group)
    if r.shape[1] != s.shape[1]:
        raise ConfigError(f"real and synthetic features differ in width: {r.shape[1]} vs {s.shape[1]}")
    r_ids = _study_ids(real_studies, n_r, "real_studies")
    s_ids = _study_ids(synthetic_studies, n_s, "synthetic_studies")
    rng = np.random.default_rng(seed)
    r_pick, s_pick = _subsample(n_r, max_per_group, rng), _subsample(n_s, max_per_group, rng)
    r, s = r[r_pick], s[s_pick]
    studies = None
    if r_ids is not None and s_ids is not None:
        r_ids, s_ids = r_ids[r_pick], s_ids[s_pick]
        if min(np.unique(r_ids).size, np.unique(s_ids).size) >= n_splits:
            studies = np.concatenate([np.char.add("real:", r_ids), np.char.add("synthetic:", s_ids)])
    x = np.concatenate([r, s], axis=0)
    if not np.isfinite(x).all():
        raise ConfigError("synthetic-vs-real probe: the features hold NaN or infinite values")
    y = np.concatenate([np.zeros(len(r)), np.ones(len(s))])
    fold = _folds(y, n_splits, rng, studies)
    prob = np.full(y.size, np.nan)
    for k in range(n_splits):
        train, test = fold != k, fold == k
        mean = x[train].mean(axis=0)
        std = x[train].std(axis=0)
        std[std < 1e-12] = 1.0
        xt = (x[train] - mean) / std
        yt = y[train]
        n_pos = float(yt.sum())
        weight = np.where(yt == 1, yt.size / (2 * n_pos), yt.size / (2 * (yt.size - n_pos)))
        theta = _fit_logistic(xt, yt, weight, c)
        prob[test] = expit(((x[test] - mean) / std) @ theta[1:] + theta[0])
    pred = prob >= 0.5
    truth = y == 1
    accuracy = float(np.mean(pred == truth))
    balanced = float((np.mean(pred[truth]) + np.mean(~pred[~truth])) / 2)
    return ProbeResult(
        accuracy=accuracy,
        balanced_accuracy=balanced,
        auc=roc_auc(truth, prob),
        n_real=len(r),
        n_synthetic=len(s),
        n_real_available=n_r,
        n_synthetic_available=n_s,
        n_features=int(x.shape[1]),
        n_splits=n_splits,
        seed=seed,
        verdict=probe_verdict(balanced),
        folds_by="slice" if studies is None else "study",
    )


def shortcut_probe(
    classifier: SliceClassifier,
    real_inputs: np.ndarray,
    synthetic_inputs: np.ndarray,
    *,
    n_splits: int = 5,
    seed: int = 0,
    max_per_group: int | None = None,
    batch_size: int = 32,
    real_studies: Sequence[object] | np.ndarray | None = None,
    synthetic_studies: Sequence[object] | np.ndarray | None = None,
) -> ProbeResult:
    """The probe on classifier inputs: real ``(n, 1, S, S)`` (label 0) vs synthetic (label 1), in [0, 1].

    Each group is subsampled to ``max_per_group`` before its features are taken (seeded as in
    :func:`probe_features`, which does the rest). Raises :class:`ConfigError` when a group is empty or has
    fewer than ``n_splits`` slices. ``real_studies`` / ``synthetic_studies``: see :func:`probe_features`.
    """
    r = _check_inputs(real_inputs, "real inputs")
    s = _check_inputs(synthetic_inputs, "synthetic inputs")
    _check_groups(len(r), len(s), n_splits=n_splits, max_per_group=max_per_group)
    r_ids = _study_ids(real_studies, len(r), "real_studies")
    s_ids = _study_ids(synthetic_studies, len(s), "synthetic_studies")
    rng = np.random.default_rng(seed)
    r_idx = _subsample(len(r), max_per_group, rng)
    s_idx = _subsample(len(s), max_per_group, rng)
    result = probe_features(
        extract_features(classifier, r[r_idx], batch_size=batch_size),
        extract_features(classifier, s[s_idx], batch_size=batch_size),
        n_splits=n_splits,
        seed=seed,
        real_studies=None if r_ids is None else r_ids[r_idx],
        synthetic_studies=None if s_ids is None else s_ids[s_idx],
    )
    return replace(result, n_real_available=len(r), n_synthetic_available=len(s))
