"""Uploaded bytes -> a checked RGB image and a metadata-free PNG to keep.

What is accepted is decided by the bytes, never by the file name: PNG and JPEG only (magic bytes),
at most `max_pixels` (checked from the header, before decoding: decompression bombs), sides at least
`min_side` and an aspect ratio of at most `max_aspect`. EXIF orientation is applied, then every
metadata chunk (EXIF, text, ICC) is dropped by re-encoding only the pixels.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from models import guarded_image
from models.preprocessing import to_gray
from server.errors import ApiError
from server.settings import Settings

MAGIC = {guarded_image.PNG_MAGIC: "png", guarded_image.JPEG_MAGIC: "jpeg"}


@dataclass
class DecodedImage:
    rgb: np.ndarray  # HxWx3 uint8, orientation applied
    png: bytes  # what is stored: pixels only
    sha256: str  # of the uploaded bytes
    format: str

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def sniff(data: bytes) -> str:
    fmt = guarded_image.sniff(data)
    if fmt is None:
        raise ApiError(415, "unsupported_media_type", "the file is not a PNG or JPEG image (checked by its content)")
    return fmt


def rejected(err: guarded_image.ImageRejected) -> ApiError:
    """Our message for a refused image; 415 when it is not a PNG/JPEG at all, else 422."""
    return ApiError(415 if err.code == "unsupported_media_type" else 422, err.code, err.message)


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = to_gray(image)  # 16-bit: rescaled to the data's range, not clipped
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        # Transparent areas become black, the background of ultrasound and mammography alike.
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))  # L, P, CMYK (Adobe-inverted handled by Pillow), YCbCr


def decode(data: bytes, settings: Settings) -> DecodedImage:
    if not data:
        raise ApiError(422, "empty_file", "the uploaded file is empty")
    sniff(data)
    try:
        image, fmt = guarded_image.open_checked(data, settings.max_pixels)
        image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image)
    except guarded_image.ImageRejected as err:
        raise rejected(err) from None
    except Exception as err:  # EXIF or an odd mode that Pillow cannot convert; its text stays out of the answer
        raise ApiError(422, "corrupt_image", "the image data cannot be decoded (truncated or corrupt)") from err
    height, width = rgb.shape[:2]
    if min(width, height) < settings.min_side:
        raise ApiError(422, "image_too_small", f"image is {width}x{height}; each side needs at least {settings.min_side} pixels")
    if max(width, height) / min(width, height) > settings.max_aspect:
        raise ApiError(422, "bad_aspect_ratio",
                       f"image is {width}x{height}; the long side may be at most {settings.max_aspect:g}x the short one")
    rgb = np.ascontiguousarray(rgb)
    return DecodedImage(rgb=rgb, png=encode_png(rgb), sha256=hashlib.sha256(data).hexdigest(), format=fmt)


def encode_png(rgb: np.ndarray) -> bytes:
    """Pixels only; gray images stay one channel (a third of the bytes)."""
    if rgb.ndim == 3 and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        rgb = rgb[..., 0]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def load_png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    return np.asarray(image.convert("RGB"))
