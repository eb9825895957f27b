"""Training throughput of the slice classifier (slices/s): forward + backward + Adam step, median of N steps.

    python benchmarks/bench_train.py                       # resnet50 and resnet18 at 224, CPU
    python benchmarks/bench_train.py --device cuda --batch-size 64 --amp

Random inputs (the loop cost does not depend on the pixel values); the network is the one training builds
(`covidct.classify.networks.build_classifier`, conv1 7x7 stride 2). Prints one line per architecture and a
JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from covidct.classify.networks import build_classifier


def bench(
    arch: str, *, size: int, batch: int, steps: int, warmup: int, device: str, amp: bool
) -> dict[str, object]:
    torch.manual_seed(0)
    net = build_classifier(arch).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.startswith("cuda"))
    x = torch.rand(batch, 1, size, size, device=device)
    y = torch.randint(0, 3, (batch,), device=device)
    times = []
    for i in range(warmup + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(
            device_type=device.split(":")[0], dtype=torch.float16, enabled=scaler.is_enabled()
        ):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "arch": arch,
        "image_size": size,
        "batch_size": batch,
        "steps": steps,
        "device": device,
        "amp": scaler.is_enabled(),
        "median_step_s": round(med, 4),
        "slices_per_s": round(batch / med, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet50,resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    results = []
    for arch in args.archs.split(","):
        r = bench(
            arch.strip(),
            size=args.image_size,
            batch=args.batch_size,
            steps=args.steps,
            warmup=args.warmup,
            device=args.device,
            amp=args.amp,
        )
        print(
            f"{r['arch']:9s} {args.image_size}px batch {args.batch_size} on {args.device}: "
            f"{r['slices_per_s']} slices/s (median step {r['median_step_s']} s)",
            flush=True,
        )
        results.append(r)
    print(json.dumps({"env": env, "results": results}))


if __name__ == "__main__":
    main()
