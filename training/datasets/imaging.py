"""Image and mask files of the extra adapters: Pillow formats, and DICOM through pydicom when installed.

pydicom is not a dependency: the public sets ship DICOM, but most people convert them to PNG, and
`training/rois/crops.py` crops with Pillow. So a PNG/JPEG beside a DICOM (same name) is preferred, and a
DICOM without pydicom is a clear per-file error rather than an import failure.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm")
DICOM_SUFFIXES = (".dcm", ".dicom")
CONVERSIONS = (".png", ".jpg", ".jpeg")  # what a DICOM is usually converted to, in preference order


class ImageError(Exception):
    """A file that cannot be used as an image or mask; the message says why (without the path)."""


def optional(name: str) -> ModuleType | None:
    """An optional package (pydicom, openpyxl, xlrd) if importable; a function so tests can hide one."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in PILLOW_SUFFIXES + DICOM_SUFFIXES


def locate(path: Path) -> Path | None:
    """`path` or a conversion of it with the extension swapped; a Pillow-readable file wins."""
    swapped = [path.with_suffix(s) for s in CONVERSIONS if s != path.suffix.lower()]
    order = [path, *swapped] if path.suffix.lower() in PILLOW_SUFFIXES else [*swapped, path]
    for p in order:
        if p.is_file():
            return p
    return None


def preferred(files: list[Path]) -> list[Path]:
    """One file per name: of `x.dcm` and `x.png`, the PNG (see module doc)."""
    by_stem: dict[Path, list[Path]] = {}
    for f in sorted(files):
        by_stem.setdefault(f.with_suffix(""), []).append(f)
    rank = {s: i for i, s in enumerate(CONVERSIONS)}
    return [min(group, key=lambda p: rank.get(p.suffix.lower(), len(rank))) for group in by_stem.values()]


def _dicom(path: Path, pixels: bool):
    pydicom = optional("pydicom")
    if pydicom is None:
        raise ImageError("DICOM file but pydicom is not installed; install pydicom or put a PNG "
                         "conversion with the same name beside it")
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=not pixels)
    except Exception as e:
        raise ImageError(f"unreadable DICOM ({e})") from e


def image_size(path: Path) -> tuple[int, int]:
    """(width, height), after checking that the file is an intact image."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        ds = _dicom(path, pixels=False)
        try:
            return int(ds.Columns), int(ds.Rows)
        except (AttributeError, TypeError, ValueError) as e:
            raise ImageError(f"DICOM without image size ({e})") from e
    try:
        with Image.open(path) as im:
            size = im.size
            if im.format == "PNG":
                im.verify()  # CRC of every chunk: catches corrupt bytes without decoding a 4000 px mammogram
            else:
                im.load()
    except Exception as e:
        raise ImageError(f"unreadable image ({e})") from e
    return size


def read_mask(path: Path) -> np.ndarray:
    """Boolean HxW array: nonzero pixels of a mask image (any mode) or DICOM."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        ds = _dicom(path, pixels=True)
        try:
            arr = np.asarray(ds.pixel_array)
        except Exception as e:
            raise ImageError(f"unreadable DICOM pixels ({e})") from e
        if arr.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1)) > 1:
            arr = arr.max(axis=-1)
        if arr.ndim != 2:
            raise ImageError(f"DICOM mask has shape {arr.shape}, expected one 2-D frame")
        return arr > 0
    try:
        with Image.open(path) as m:
            return np.asarray(m.convert("L")) > 0
    except Exception as e:
        raise ImageError(f"unreadable mask ({e})") from e


def mask_box(image: Path, mask: Path, label: str, warn) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) of the lesion in `mask`, the expert mask of `image`; None, after a warning
    naming the file, when the mask is missing, either file is unreadable, the sizes differ or the mask is empty."""
    from models.preprocessing import box_of_mask
    if not mask.is_file():
        warn(f"{mask}: mask of {image.name} not found; image skipped")
        return None
    try:
        width, height = image_size(image)
    except ImageError as e:
        warn(f"{image}: {e}; skipped")
        return None
    try:
        m = read_mask(mask)
    except ImageError as e:
        warn(f"{mask}: {e}; image skipped")
        return None
    if m.shape != (height, width):
        warn(f"{mask}: mask is {m.shape[1]}x{m.shape[0]} but image {image.name} is {width}x{height}; image skipped")
        return None
    box = box_of_mask(m)
    if box is None:
        warn(f"{mask}: empty mask for the {label} image {image.name}; skipped")
    return box
