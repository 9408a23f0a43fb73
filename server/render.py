"""PNG pictures of a result: the mask, the classifier's ROI, its Grad-CAM heat map and the overlay."""
from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw
from scipy import ndimage

_JET = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_mask(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))) > 0


def mask_png(mask: np.ndarray) -> bytes:
    return png_bytes(mask.astype(np.uint8) * 255)


def heatmap_png(roi: np.ndarray, cam: np.ndarray) -> bytes:
    """The ROI in gray with the heat map blended over it (red = drives the malignant score)."""
    colour = _JET[np.clip(np.rint(cam * 255), 0, 255).astype(np.uint8)]
    gray = np.repeat(roi[..., None], 3, axis=2).astype(np.float32)
    return png_bytes(np.clip(0.55 * gray + 0.45 * colour, 0, 255).astype(np.uint8))


def overlay_png(rgb: np.ndarray, mask: np.ndarray, box: list[int]) -> bytes:
    """The image with the mask's outline (red) and its box (yellow), lines scaled to the image."""
    width = max(1, round(max(rgb.shape[:2]) / 300))
    outline = mask & ~ndimage.binary_erosion(mask, iterations=width)
    out = rgb.copy()
    out[outline] = (255, 40, 40)
    image = Image.fromarray(out)
    x0, y0, x1, y1 = box
    ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 220, 0), width=width)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
