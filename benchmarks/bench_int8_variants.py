"""Which int8 quantisation keeps a trained classifier's answers? Variants of ONNX Runtime static quantisation.

    python benchmarks/bench_int8_variants.py MODEL_DIR [--cohort runs/demo/data/test]

Same studies and comparison as ``bench_agreement.py`` (kept slices of the real series and of ``--cohort``,
float32 ONNX Runtime as the reference, argmax per slice, the paper's rule per study); the variants differ in
the calibration method and in leaving the first convolution and the final linear layer in float32. All are
calibrated on the bundle's ``calibration.npy`` by :func:`covidct.classify.backends.quantize_int8` (QDQ,
per-channel int8 weights, uint8 activations), which covidct's int8 backends use with MinMax.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_agreement import decision, kept_inputs, study_folders


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--cohort", type=Path, default=None)
    args = ap.parse_args(argv)

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod

    from covidct.classify.backends import export_onnx, quantize_int8
    from covidct.pipeline import load_pipeline

    pipe = load_pipeline(args.model_dir)
    clf = pipe.classifier
    if clf.calibration is None:
        print(f"{args.model_dir}: the classifier bundle has no calibration.npy", file=sys.stderr)
        return 1
    calib = clf.calibration
    cache = Path(tempfile.mkdtemp(prefix="covidct-int8-"))
    studies = {case: kept_inputs(pipe, folder) for case, folder in study_folders(args.cohort).items()}
    fp32 = export_onnx(clf.network, image_size=clf.image_size, cache_dir=cache)

    def run(path: Path, x: np.ndarray) -> np.ndarray:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, {"x": x[i : i + 32]})[0] for i in range(0, len(x), 32)])

    ref = {k: run(fp32, v[2]) for k, v in studies.items()}
    graph = onnx.load(str(fp32)).graph
    first_conv = next(n.name for n in graph.node if n.op_type == "Conv")
    linear = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    keep_fp32 = [first_conv, *linear]
    pct = {"CalibPercentile": 99.99}
    variants: dict[str, dict[str, Any]] = {
        "MinMax (covidct's)": {"calibrate_method": CalibrationMethod.MinMax},
        "MinMax, first conv + fc float32": {"calibrate_method": CalibrationMethod.MinMax, "nodes_to_exclude": keep_fp32},
        "Percentile 99.99": {"calibrate_method": CalibrationMethod.Percentile, "extra_options": pct},
        "Percentile 99.99, first conv + fc float32": {
            "calibrate_method": CalibrationMethod.Percentile, "extra_options": pct, "nodes_to_exclude": keep_fp32,
        },
        "Entropy": {"calibrate_method": CalibrationMethod.Entropy},
    }  # fmt: skip
    rows = []
    for name, kw in variants.items():
        t0 = time.perf_counter()
        out = quantize_int8(fp32, calib, cache_dir=cache, options=kw)
        same = total = decisions = 0
        worst = 1.0
        for case, (n, start, x) in studies.items():
            q, r = run(out, x), ref[case]
            agree = q.argmax(1) == r.argmax(1)
            same, total = same + int(agree.sum()), total + len(agree)
            worst = min(worst, float(agree.mean()))
            decisions += decision(q, n, start, pipe.rule) == decision(r, n, start, pipe.rule)
        rows.append((name, 100 * same / total, 100 * worst, f"{decisions}/{len(studies)}"))
        print(f"{name}: {rows[-1][1:]} ({time.perf_counter() - t0:.0f} s)")
    print(f"\n{clf.card.get('name')}, {total} kept slices, {len(studies)} studies\n")
    print("| int8 variant | % slices = float32 | worst study % | same patient decision |\n|---|---|---|---|")
    for name, a, w, d in rows:
        print(f"| {name} | {a:.1f} | {w:.1f} | {d} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
