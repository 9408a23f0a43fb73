"""Burned-in measurement marks, as sonographers leave them on exported ultrasound images.

BUSI images carry caliper crosses, dotted measurement lines and text, some in colour (data/README.md):
a classifier can learn them as shortcuts (lesions measured more carefully, more often malignant).
These functions draw such marks on a clean image so that their effect on a prediction can be
measured (bench/marks.py, tests/test_marks.py): calipers at the lesion's extremes, joined by dotted
lines, and a measurement label, white (gray images) or yellow (coloured overlays).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

WHITE = (255, 255, 255)
YELLOW = (255, 230, 0)


def _cross(draw: ImageDraw.ImageDraw, x: float, y: float, arm: int, colour, width: int) -> None:
    draw.line([(x - arm, y), (x + arm, y)], fill=colour, width=width)
    draw.line([(x, y - arm), (x, y + arm)], fill=colour, width=width)


def _dotted(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], colour, step: int) -> None:
    n = max(1, int(np.hypot(b[0] - a[0], b[1] - a[1]) / step))
    for t in np.linspace(0, 1, n + 1):
        x, y = a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
        draw.rectangle([x - 1, y - 1, x + 1, y + 1], fill=colour)


def burn_measurement(rgb: np.ndarray, box: tuple[float, float, float, float], colour=WHITE) -> np.ndarray:
    """Calipers on the lesion box's left/right and top/bottom extremes, dotted lines between them, and
    a "1 2.31cm / 2 1.47cm" label in the image's lower left; sizes scale with the image."""
    image = Image.fromarray(np.ascontiguousarray(rgb[..., :3]).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    h, w = rgb.shape[:2]
    arm, width, step = max(3, round(min(h, w) / 80)), max(1, round(min(h, w) / 300)), max(4, round(min(h, w) / 60))
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ends = [((x0, cy), (x1, cy)), ((cx, y0), (cx, y1))]
    for a, b in ends:
        _dotted(draw, a, b, colour, step)
        _cross(draw, *a, arm, colour, width)
        _cross(draw, *b, arm, colour, width)
    draw.text((max(2, w // 40), h - max(24, h // 8)), "1  2.31cm\n2  1.47cm", fill=colour)
    return np.asarray(image)
