"""The served classifier: torchvision ResNet18, 1-channel 128x128 gray input, 2 classes."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

CLASSES = ("benign", "malignant")  # index 1, malignant, is the positive class everywhere
ARCHITECTURE = "torchvision.resnet18(weights=None, num_classes=2), conv1 1-channel"


class LogitMean(nn.Module):
    """Several ResNet18s trained with different seeds and splits; the served logits are their mean."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def resnet18_gray(in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def build_classifier(in_channels: int = 1, num_classes: int = 2, members: int = 1) -> nn.Module:
    """One ResNet18, or the mean of `members` ResNet18s (state-dict keys `members.<i>.*`)."""
    if members == 1:
        return resnet18_gray(in_channels, num_classes)
    return LogitMean([resnet18_gray(in_channels, num_classes) for _ in range(members)])
