"""Image -> classifier input. One crop function for training, evaluation and serving.

The crop is a square around the lesion box plus a margin. Where that square leaves the image it is
first slid back inside (a larger view of real tissue), and only when the image itself is too small
is it padded, by reflection: black bars would tell the classifier that the lesion is large, and
large lesions are malignant more often (a shortcut, see shared/RESEARCH.md).
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

INPUT_SIZE = 128
MEAN = 0.5
STD = 0.5
ROI_MARGIN = 0.10  # fraction of the lesion box's longer side added on every side

Box = Sequence[float]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive
# `raw`: gray levels as the scanner wrote them; `percentile`: each image's 1st..99th percentile stretched to
# 0..255 before cropping, so that a scanner's gain and dynamic range do not move the crop's levels.
Intensity = Literal["raw", "percentile"]
INTENSITY_PERCENTILES = (1.0, 99.0)


def to_gray(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any PIL mode or array -> HxW uint8 gray (16-bit data is rescaled, not clipped)."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3:
            arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    else:
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(image, dtype=np.float32)
        else:
            arr = np.asarray(image.convert("L"))
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


def square_box(box: Box, width: int, height: int, margin: float = ROI_MARGIN) -> tuple[int, int, int, int]:
    """Square of side (longer box side) * (1 + 2 margin), centred on the box, slid inside the image.

    The margin is reduced where the image is too small for it; only a lesion box larger than the
    image's shorter side leaves the square partly outside (then `crop_square` reflects)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"empty lesion box {list(box)}")
    longest = max(x1 - x0, y1 - y0)
    # The margin shrinks before anything is padded: only a lesion larger than the image needs padding.
    side = max(min(longest * (1.0 + 2.0 * margin), min(width, height)), longest)
    side = max(int(round(side)), 2)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = int(round(cx - side / 2.0))
    top = int(round(cy - side / 2.0))
    # Slide inside along each axis where the image is large enough; otherwise centre it.
    left = min(max(left, 0), width - side) if side <= width else (width - side) // 2
    top = min(max(top, 0), height - side) if side <= height else (height - side) // 2
    return left, top, left + side, top + side


def crop_square(gray: np.ndarray, box: Box, margin: float = ROI_MARGIN) -> np.ndarray:
    """Square ROI around `box` from an HxW (or HxWxC) array; reflection-padded only if the image is smaller."""
    h, w = gray.shape[:2]
    x0, y0, x1, y1 = square_box(box, w, h, margin)
    pad_l, pad_t = max(0, -x0), max(0, -y0)
    pad_r, pad_b = max(0, x1 - w), max(0, y1 - h)
    crop = gray[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if pad_l or pad_t or pad_r or pad_b:
        widths = [(pad_t, pad_b), (pad_l, pad_r)] + [(0, 0)] * (crop.ndim - 2)
        crop = np.pad(crop, widths, mode="reflect")
    return crop


def resize_square(crop: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Square uint8 crop -> size x size uint8 (antialiased bilinear)."""
    img = Image.fromarray(crop)
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None))


def roi_from_image(gray: np.ndarray, box: Box, size: int = INPUT_SIZE, margin: float = ROI_MARGIN) -> np.ndarray:
    """The served ROI: crop + resize, uint8 size x size."""
    return resize_square(crop_square(gray, box, margin), size)


def jitter_box(box: Box, width: int, height: int, rng: np.random.Generator,
               fraction: float = 0.05) -> tuple[float, float, float, float]:
    """The box a user would draw: each side moved by up to +-fraction of the box's size, inside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = (x1 - x0) * fraction, (y1 - y0) * fraction
    jx0, jx1 = x0 + rng.uniform(-dx, dx), x1 + rng.uniform(-dx, dx)
    jy0, jy1 = y0 + rng.uniform(-dy, dy), y1 + rng.uniform(-dy, dy)
    jx0, jy0 = max(0.0, jx0), max(0.0, jy0)
    jx1, jy1 = min(float(width), max(jx1, jx0 + 1)), min(float(height), max(jy1, jy0 + 1))
    return jx0, jy0, jx1, jy1


def standardize_intensity(gray: np.ndarray) -> np.ndarray:
    """uint8 HxW with the image's INTENSITY_PERCENTILES mapped to 0 and 255 (clipped); a flat image is kept."""
    lo, hi = np.percentile(gray, INTENSITY_PERCENTILES)
    if hi - lo < 1:
        return gray
    return np.clip((gray.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8)


def classifier_input(gray: np.ndarray, box: Box, mask: np.ndarray | None = None, size: int = INPUT_SIZE,
                     margin: float = ROI_MARGIN, intensity: Intensity = "raw") -> np.ndarray:
    """(C, size, size) uint8: the gray ROI, then (2-channel models) the lesion mask cropped the same way."""
    if intensity == "percentile":
        gray = standardize_intensity(gray)
    elif intensity != "raw":
        raise ValueError(f"unknown intensity standardisation {intensity!r}; known: raw, percentile")
    roi = roi_from_image(gray, box, size, margin)
    if mask is None:
        return roi[None]
    mask_roi = roi_from_image(mask.astype(np.uint8) * 255, box, size, margin)
    return np.stack([roi, np.where(mask_roi >= 128, 255, 0).astype(np.uint8)])


def normalize(rois: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N,H,W) or (H,W) -> float (N,1,H,W) in [-1, 1]; (N,C,H,W) keeps its channels."""
    if isinstance(rois, np.ndarray) and not rois.flags.writeable:
        rois = rois.copy()  # torch cannot share read-only memory (e.g. a decoded PIL image)
    t = torch.as_tensor(rois)
    if t.ndim == 2:
        t = t[None]
    t = t.float().div(255.0)
    return ((t - MEAN) / STD)[:, None] if t.ndim == 3 else (t - MEAN) / STD


def box_of_mask(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1 exclusive) of a boolean mask, None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
