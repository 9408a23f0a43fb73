"""The SAM probe's features: what SAM's image encoder says about the lesion, next to the ResNet18.

The server encodes every image with SAM to outline the lesion. That embedding, averaged over a few
regions (`lesion_features`: inside SAM's mask, over the classifier's crop, and in the tissue next to
the lesion, served: behind it, where ultrasound shows posterior shadowing or enhancement), separates
malignant from benign lesions about as well as the ResNet18 does, and differently (training.probe.sam_probe
measures both; training.probe.regions which regions). A probe may also read the mask decoder's IoU
token with SAM's mask box as the prompt (`probe_input`; not served: it raises the AUC on BUSI by
reading how the box was drawn, training/results/sam-probe.md). A logistic regression on these
(models.probe_head.SamProbe) adds
its logit to the classifier's: the served logit difference is ResNet18 + alpha x probe. The served probe
averages every stage of the encoder (`STAGES`), not only the embedding it ends in: together they
separate BUSI's lesions better (training/results/sam-probe.md). When the probe's SAM is the route's SAM the
features cost no extra encoder pass. Training, evaluation and serving call the same functions.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.preprocessing import ROI_MARGIN, Box, square_box
from models.probe_head import REGIONS, Region, Stage, encoder_only
from models.segmentation import Embedding, SamSegmenter


def encoder_frame(region: np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
    """An HxW boolean region where the encoder sees it: SAM resizes the image to `input_size` and pads it
    bottom-right to its square input. (1, 1, side, side) float32 coverage."""
    (h2, w2), side = input_size, max(input_size)  # the longest side fills the encoder input
    t = F.interpolate(torch.from_numpy(region.astype(np.float32))[None, None], size=(h2, w2), mode="area")
    return F.pad(t, (0, side - w2, 0, side - h2))


def band(mask: np.ndarray, box: Box, side: Region) -> np.ndarray:
    """Tissue next to the lesion, around the mask's bounding box (the box's if the mask is empty):
    `posterior` the band under it (deeper from the skin, where ultrasound shows shadowing or
    enhancement) and `anterior` the band above it, each as wide as the box and as tall; `lateral` the two
    bands beside it, each half as wide. Cut at the image's edges, keeping at least the edge row or column
    where the lesion touches one."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(ys) else (int(round(v)) for v in box)
    x0, y0 = int(np.clip(x0, 0, w - 1)), int(np.clip(y0, 0, h - 1))
    x1, y1 = int(np.clip(x1, x0 + 1, w)), int(np.clip(y1, y0 + 1, h))
    tall, half = y1 - y0, max(1, (x1 - x0) // 2)
    out = np.zeros((h, w), bool)
    if side == "posterior":
        top = min(y1, h - 1)
        out[top:max(top + 1, min(h, y1 + tall)), x0:x1] = True
    elif side == "anterior":
        bottom = max(y0, 1)
        out[min(bottom - 1, max(0, y0 - tall)):bottom, x0:x1] = True
    elif side == "lateral":
        left, right = max(x0, 1), min(x1, w - 1)
        out[y0:y1, min(left - 1, max(0, x0 - half)):left] = True
        out[y0:y1, right:max(right + 1, min(w, x1 + half))] = True
    else:
        raise ValueError(f"no band {side!r}")
    return out


def crop_square(shape: tuple[int, int], box: Box, margin: float) -> np.ndarray:
    """The classifier's square crop around `box` (models.preprocessing.square_box) as a region."""
    h, w = shape
    x0, y0, x1, y1 = square_box(box, w, h, margin)
    square = np.zeros((h, w), bool)
    square[max(0, y0):min(h, y1), max(0, x0):min(w, x1)] = True
    return square


def region(name: Region, mask: np.ndarray, box: Box, original_size: tuple[int, int], margin: float) -> np.ndarray:
    if name == "mask":
        return mask
    if name == "crop":
        return crop_square(original_size, box, margin)
    return band(mask, box, name)


def lesion_features(features: torch.Tensor | list[torch.Tensor], original_size: tuple[int, int],
                    input_size: tuple[int, int], mask: np.ndarray, box: Box, margin: float = ROI_MARGIN,
                    regions: tuple[Region, ...] = REGIONS) -> torch.Tensor:
    """(C x len(regions),) float32 from a (1, C, gh, gw) or (C, gh, gw) feature map of the encoder: its
    mean over each region in turn (inside `mask`; over the classifier's square crop around `box`; a `band`
    beside it). Several maps (a list): each one's means in turn, every region placed in the encoder's
    frame once."""
    maps = features if isinstance(features, list) else [features]
    frames = [encoder_frame(region(name, mask, box, original_size, margin), input_size) for name in regions]
    frames = torch.cat(frames, dim=1)  # (1, regions, side, side)
    out = []
    for m in maps:
        emb = m.float().reshape(-1, m.shape[-2] * m.shape[-1])
        wts = F.adaptive_avg_pool2d(frames, tuple(m.shape[-2:]))[0].flatten(1).to(emb.device)  # (regions, cells)
        means = (wts @ emb.T) / wts.sum(1, keepdim=True).clamp(min=1e-6)  # (regions, C)
        out.append(means.flatten())
    return torch.cat(out).cpu()


def probe_input(segmenter: SamSegmenter, embedding: Embedding, mask: np.ndarray, box: Box, margin: float,
                regions: tuple[Region, ...], iou_token: bool, stages: tuple[Stage, ...] = ("neck",)) -> torch.Tensor:
    """The probe's features for one lesion: `lesion_features` of each of the encoder's `stages` in turn
    (`neck`: the image embedding), then (with `iou_token`) its mask decoder's IoU token for the lesion's box."""
    missing = [s for s in encoder_only(stages) if s not in embedding.stages]
    if missing:
        raise ValueError(f"the probe reads encoder stages {', '.join(missing)}, which this embedding did not keep")
    maps = [embedding.features if s == "neck" else embedding.stages[s] for s in stages]
    f = lesion_features(maps, embedding.original_size, embedding.input_size, mask, box, margin, regions)
    if not iou_token:
        return f
    return torch.cat([f, torch.from_numpy(segmenter.iou_token(embedding, box))])
