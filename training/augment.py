"""Batched affine augmentation on normalised ROI tensors (flips, rotations, small translations, scale).

Reflection fills the corners, so that rotated crops show tissue rather than black wedges.
Ultrasound is never flipped vertically: the skin line is always at the top of the probe image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def affine(x: torch.Tensor, modality: str, generator: torch.Generator, degrees: float = 15.0,
           translate: float = 0.08, scale: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    angle = uniform(-degrees, degrees) * math.pi / 180
    s = uniform(*scale)
    sx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)  # horizontal flip
    sy = torch.ones(n) if modality == "us" else torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.zeros(n, 2, 3)
    # rotation / scale composed with the flips: R(angle) / s @ diag(sx, sy)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sy
    theta[:, 1, 0], theta[:, 1, 1] = sin * sx, cos * sy
    theta[:, 0, 2], theta[:, 1, 2] = uniform(-translate, translate) * 2, uniform(-translate, translate) * 2
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
