"""Automatic lesion finding: a small convolutional head on the box route's SAM image embedding.

The box route's SAM (LiteMedSAM) encodes every uploaded image anyway: 256 x 64 x 64, a grid over the
square input the image is resized into on its longest side (256 pixels for LiteMedSAM, 1024 for SAM)
and padded. `LocaliserNet` reads that embedding and gives a lesion probability per grid cell, trained
on the experts' masks (training/segmentation/localiser.py). Cells at or above `level` x the image's
highest form connected regions; each region's box, in image pixels, is a candidate scored by its
highest cell. The best candidate goes to the same SAM as a drawn box would (`Localiser.outline`), so
the automatic outline is as good as a drawn box's wherever the box is right. A best score under the
entry's `threshold` means "no lesion found": the answer says so, with the score.

It costs one small network on an embedding the box route computes anyway: milliseconds, where SAM's
automatic mask generator takes minutes on a CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import ndimage
from torch import nn

EMBEDDING_GRID = 64  # cells per side of SAM's image embedding
POOL = 2  # the head reads the embedding pooled to 32 x 32 cells: 4x less work
GRID = EMBEDDING_GRID // POOL
UPSAMPLE = 4  # candidates are read on the probabilities upsampled to 128 x 128
CHANNELS = 256
# train-localiser's recipe. Each entry records its own (`training`: width, dilations, rank_by) and
# manifest.load_localiser builds the net from that, so a model trained with other settings is served as trained.
WIDTH = 32
DILATIONS = (1, 2, 4, 8)
FIRST_DILATIONS = (1, 2, 4)  # entries written before the design was recorded
RANK_BY = "peak"  # candidates are ranked by their region's "peak" probability or its "mass" (sum, in cells)


class LocaliserNet(nn.Module):
    """(N, 256, 64, 64) SAM image embedding -> (N, 1, 32, 32) lesion logits per cell.

    The embedding is averaged over 2 x 2 cells first (a fixed step: training pools every image once),
    so the learnt part is small and trains in minutes on a CPU. Dilated 3x3 convolutions (1, 2, 4, 8) then
    see 31 cells around each cell, the whole image: a lesion is judged with its surroundings (posterior
    shadow, skin line), not cell by cell. (The first served head stopped at dilation 4, 15 cells, and was
    trained on BUSI folds without mirroring or BUS-BRA: BUSI CV Dice 0.707 against 0.726 for this recipe.)"""

    def __init__(self, channels: int = CHANNELS, width: int = WIDTH, dilations: tuple[int, ...] = DILATIONS):
        super().__init__()
        self.width, self.dilations = width, tuple(dilations)
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 1), nn.GroupNorm(4, width), nn.ReLU(inplace=True)]
        for d in dilations:
            blocks += [nn.Conv2d(width, width, 3, padding=d, dilation=d), nn.GroupNorm(4, width),
                       nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*blocks, nn.Conv2d(width, 1, 1))

    @staticmethod
    def reduce(embedding: torch.Tensor) -> torch.Tensor:
        """The fixed part: the embedding pooled to the head's grid."""
        return nn.functional.avg_pool2d(embedding.float(), POOL)

    def head(self, reduced: torch.Tensor) -> torch.Tensor:
        return self.body(reduced)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.head(self.reduce(embedding))


@dataclass(frozen=True)
class Candidate:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels (exclusive ends)
    score: float  # the region's highest lesion probability (what the threshold is compared with)
    mass: float = 0.0  # the region's summed probability, in head cells (its size times its confidence)


@dataclass(frozen=True)
class Localisation:
    candidates: list[Candidate]  # best first; may be empty
    peak: float  # the highest lesion probability anywhere in the image
    threshold: float  # "lesion found" needs a candidate scoring at least this

    @property
    def found(self) -> list[Candidate]:
        return [c for c in self.candidates if c.score >= self.threshold]


