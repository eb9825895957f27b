"""The patient rule: branches, boundaries, ties, degenerate inputs, variants, trace, properties."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidct.decide import VARIANTS, Decision, NoSlicesError, decide, kept_range, slice_labels
from covidct.errors import InputError

N, C, V = 0, 1, 2  # normal, cap, covid19


def padded(core: list[int], *, pad: int = N) -> list[int]:
    """Put ``core`` (length 76) in the kept range of a 100-slice series: 10 head + 76 + 14 tail slices."""
    assert len(core) == 76
    return [pad] * 10 + core + [pad] * 14


# --- truncation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, (0, 1)), (7, (0, 7)), (8, (0, 7)), (10, (1, 9)), (50, (5, 43)), (100, (10, 86)), (148, (14, 128))],
)
def test_kept_range_defaults(n: int, expected: tuple[int, int]) -> None:
    assert kept_range(n) == expected


def test_kept_range_exact_products_not_lost_to_binary_rounding() -> None:
    # 100 * 0.29 = 28.999999999999996 in binary floating point; the documented rule is floor(29) = 29.
    assert kept_range(100, head=0.29, tail=0.0) == (29, 100)
    assert kept_range(100, head=0.0, tail=0.29) == (0, 71)


def test_kept_range_rejects_bad_input() -> None:
    with pytest.raises(NoSlicesError, match="at least one slice"):
        kept_range(0)
    with pytest.raises(ValueError, match="head \\+ tail"):
        kept_range(10, head=0.5, tail=0.5)
    with pytest.raises(ValueError, match="head"):
        kept_range(10, head=-0.1)


def test_kept_range_never_empty_and_inside() -> None:
    rng = np.random.default_rng(1)
    for _ in range(2000):
        n = int(rng.integers(1, 2000))
        head, tail = (float(v) for v in rng.uniform(0, 0.4999, size=2))
        start, stop = kept_range(n, head=head, tail=tail)
        assert 0 <= start < stop <= n


def test_truncated_slices_are_ignored() -> None:
    # All disease in the dropped head and tail, normal in the kept range -> normal under "full".
    preds = [V] * 10 + [N] * 76 + [V] * 14
    assert decide(preds).diagnosis == "normal"
    assert decide(preds).counts == {"normal": 76, "cap": 0, "covid19": 0}
    # Without truncation the 24 COVID-19 slices are 24% > 20% -> COVID-19.
    d = decide(preds, variant="no_truncation")
    assert (d.diagnosis, d.branch, d.kept) == ("covid19", "abnormal_fraction", (0, 100))


# --- branches ---------------------------------------------------------------------------------------------


def test_majority_covid() -> None:
    d = decide(padded([V] * 40 + [N] * 30 + [C] * 6))
    assert (d.diagnosis, d.label, d.branch) == ("covid19", 2, "majority")


def test_majority_cap() -> None:
    d = decide(padded([C] * 40 + [N] * 30 + [V] * 6))
    assert (d.diagnosis, d.label, d.branch) == ("cap", 1, "majority")


def test_abnormal_fraction_covid_and_cap() -> None:
    d = decide(padded([N] * 50 + [V] * 20 + [C] * 6))  # 26/76 = 34% > 20%
    assert (d.diagnosis, d.branch) == ("covid19", "abnormal_fraction")
    d = decide(padded([N] * 50 + [V] * 6 + [C] * 20))
    assert (d.diagnosis, d.branch) == ("cap", "abnormal_fraction")


def test_normal_branch() -> None:
    d = decide(padded([N] * 66 + [V] * 10))  # 10/76 = 13% <= 20%
    assert (d.diagnosis, d.label, d.branch) == ("normal", 0, "normal")


def test_exactly_twenty_percent_is_normal_and_just_above_is_abnormal() -> None:
    exact = [N] * 8 + [V] * 1 + [C] * 1  # 10 slices, no truncation: 2/10 = 20% exactly
    d = decide(exact, variant="no_truncation")
    assert (d.diagnosis, d.branch) == ("normal", "normal")
    assert d.fractions["cap"] + d.fractions["covid19"] == pytest.approx(0.2)
    above = [N] * 7 + [V] * 2 + [C] * 1  # 3/10 = 30% (first count above 20% at n=10)
    assert decide(above, variant="no_truncation").diagnosis == "covid19"
    # in the kept range of 100 slices (76 kept): 20% of 76 = 15.2 slices is the limit
    assert decide(padded([N] * 61 + [V] * 15)).diagnosis == "normal"  # 15/76 = 19.7%
    assert decide(padded([N] * 60 + [V] * 16)).diagnosis == "covid19"  # 16/76 = 21.1%
    # a threshold parameter other than the default moves the boundary
    assert decide(padded([N] * 60 + [V] * 16), threshold=0.25).diagnosis == "normal"


# --- ties -------------------------------------------------------------------------------------------------


def test_tie_covid_cap_majority_answers_covid() -> None:
    d = decide(padded([V] * 30 + [C] * 30 + [N] * 16))
    assert (d.diagnosis, d.branch) == ("covid19", "majority")


def test_tie_normal_vs_abnormal_answers_abnormal() -> None:
    d = decide(padded([N] * 38 + [C] * 38))
    assert (d.diagnosis, d.branch) == ("cap", "majority")
    d = decide(padded([N] * 30 + [V] * 30 + [C] * 16))
    assert (d.diagnosis, d.branch) == ("covid19", "majority")


def test_tie_covid_cap_in_fraction_branch_answers_covid() -> None:
    d = decide(padded([N] * 56 + [V] * 10 + [C] * 10))
    assert (d.diagnosis, d.branch) == ("covid19", "abnormal_fraction")


def test_no_rule_ties_follow_same_order() -> None:
    assert decide([N, N, V, V], variant="no_rule").diagnosis == "covid19"
    assert decide([N, N, C, C], variant="no_rule").diagnosis == "cap"
    assert decide([C, V], variant="no_rule").diagnosis == "covid19"


# --- variants ---------------------------------------------------------------------------------------------


def test_no_rule_is_plain_majority() -> None:
    preds = padded([N] * 50 + [V] * 26)  # full rule -> covid19 (34%), plain majority -> normal
    assert decide(preds).diagnosis == "covid19"
    d = decide(preds, variant="no_rule")
    assert (d.diagnosis, d.branch, d.kept) == ("normal", "plain_majority", (10, 86))


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        decide([0, 1], variant="majority")


# --- degenerate inputs ------------------------------------------------------------------------------------


def test_empty_input_raises() -> None:
    with pytest.raises(NoSlicesError, match="no slice"):
        decide([])
    with pytest.raises(InputError):
        decide(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        decide(np.zeros(0, dtype=int))


def test_all_nan_raises() -> None:
    with pytest.raises(NoSlicesError, match="none of the 4 slices"):
        decide(np.full((4, 3), np.nan))


def test_single_slice_and_short_series_keep_everything() -> None:
    d = decide([C])
    assert (d.diagnosis, d.kept, d.truncation_fallback) == ("cap", (0, 1), False)
    d = decide([N, V, V])
    assert (d.diagnosis, d.kept) == ("covid19", (0, 3))


def test_kept_range_all_unclassified_falls_back_to_whole_sequence() -> None:
    probs = np.full((10, 3), np.nan)
    probs[0] = [0.1, 0.1, 0.8]  # only the (dropped) first slice was classified
    d = decide(probs)
    assert d.truncation_fallback
    assert (d.diagnosis, d.kept, d.counts["covid19"]) == ("covid19", (0, 10), 1)
    assert "all 10 slices used" in d.explain()


def test_nan_rows_ignored_in_counts_and_fractions() -> None:
    probs = np.tile(np.array([[0.9, 0.05, 0.05]]), (20, 1))
    probs[2:5] = [0.1, 0.1, 0.8]  # 3 COVID-19 rows in the kept range [2, 18)
    probs[5:12] = np.nan  # 7 unclassified rows
    d = decide(probs)
    assert d.counts == {"normal": 6, "cap": 0, "covid19": 3}
    assert d.fractions["covid19"] == pytest.approx(3 / 9)  # denominator: classified kept slices
    assert d.diagnosis == "covid19"  # 33% > 20%
    assert d.slice_predictions[5] == -1
    assert "(7 not classified)" in d.explain()


def test_bad_labels_and_shapes() -> None:
    with pytest.raises(ValueError, match="slice labels"):
        decide([0, 3])
    with pytest.raises(ValueError, match="columns"):
        decide(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="integer labels"):
        decide([0.5, 1.0])
    with pytest.raises(ValueError, match="threshold"):
        decide([0], threshold=1.5)


def test_probabilities_argmax_equals_labels() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=40)
    assert decide(probs) == decide(probs.argmax(axis=1))
    assert list(slice_labels(probs)) == list(probs.argmax(axis=1))


# --- trace ------------------------------------------------------------------------------------------------


def test_explain_and_json_trace() -> None:
    preds = [N] * 14 + [N] * 60 + [C] * 2 + [V] * 51 + [N] * 21  # 148 slices, kept [14, 128)
    d = decide(preds)
    assert isinstance(d, Decision)
    assert d.explain() == (
        "kept slices 15-128 of 148; 61 normal, 2 CAP, 51 COVID-19; "
        "normal is the majority but COVID-19 + CAP = 46.5% > 20% -> COVID-19"
    )
    doc = d.to_json()
    json.dumps(doc)  # JSON-serialisable
    assert doc["kept_range"] == [14, 128]
    assert doc["kept_slices"] == list(range(14, 128))
    assert doc["counts"] == {"normal": 61, "cap": 2, "covid19": 51}
    assert doc["branch"] == "abnormal_fraction" and doc["variant"] == "full"
    assert doc["params"] == {"head": 0.1, "tail": 0.14, "threshold": 0.2}
    assert doc["explanation"] == d.explain()
    assert "<= 20% -> Normal" in decide(padded([N] * 70 + [V] * 6)).explain()
    assert "no truncation" in decide(preds, variant="no_truncation").explain()
    assert "plain majority" in decide(preds, variant="no_rule").explain()


# --- properties (seeded random cases; hypothesis is not a project dependency) ------------------------------


def random_cases(seed: int, count: int = 300) -> list[np.ndarray]:
    """Label sequences of 1-120 slices with varied class mixes (some one-class, some balanced)."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        n = int(rng.integers(1, 121))
        mix = rng.dirichlet([0.5, 0.5, 0.5])
        cases.append(rng.choice(3, size=n, p=mix))
    return cases


