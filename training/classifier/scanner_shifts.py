"""Whole-image changes another scanner or setting makes, on 8-bit RGB images of gray ultrasound.

`bench/shift.py` applies fixed ones to measure how far the served prediction moves; `sam-probe
--scanner-augment` fits the SAM probe on a randomly shifted view of every training lesion as well
(`random_shift`), as `--mark-augment` does for measurement marks.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def _clipped(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 255).round().astype(np.uint8)


def gain(rgb: np.ndarray, factor: float) -> np.ndarray:
    return _clipped(rgb.astype(np.float32) * factor)


def contrast(rgb: np.ndarray, factor: float) -> np.ndarray:
    x = rgb.astype(np.float32)
    return _clipped(x.mean() + factor * (x - x.mean()))


def speckle(rgb: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise, one field for all channels (a gray image stays gray)."""
    noise = rng.standard_normal(rgb.shape[:2]).astype(np.float32)[..., None]
    return _clipped(rgb.astype(np.float32) * (1 + sd * noise))


def blur(rgb: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius)))


def resolution(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Down to `factor` of the size and back up: a coarser scanner."""
    im = Image.fromarray(rgb)
    small = (max(1, int(im.width * factor)), max(1, int(im.height * factor)))
    return np.asarray(im.resize(small, Image.BILINEAR).resize(im.size, Image.BILINEAR))


# kind -> range its strength is drawn from (uniform) for training views
RANGES: dict[str, tuple[float, float]] = {"gain": (0.7, 1.3), "contrast": (0.7, 1.0), "speckle": (0.05, 0.2),
                                          "blur": (0.5, 2.0), "resolution": (0.4, 0.7)}


def random_shift(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One kind of shift, its strength drawn from RANGES."""
    kind = list(RANGES)[int(rng.integers(len(RANGES)))]
    strength = float(rng.uniform(*RANGES[kind]))
    if kind == "speckle":
        return speckle(rgb, strength, rng)
    return {"gain": gain, "contrast": contrast, "blur": blur, "resolution": resolution}[kind](rgb, strength)
