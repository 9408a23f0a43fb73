"""The SAM probe: what SAM's image encoder says about the lesion, next to the ResNet18.

The server encodes every image with SAM to outline the lesion. That embedding, averaged over a few
regions (`lesion_features`: inside SAM's mask, over the classifier's crop, and in the tissue behind the
lesion, where ultrasound shows posterior shadowing or enhancement), separates malignant from benign
lesions about as well as the ResNet18 does, and differently (training.sam_probe measures both). A
logistic regression on it (`SamProbe`) adds its logit to the classifier's: the served logit
difference is ResNet18 + alpha x probe. When the probe's SAM is the route's SAM the features cost no
extra encoder pass. Training, evaluation and serving call the same functions.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.preprocessing import ROI_MARGIN, Box, square_box

Region = Literal["mask", "crop", "posterior"]
REGIONS: tuple[Region, ...] = ("mask", "crop", "posterior")
CHANNELS = 256  # of SAM's image embedding: one mean per channel and region


class SamProbe(nn.Module):
    """Standardised features -> one logit (malignant vs benign), a logistic regression's weights."""

    def __init__(self, features: int = CHANNELS * len(REGIONS)):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))
        self.linear = nn.Linear(features, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.linear((f.float() - self.mean) / self.scale).squeeze(-1)


def fuse(logits: torch.Tensor, probe_logit: torch.Tensor, alpha: float) -> torch.Tensor:
    """Classifier logits (N, 2) with alpha x the probe's logit added to their difference, split evenly."""
    half = alpha * probe_logit.to(logits) / 2
    return torch.stack([logits[:, 0] - half, logits[:, 1] + half], dim=1)


def grid_weights(region: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int],
                 grid: tuple[int, int]) -> torch.Tensor:
    """An HxW boolean region as the fraction of each embedding cell it covers (SAM resizes the image to
    `input_size`, pads it bottom-right to the encoder's square input, and the embedding is `grid`)."""
    (h2, w2), side = input_size, max(input_size)  # the longest side fills the encoder input
    t = F.interpolate(torch.from_numpy(region.astype(np.float32))[None, None], size=(h2, w2), mode="area")
    t = F.pad(t, (0, side - w2, 0, side - h2))
    return F.adaptive_avg_pool2d(t, grid)[0, 0]


def posterior(mask: np.ndarray, box: Box) -> np.ndarray:
    """The tissue behind the lesion (below it: the probe looks down from the skin): a band under the mask's
    bounding box (the box's if the mask is empty), as wide as it and as deep as it is tall, cut at the
    image's bottom edge; the bottom row under the lesion if it touches that edge."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys):
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    else:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0 = int(np.clip(x0, 0, w - 1))
    x1 = int(np.clip(x1, x0 + 1, w))
    top = int(np.clip(y1, 0, h - 1))
    bottom = int(np.clip(y1 + (y1 - y0), top + 1, h))
    band = np.zeros((h, w), bool)
    band[top:bottom, x0:x1] = True
    return band


def crop_square(shape: tuple[int, int], box: Box, margin: float) -> np.ndarray:
    """The classifier's square crop around `box` (models.preprocessing.square_box) as a region."""
    h, w = shape
    x0, y0, x1, y1 = square_box(box, w, h, margin)
    square = np.zeros((h, w), bool)
    square[max(0, y0):min(h, y1), max(0, x0):min(w, x1)] = True
    return square


def lesion_features(features: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int],
                    mask: np.ndarray, box: Box, margin: float = ROI_MARGIN,
                    regions: tuple[Region, ...] = REGIONS) -> torch.Tensor:
    """(256 x len(regions),) float32 from a (1, C, gh, gw) or (C, gh, gw) embedding: its mean over each
    region in turn (inside `mask`; over the classifier's square crop around `box`; behind the lesion)."""
    emb = features.float().reshape(-1, *features.shape[-2:])
    grid = tuple(emb.shape[-2:])
    make = {"mask": lambda: mask, "crop": lambda: crop_square(original_size, box, margin),
            "posterior": lambda: posterior(mask, box)}
    out = []
    for name in regions:
        wts = grid_weights(make[name](), original_size, input_size, grid).to(emb.device)
        out.append((emb * wts).sum((1, 2)) / wts.sum().clamp(min=1e-6))
    return torch.cat(out).cpu()