def valid_cells(input_size: tuple[int, int], grid: int = GRID) -> tuple[int, int]:
    """Rows and columns of a `grid` x `grid` map over SAM's square input that the image covers (SAM pads
    the rest; the image's longest side fills the square)."""
    cell = max(input_size) / grid
    return min(grid, math.ceil(input_size[0] / cell)), min(grid, math.ceil(input_size[1] / cell))


def candidates_of(prob: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int],
                  level: float = 0.5, limit: int = 3, rank_by: str = RANK_BY) -> list[Candidate]:
    """Connected regions of cells with probability >= `level` x the image's highest, as boxes in original
    pixels, best first. `prob` is a square map over SAM's padded input, of any resolution. (Relative:
    on 202 held-out BUS-BRA images the region at half the peak matched the lesion's box better than a
    fixed probability did.) `rank_by` "mass" puts a large confident region before a small one with a
    slightly higher peak."""
    grid = prob.shape[0]
    cell = max(input_size) / grid
    rows, cols = valid_cells(input_size, grid)
    prob = prob[:rows, :cols]
    labels, _ = ndimage.label(prob >= level * prob.max())
    scale_y, scale_x = original_size[0] / input_size[0], original_size[1] / input_size[1]
    found = []
    per_cell = (grid / GRID) ** 2  # map pixels per head cell
    for k, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
        box = (max(0, int(xs.start * cell * scale_x)), max(0, int(ys.start * cell * scale_y)),
               min(original_size[1], math.ceil(xs.stop * cell * scale_x)),
               min(original_size[0], math.ceil(ys.stop * cell * scale_y)))
        region = prob[labels == k]
        found.append(Candidate(box, float(region.max()), round(float(region.sum()) / per_cell, 3)))
    return sorted(found, key=lambda c: -(c.mass if rank_by == "mass" else c.score))[:limit]


def upsampled(prob: torch.Tensor) -> np.ndarray:
    """(1, 1, 32, 32) probabilities -> (128, 128) bilinear: boxes finer than the head's 32-pixel cells."""
    return nn.functional.interpolate(prob, scale_factor=UPSAMPLE, mode="bilinear", align_corners=False)[0, 0].numpy()


class Localiser:
    """One trained `LocaliserNet` with its served settings (a manifest `LocaliserEntry`)."""

    def __init__(self, net: LocaliserNet, sam: str, threshold: float, level: float = 0.5, limit: int = 3,
                 rank_by: str = RANK_BY):
        self.net, self.sam, self.threshold, self.level, self.limit = net.eval(), sam, threshold, level, limit
        self.rank_by = rank_by

    @torch.no_grad()
    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(1, 1, 32, 32) lesion probability per cell of one image embedding (1, 256, 64, 64)."""
        device = next(self.net.parameters()).device
        return torch.sigmoid(self.net(features.to(device))).float().cpu()

    def locate(self, features: torch.Tensor, input_size: tuple[int, int],
               original_size: tuple[int, int]) -> Localisation:
        """Ranked candidates for one image from its SAM embedding (models.segmentation.Embedding's
        `features`, `input_size`, `original_size`)."""
        prob = upsampled(self.probabilities(features))
        rows, cols = valid_cells(input_size, prob.shape[0])
        return Localisation(candidates_of(prob, input_size, original_size, self.level, self.limit, self.rank_by),
                            float(prob[:rows, :cols].max()), self.threshold)

    @staticmethod
    def outline(candidate: Candidate, predict: Callable[[list[float]], np.ndarray]) -> np.ndarray:
        """SAM's outline of one candidate: `predict(box)` is the box route's decoder on the image's embedding.
        One decode of the candidate's box: outlining it at four scales and keeping the mask that agreed best
        with the lesion map, then outlining again from that mask's own box, did not help (mean Dice 0.818
        and 0.815 against 0.817 on 202 held-out BUS-BRA images) at five times the decodes."""
        return predict([float(v) for v in candidate.box])