@pytest.mark.parametrize("variant", VARIANTS)
def test_permuting_kept_slices_does_not_change_decision(variant: str) -> None:
    rng = np.random.default_rng(7)
    for preds in random_cases(1):
        d = decide(preds, variant=variant)
        start, stop = d.kept
        arr = preds.copy()
        arr[start:stop] = rng.permutation(arr[start:stop])
        d2 = decide(arr, variant=variant)
        assert (d2.diagnosis, d2.branch, d2.counts) == (d.diagnosis, d.branch, d.counts)


@pytest.mark.parametrize("variant", VARIANTS)
def test_decision_invariants(variant: str) -> None:
    for preds in random_cases(2):
        d = decide(preds, variant=variant)
        start, stop = d.kept
        assert d.kept_length == stop - start == sum(d.counts.values())
        assert sum(d.fractions.values()) == pytest.approx(1.0)
        # never a class without kept slices; never beaten by a class with more slices unless the rule
        # deliberately overrode a normal majority
        assert d.counts[d.diagnosis] > 0
        if d.diagnosis != "normal" and d.branch != "abnormal_fraction":
            assert d.counts[d.diagnosis] == max(d.counts.values())
        if d.diagnosis == "normal" and variant != "no_rule":
            assert d.counts["normal"] > max(d.counts["cap"], d.counts["covid19"])
            assert (d.counts["cap"] + d.counts["covid19"]) / d.kept_length <= 0.2


