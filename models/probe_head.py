"""The SAM probe's head: what it reads (regions of the lesion, stages of SAM's image encoder), its size,
the logistic regression itself (`SamProbe`) and how its logit joins the classifier's (`fuse`).

Leaf of models/: the manifest describes and loads probes with it; models.sam_probe computes the features
it reads from a SAM embedding (training/results/sam-probe.md: why these regions and stages).
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

Region = Literal["mask", "crop", "posterior", "anterior", "lateral"]
ALL_REGIONS: tuple[Region, ...] = get_args(Region)
REGIONS: tuple[Region, ...] = ("mask", "crop", "posterior")  # the served probe's (training.probe.regions)
CHANNELS = 256  # of SAM's image embedding (one mean per channel and region) and of its decoder's tokens
IOU_TOKEN = False  # the served probe does not read the mask decoder's IoU token (training/results/sam-probe.md)
# Where in SAM's image encoder the probe reads: `neck` is the image embedding the mask decoder reads;
# `layer0` .. `layer3` are the TinyViT stages before it (models.segmentation.encoder_stages), by channels.
Stage = Literal["neck", "layer0", "layer1", "layer2", "layer3"]
STAGE_CHANNELS: dict[Stage, int] = {"neck": CHANNELS, "layer0": 128, "layer1": 160, "layer2": 320, "layer3": 320}
ALL_STAGES: tuple[Stage, ...] = get_args(Stage)
STAGES: tuple[Stage, ...] = ALL_STAGES  # the served probe's: every stage (training/results/sam-probe.md)


def probe_size(regions: tuple[Region, ...], iou_token: bool, stages: tuple[Stage, ...] = ("neck",)) -> int:
    return sum(STAGE_CHANNELS[s] for s in stages) * len(regions) + CHANNELS * int(iou_token)


def encoder_only(stages: tuple[Stage, ...]) -> tuple[str, ...]:
    """The stages an embedding must keep besides the image embedding itself."""
    return tuple(s for s in stages if s != "neck")


class SamProbe(nn.Module):
    """Standardised features -> one logit (malignant vs benign), a logistic regression's weights."""

    def __init__(self, features: int = probe_size(REGIONS, IOU_TOKEN, STAGES)):
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
