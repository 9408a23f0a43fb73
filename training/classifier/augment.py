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


def scanner(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Other scanners and settings, on the image channel only (a mask channel is left alone):
    gain and contrast, speckle (multiplicative noise), blur, lower resolution; each with probability p."""
    n, size = x.shape[0], x.shape[-1]
    image = x[:, :1]

    def chance() -> torch.Tensor:
        return (torch.rand(n, 1, 1, 1, generator=generator) < p).to(x)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=generator)).to(x)

    mean = image.mean(dim=(2, 3), keepdim=True)
    on = chance()
    image = image + on * ((image - mean) * (uniform(0.7, 1.3) - 1) + uniform(-0.15, 0.15))
    unit = (image + 1) / 2  # [0, 1] for the multiplicative speckle
    noise = torch.randn(image.shape, generator=generator).to(x)
    unit = unit * (1 + chance() * uniform(0.0, 0.2) * noise)
    image = unit * 2 - 1
    blurred = F.avg_pool2d(F.pad(image, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    image = image + chance() * (blurred - image)
    factor = int(torch.randint(2, 4, (1,), generator=generator))  # one factor per batch: 1/2 or 1/3 resolution
    low = F.interpolate(F.interpolate(image, size=size // factor, mode="bilinear", antialias=True,
                                      align_corners=False), size=size, mode="bilinear", align_corners=False)
    image = (image + chance() * (low - image)).clamp(-1, 1)
    return torch.cat([image, x[:, 1:]], dim=1)
