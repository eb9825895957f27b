"""Training-step and inference time of lesion U-Net sizes on this machine (the measurement behind the shipped size).

Usage: ``python benchmarks/bench_lesion_sizes.py [--threads 2]``. Batch of 8 random slices, Adam, the lesion
loss; the step time is the fastest of three after a warm-up step, inference the mean over 16 slices.
"""

from __future__ import annotations

import argparse
import time

import torch

from covidct.lesions.model import build_lesion_net
from covidct.train.lesions import partial_label_loss

SIZES: tuple[tuple[tuple[int, ...], int], ...] = (
    ((16, 32, 64, 128, 256, 16), 192),
    ((16, 32, 64, 128, 256, 16), 160),
    ((8, 16, 32, 64, 128, 8), 192),
    ((24, 48, 96, 192, 384, 24), 192),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for features, size in SIZES:
        torch.manual_seed(0)
        model = build_lesion_net(features=features)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        x, y = torch.rand(8, 1, size, size), torch.randint(0, 3, (8, size, size))
        steps = []
        for _ in range(4):
            t = time.perf_counter()
            opt.zero_grad()
            partial_label_loss(model(x), y).backward()
            opt.step()
            steps.append(time.perf_counter() - t)
        model.eval()
        with torch.inference_mode():
            t = time.perf_counter()
            model(torch.rand(16, 1, size, size))
            per_slice = (time.perf_counter() - t) / 16
        n = sum(q.numel() for q in model.parameters())
        print(
            f"features {features} size {size}: {n / 1e6:.2f} M parameters, training step {min(steps[1:]):.2f} s, "
            f"inference {per_slice * 1000:.0f} ms/slice",
            flush=True,
        )


if __name__ == "__main__":
    main()
