"""Grad-CAM (Selvaraju et al. 2017) of the ResNet18 classifier: where in the ROI the malignant logit looks.

For a seed ensemble (`LogitMean`) the maps of its members are averaged, as their logits are."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.classifier import LogitMean


def _cam(model: nn.Module, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    store: dict[str, torch.Tensor] = {}
    handle = model.layer4.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        with torch.enable_grad():
            logits = model(x)
            acts = store["a"]
            grads, = torch.autograd.grad(logits[:, target].sum(), acts)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return logits.detach(), F.relu((weights * acts).sum(dim=1, keepdim=True)).detach()


def logits_and_cam(model: nn.Module, x: torch.Tensor, target: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised input (N,C,H,W) -> the model's logits (N,2) and heat maps (N,H,W) in [0, 1] for class
    `target` (1 = malignant), from one forward pass: the map needs that pass anyway, so serving runs no other."""
    members = list(model.members) if isinstance(model, LogitMean) else [model]
    outs = [_cam(m, x, target) for m in members]
    logits = torch.stack([lg for lg, _ in outs]).mean(dim=0)
    cam = torch.stack([c for _, c in outs]).mean(dim=0)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-8)[:, None, None]
    return logits, cam / peak


def grad_cam(model: nn.Module, x: torch.Tensor, target: int = 1) -> torch.Tensor:
    """Normalised input (N,C,H,W) -> heat maps (N,H,W) in [0, 1] for class `target` (1 = malignant)."""
    return logits_and_cam(model, x, target)[1]