def test_full_agrees_with_plain_majority_when_abnormal_wins() -> None:
    for preds in random_cases(3):
        full, plain = decide(preds), decide(preds, variant="no_rule")
        if plain.diagnosis != "normal":
            assert full.diagnosis == plain.diagnosis
        if full.diagnosis == "normal":
            assert plain.diagnosis == "normal"


def test_more_covid_slices_never_turn_covid_into_another_answer() -> None:
    rng = np.random.default_rng(4)
    for preds in random_cases(4):
        d = decide(preds, variant="no_truncation")
        arr = preds.copy()
        arr[np.flatnonzero(arr == N)[: int(rng.integers(1, 30))]] = V
        if d.diagnosis == "covid19":
            assert decide(arr, variant="no_truncation").diagnosis == "covid19"


# --- lesion gate ---------------------------------------------------------------------------------------------


def _probs(labels: list[int], p: float = 0.9) -> np.ndarray:
    out = np.full((len(labels), 3), (1.0 - p) / 2.0)
    out[np.arange(len(labels)), labels] = p
    return out


def test_gate_scales_disease_by_lesion_fraction_and_rows_still_sum_to_one() -> None:
    from covidct.decide import gate_by_lesions

    probs = _probs([V, C, N, V])
    probs[3] = np.nan
    frac = np.array([0.0, 0.005, 0.0, 0.02])
    out = gate_by_lesions(probs, frac, min_fraction=0.01)
    np.testing.assert_allclose(out[0], [1.0, 0.0, 0.0])  # no lesion: all mass to normal
    np.testing.assert_allclose(out[1, 1:], probs[1, 1:] * 0.5)  # half the gate: disease halved
    np.testing.assert_allclose(out[:3].sum(axis=1), 1.0)
    np.testing.assert_allclose(out[2], [1.0, 0.0, 0.0])  # a normal slice stays normal
    assert np.isnan(out[3]).all()  # an unclassified slice stays unclassified


