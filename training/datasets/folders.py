"""Folder-per-class sets without outlines: `<root>/{benign,malignant}/*.png|jpg` (and `normal/`, if any).

Many public sets (and Kaggle re-uploads) come only as class folders. With no outline, the whole
image is the ROI: box = full image. Class folders with `_mask` files are BUSI's layout and are
left to that adapter. The modality cannot be seen from the files, so it is read from
`modality.txt` (`us` or `dm`) in the root; without one the set is taken as ultrasound, with a
warning. Nothing tells which images are of one patient, so each image is its own group.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from training.datasets.imaging import ImageError, PILLOW_SUFFIXES, image_size
from training.datasets.roi_table import MODALITIES, RoiRecord

NAME = "folders"
MODALITY = "us"  # default when modality.txt is missing
CLASSES = ("benign", "malignant", "normal")


def _class_dirs(base: Path) -> dict[str, Path]:
    """Class name -> folder, in CLASSES order; names in any case (Benign/, MALIGNANT/)."""
    dirs = {d.name.lower(): d for d in sorted(base.iterdir()) if d.is_dir() and d.name.lower() in CLASSES}
    return {c: dirs[c] for c in CLASSES if c in dirs}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PILLOW_SUFFIXES)


def find(root: Path) -> list[Path]:
    bases = {root, *(p.parent for p in root.rglob("*") if p.is_dir() and p.name.lower() in CLASSES[:2])}
    found = []
    for base in sorted(bases):
        dirs = _class_dirs(base)
        if not any(_images(dirs[c]) for c in CLASSES[:2] if c in dirs):
            continue
        if any("_mask" in p.stem.lower() for d in dirs.values() for p in _images(d)):
            continue  # BUSI
        found.append(base)
    return found


def _modality(root: Path, warn: Callable[[str], None]) -> str:
    path = root / "modality.txt"
    if not path.is_file():
        warn(f"{path}: missing, so {root} is taken as ultrasound ({MODALITY}); write 'us' or 'dm' in it")
        return MODALITY
    value = path.read_text(errors="replace").strip().lower()
    if value not in MODALITIES:
        warn(f"{path}: {value!r} is not one of {MODALITIES}; {root} is taken as ultrasound ({MODALITY})")
        return MODALITY
    return value


def read(root: Path, warn: Callable[[str], None]) -> list[RoiRecord]:
    modality = _modality(root, warn)
    records: list[RoiRecord] = []
    for label, folder in _class_dirs(root).items():
        for image in _images(folder):
            try:
                width, height = image_size(image)
            except ImageError as e:
                warn(f"{image}: {e}; skipped")
                continue
            key = f"{root.name}/{label}/{image.name}"
            box = {} if label == "normal" else dict(x0=0, y0=0, x1=width, y1=height)
            records.append(RoiRecord(
                image_path=str(image.resolve()), modality=modality, label=label, source=NAME,
                group=f"{NAME}:{key}", lesion_id=f"{NAME}:{key}", note=f"{root.name}; whole image", **box))
    return records
