"""Renders the benchmark results as BENCHMARKS.md (Markdown)."""

from __future__ import annotations

from typing import Any

import numpy as np

from _common import md_table

#: Columns of the end-to-end table; run.py fills its rows in this order (the per-stage seconds are
#: E2E_STAGES).
E2E_HEADER = [
    "series",
    "model",
    "backend",
    "s/study (median)",
    "load",
    "check",
    "segment",
    "classify",
    "decide",
    "diagnosis",
]

#: The Diagnoser's per-stage timing keys, as columns of the end-to-end table.
E2E_STAGES = E2E_HEADER[4:-1]

STUDY = 150
#: Slices of a 150-slice study the rule keeps (10% head, 14% tail truncated): the ones classified.
KEPT = STUDY - round(STUDY * 0.10) - round(STUDY * 0.14)


def _classifier(cls: Any, ceiling: float) -> list[str]:
    from covidct.classify.backends import auto_backend

    out = [
        "## Slice classifier",
        "",
        f"Network: {cls.network}; {cls.gflop_per_slice:.2f} GFLOP per slice (torch FLOP counter, "
        f"multiply and add counted separately); {cls.threads} threads. GFLOP/s = slices/s x GFLOP per slice; "
        f"'% ceiling' divides by the mean of the two GEMM medians ({ceiling:.1f} GFLOP/s). Backends were timed "
        "round-robin within each batch size.",
        "",
    ]
    batches = sorted({bs for _, bs in cls.timings})
    backends = list(dict.fromkeys(n for n, _ in cls.timings))
    rows = []
    for n in backends:
        rows.append([n] + [cls.slices_per_s(n, bs) for bs in batches])
    out += [
        "Slices/s by batch size (median):",
        "",
        md_table(["backend"] + [f"b={b}" for b in batches], rows),
        "",
    ]

    rows = []
    for n in backends:
        best_bs = max((bs for bs in batches if (n, bs) in cls.timings), key=lambda b: cls.slices_per_s(n, b))
        sps = cls.slices_per_s(n, best_bs)
        t = cls.timings[(n, best_bs)]
        paired = cls.paired_ceiling.get((n, best_bs), [])
        vs_torch = cls.paired_torch.get((n, best_bs), [])
        rows.append(
            [
                n,
                best_bs,
                sps,
                sps * cls.gflop_per_slice,
                100.0 * sps * cls.gflop_per_slice / ceiling,
                100.0 * float(np.median(paired)) if paired else float("nan"),
                float(np.median(vs_torch)) if vs_torch else float("nan"),
                KEPT / sps,
                STUDY / sps,
                t.spread,
                cls.setup_s.get(n, float("nan")),
            ]
        )
    out += [
        "At each backend's best batch size:",
        "",
        md_table(
            [
                "backend",
                "batch",
                "slices/s",
                "GFLOP/s",
                "% ceiling (run)",
                "% ceiling (paired)",
                "x torch (paired)",
                f"s/study ({KEPT} kept slices)",
                f"s/study (all {STUDY})",
                "spread",
                "setup s",
            ],
            rows,
        ),
        "",
        "'% ceiling (run)' divides by the run's GEMM medians; '% ceiling (paired)' is the median over repeats of "
        "the achieved rate divided by a 2048^3 GEMM timed just before and just after that very call (the "
        "figure that survives load from other users); 'x torch (paired)' is the median over repeats of the "
        "speed-up over torch eager in the same round. "
        "'spread' = (slowest - fastest run) / median: the noise from other users of the machine. 'setup s' = "
        "building the runner (ONNX export, int8 calibration and quantisation; first run only: cached after).",
        "",
    ]
    compile_setup = {k: v for k, v in cls.setup_s.items() if k.startswith("compile@")}
    if compile_setup:
        out += [
            "torch.compile compile time (first call per batch size): "
            + ", ".join(f"{k.split('@')[1]}: {v:.0f} s" for k, v in compile_setup.items())
            + ". Compiled only at those batch sizes (each new size recompiles with dynamic=False).",
            "",
        ]
    if cls.thread_scan:
        rows = [[n, th, 16 / t.median] for (n, th), t in sorted(cls.thread_scan.items())]
        out += ["Threads (batch 16):", "", md_table(["backend", "threads", "slices/s"], rows), ""]
    if cls.agreement:
        rows = [
            [n, a["slices"], 100.0 * a["agreement"], a["max_abs_logit_diff"], a.get("decisions_same", "-")]
            for n, a in cls.agreement.items()
        ]
        out += [
            "Agreement with torch float32 on the kept slices of the real series:",
            "",
            md_table(
                ["backend", "slices", "% argmax agreement", "max |logit diff|", "same patient decision"], rows
            ),
            "",
        ]
    for n, why in cls.unavailable.items():
        out.append(f"- {n}: not available: {why}")
    out += [f"- {note}" for note in cls.notes]
    out += [f"- `make_runner(backend='auto')` picks `{auto_backend()}` on this machine.", ""]
    return out