def test_gate_turns_a_lesionless_series_normal_and_says_so() -> None:
    labels = padded([V] * 76)
    frac = np.zeros(100)
    frac[10:20] = 0.05  # lesions on 10 of the 76 kept slices (13% <= 20%)
    plain = decide(_probs(labels))
    gated = decide(_probs(labels), lesion_fraction=frac, lesion_gate=0.01)
    assert plain.diagnosis == "covid19"
    assert gated.diagnosis == "normal" and gated.branch == "normal"
    assert gated.counts == {"normal": 66, "cap": 0, "covid19": 10}
    assert gated.gated_slices == 66
    assert gated.params["lesion_gate"] == 0.01 and "lesion_gate" not in plain.params
    doc = gated.to_json()
    assert doc["gated_slices"] == 66 and "lesion gate 1% of the lung: 66 kept slice(s)" in doc["explanation"]
    json.dumps(doc)


def test_gate_keeps_slices_with_enough_lesion() -> None:
    labels = padded([C] * 40 + [N] * 36)
    frac = np.full(100, 0.03)
    gated = decide(_probs(labels), lesion_fraction=frac, lesion_gate=0.01)
    assert gated.diagnosis == "cap" and gated.gated_slices == 0
    assert gated.to_json() | {"params": None} == decide(_probs(labels)).to_json() | {
        "params": None,
        "explanation": gated.to_json()["explanation"],
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lesion_gate": 0.01}, "lesion fraction"),
        ({"lesion_gate": 1.5, "lesion_fraction": np.zeros(100)}, r"in \(0, 1\)"),
        ({"lesion_gate": 0.01, "lesion_fraction": np.zeros(99)}, "99 lesion fractions for 100 slices"),
        ({"lesion_gate": 0.01, "lesion_fraction": np.full(100, -1.0)}, "finite and >= 0"),
    ],
)
def test_gate_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decide(_probs(padded([V] * 76)), **kwargs)


def test_gate_needs_probabilities_not_labels() -> None:
    with pytest.raises(ValueError, match=r"\(n, 3\) probabilities"):
        decide(padded([V] * 76), lesion_fraction=np.zeros(100), lesion_gate=0.01)
