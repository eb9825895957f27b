"""Augmentation that keeps anatomy plausible: small rotations, scaling, shifts and contrast changes.

No left-right flips (the heart, and the lung labels 1 = right / 2 = left, would be mirrored) and no vertical
flips. Geometric changes are applied to the labels of segmentation batches with nearest-neighbour sampling.
Everything runs batch-wise on the training device with an explicit ``torch.Generator`` (reproducible).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_ROTATION_DEG = 10.0
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT = 0.06  # fraction of the image side
CONTRAST_RANGE = (0.9, 1.1)
MAX_BRIGHTNESS = 0.05
NOISE_STD = 0.01


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def random_affine(n: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, 2, 3)`` affine matrices (rotation, isotropic scale, shift) for ``F.affine_grid``."""
    ang = _uniform(n, -MAX_ROTATION_DEG, MAX_ROTATION_DEG, gen) * math.pi / 180.0
    scale = _uniform(n, *SCALE_RANGE, gen)
    tx = _uniform(n, -2 * MAX_SHIFT, 2 * MAX_SHIFT, gen)
    ty = _uniform(n, -2 * MAX_SHIFT, 2 * MAX_SHIFT, gen)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    return theta


def augment_batch(
    x: torch.Tensor, gen: torch.Generator, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment ``x`` (n, 1, S, S) in [0, 1] (0 = background); ``labels`` (n, S, S) int follow the geometry.

    The random numbers are drawn on the CPU from ``gen`` and moved to ``x.device``.
    """
    n = x.shape[0]
    theta = random_affine(n, gen).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = _uniform(n, *CONTRAST_RANGE, gen).to(x.device, x.dtype).view(n, 1, 1, 1)
    bright = _uniform(n, -MAX_BRIGHTNESS, MAX_BRIGHTNESS, gen).to(x.device, x.dtype).view(n, 1, 1, 1)
    noise = torch.randn(out.shape, generator=gen).to(x.device, x.dtype) * NOISE_STD
    inside = out > 0
    out = torch.where(inside, (out * contrast + bright + noise).clamp(0.0, 1.0), out)
    lab = None
    if labels is not None:
        lf = labels[:, None].to(x.dtype)
        lab = F.grid_sample(lf, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        lab = lab[:, 0].round().to(labels.dtype)
    return out, lab


def dihedral(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image (and its label map) turned by a random multiple of 90 degrees and mirrored or not: for
    networks that must not depend on orientation (lesion texture; not the lungs' right/left labels)."""
    k = torch.randint(0, 4, (x.shape[0],), generator=gen)
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    xs, ys = [], []
    for i in range(x.shape[0]):
        xi, yi = torch.rot90(x[i], int(k[i]), (-2, -1)), torch.rot90(y[i], int(k[i]), (-2, -1))
        if bool(flip[i]):
            xi, yi = torch.flip(xi, (-1,)), torch.flip(yi, (-1,))
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)
