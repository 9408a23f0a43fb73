"""The expert's outline as privileged information: seen in training, never at serving. A study, measured
(reproduce.sh, LEVERS=1) and not served: the served classifiers train without these heads.

The server only has SAM's mask, which smooths the irregular margins that separate malignant from
benign lesions (RESEARCH.md: 1 - solidity of the expert mask alone reaches AUC 0.98, of SAM's 0.75).
The pixels still hold those margins. During training the ResNet18 is also asked, from its own
features, to draw the expert's mask (`--aux-outline W`) and to say how irregular it is, 1 - solidity
(`--aux-irregularity W`). The heads are dropped after training: the served network is the plain
ResNet18 with the same input as before, so nothing at serving needs the expert.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet

from training.segmentation.outline import solidity


class OutlineAux(nn.Module):
    """A ResNet18 with two training-only heads: the expert mask (from layer2 + layer3, 1/8 of the input)
    and the expert outline's irregularity (from the pooled features the classifier reads)."""

    def __init__(self, net: ResNet):
        super().__init__()
        self.net = net
        self.mask_head = nn.Sequential(nn.Conv2d(128 + 256, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                                       nn.ReLU(inplace=True), nn.Conv2d(64, 1, 1))
        self.irregularity_head = nn.Linear(net.fc.in_features, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        l2 = n.layer2(n.layer1(x))
        l3 = n.layer3(l2)
        pooled = torch.flatten(n.avgpool(n.layer4(l3)), 1)
        both = torch.cat([l2, F.interpolate(l3, size=l2.shape[-2:], mode="bilinear", align_corners=False)], 1)
        return n.fc(pooled), self.mask_head(both), self.irregularity_head(pooled).squeeze(1)


def irregularity(outlines: np.ndarray) -> np.ndarray:
    """1 - solidity of each (N, H, W) uint8 expert mask crop, standardised over these lesions."""
    raw = np.array([1 - solidity(m >= 128) for m in outlines], np.float32)
    raw = np.nan_to_num(raw, nan=0.0)
    return (raw - raw.mean()) / max(float(raw.std()), 1e-6)


def aux_loss(mask_logits: torch.Tensor, irregular_pred: torch.Tensor, outline: torch.Tensor,
             irregular: torch.Tensor, w_outline: float, w_irregularity: float) -> torch.Tensor:
    """`outline`: the augmented expert mask, normalised to [-1, 1], (N, 1, H, W); its area fraction per
    head pixel is the soft target."""
    target = F.adaptive_avg_pool2d((outline > 0).float(), mask_logits.shape[-2:])
    return (w_outline * F.binary_cross_entropy_with_logits(mask_logits.float(), target)
            + w_irregularity * F.mse_loss(irregular_pred.float(), irregular))