def _segment(seg: dict[str, Any]) -> list[str]:
    rows = [[r["segmenter"], r["gflop"], r["slices_s"], r["study_s"]] for r in seg["rows"]]
    out = [
        "## Segmentation",
        "",
        md_table(["segmenter", "GFLOP/slice", "slices/s", f"s per {STUDY}-slice study"], rows),
        "",
        "Network figures extrapolate a few timed batches to a whole study; lungmask's U-Net has random weights "
        "(timing only). lungmask itself crops to the body and resizes to 256x256 before its U-Net, so its "
        "256x256 row is what lungmask runs; the 512x512 row is the same network at full resolution.",
        "",
    ]
    out += [f"- {n}: not available: {why}" for n, why in seg["unavailable"].items()]
    out += [f"- {note}" for note in seg["notes"]]
    return [*out, ""]


def _decode(dec: dict[str, Any]) -> list[str]:
    rows = [[k, v, STUDY / v] for k, v in dec["rates"].items()]
    out = [
        "## Decoding (P001, JPEG Lossless SV1, 512x512)",
        "",
        md_table(["method", "slices/s", f"s per {STUDY}-slice study"], rows),
        "",
    ]
    out += [f"- {n}: not available: {why}" for n, why in dec["unavailable"].items()]
    return [*out, ""]


def render(
    *,
    machine: dict[str, Any],
    started: str,
    command: str,
    g0: tuple[float, float],
    g1: tuple[float, float],
    data_notes: list[str],
    cls: Any,
    seg: dict[str, Any] | None,
    dec: dict[str, Any] | None,
    e2e: list[list[Any]] | None,
    sections: list[str],
    threads: int,
) -> str:
    ceiling = (g0[0] + g1[0]) / 2
    v = machine["versions"]
    out = [
        "# covidct benchmarks",
        "",
        f"Written by `{command.strip()}` ({started}). Medians of several runs. The machine is shared with other "
        "users, so absolute figures move from run to run: compare rows of this one run (ratios), not runs.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores usable; flags: {', '.join(machine['flags'])}",
        f"- load average at start: {machine['loadavg']}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        f"## GEMM ceiling (torch float32, 2048^3, {threads} threads)",
        "",
        md_table(
            ["when", "median GFLOP/s", "best GFLOP/s"],
            [["start of run", g0[0], g0[1]], ["end of run", g1[0], g1[1]]],
        ),
        "",
        "## Data",
        "",
        *[f"- {n}" for n in data_notes],
        "",
    ]
    if cls is not None:
        out += _classifier(cls, ceiling)
    if seg is not None:
        out += _segment(seg)
    if dec is not None:
        out += _decode(dec)
    if e2e is not None:
        out += [
            "## End to end",
            "",
            md_table(
                E2E_HEADER,
                e2e,
            ),
            "",
            "Files to JSON diagnosis with `covidct.diagnose.Diagnoser` (models loaded once); stage columns are "
            "the Diagnoser's own `timing_s` (seconds, medians). Only the kept slices are classified.",
            "",
        ]
    out += sections
    return "\n".join(out) + "\n"
