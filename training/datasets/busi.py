"""BUSI (Al-Dhabyani et al. 2020): `{benign,malignant,normal}/NAME.png` with `NAME_mask*.png` beside.

Several masks of one image are OR-ed. Near duplicates (same scan re-cropped, neighbouring frames)
share a group: found by perceptual hash here, joined with `near_duplicates.csv` where it exists.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from models.preprocessing import box_of_mask, to_gray
from training.datasets.grouping import fingerprints, group_ids, near_duplicate_pairs
from training.datasets.roi_table import RoiRecord

NAME = "busi"
MODALITY = "us"
CLASSES = ("benign", "malignant", "normal")
MASK_RE = re.compile(r"^(?P<stem>.+)_mask(_\d+)?$")


def find(root: Path) -> list[Path]:
    """Folders holding benign/ and malignant/ class folders with `_mask` files."""
    candidates = [root, *[p for p in root.rglob("*") if p.is_dir() and p.name in ("benign", "malignant")]]
    found = []
    for c in candidates:
        base = c if c == root else c.parent
        if base in found:
            continue
        if any((base / cls).is_dir() and any((base / cls).glob("*_mask*.png")) for cls in CLASSES[:2]):
            found.append(base)
    return found


def _images_and_masks(folder: Path) -> dict[Path, list[Path]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    images = {p.stem: p for p in files if not MASK_RE.match(p.stem)}
    out: dict[Path, list[Path]] = {p: [] for p in images.values()}
    for p in files:
        m = MASK_RE.match(p.stem)
        if m:
            image = images.get(m.group("stem"))
            if image is not None:
                out[image].append(p)
    return out


def read(root: Path, warn: Callable[[str], None]) -> list[RoiRecord]:
    records: list[RoiRecord] = []
    keys: list[str] = []
    hashes, thumbs = [], []
    for label in CLASSES:
        folder = root / label
        if not folder.is_dir():
            continue
        for image_path, mask_paths in _images_and_masks(folder).items():
            try:
                with Image.open(image_path) as im:
                    im.load()
                    gray = to_gray(im)
            except Exception as e:
                warn(f"{image_path}: unreadable image ({e}); skipped")
                continue
            if not mask_paths:
                warn(f"{image_path}: no mask file ({image_path.stem}_mask.png); skipped")
                continue
            union = np.zeros(gray.shape, bool)
            ok = True
            for mp in mask_paths:
                try:
                    with Image.open(mp) as m:
                        mask = np.asarray(m.convert("L")) > 0
                except Exception as e:
                    warn(f"{mp}: unreadable mask ({e}); image skipped")
                    ok = False
                    break
                if mask.shape != gray.shape:
                    warn(f"{mp}: mask is {mask.shape[1]}x{mask.shape[0]} but image is "
                         f"{gray.shape[1]}x{gray.shape[0]}; image skipped")
                    ok = False
                    break
                union |= mask
            if not ok:
                continue
            box = box_of_mask(union)
            if box is None and label != "normal":
                warn(f"{image_path}: {label} image with an empty mask; skipped")
                continue
            key = f"{label}/{image_path.name}"
            h, t = fingerprints(gray)
            keys.append(key)
            hashes.append(h)
            thumbs.append(t)
            records.append(RoiRecord(
                image_path=str(image_path.resolve()), modality=MODALITY, label=label, source=NAME,
                group="", mask_paths=";".join(str(p.resolve()) for p in mask_paths),
                lesion_id=f"{NAME}:{label}/{image_path.stem}",
                **(dict(zip(("x0", "y0", "x1", "y1"), box)) if box else {})))
    pairs = near_duplicate_pairs(keys, np.array(hashes), np.array(thumbs)) if keys else []
    pairs += _listed_pairs(root, warn)
    groups = group_ids(keys, pairs, NAME)
    for key, r in zip(keys, records):
        r.group = groups[key]
    return records


def _listed_pairs(root: Path, warn: Callable[[str], None]) -> list[tuple[str, str]]:
    """Pairs from a `near_duplicates.csv` (columns image_a, image_b as `class/file.png`) beside the data."""
    for csv_path in (root / "near_duplicates.csv", root.parent / "near_duplicates.csv"):
        if csv_path.is_file():
            try:
                with open(csv_path, newline="") as f:
                    return [(row["image_a"], row["image_b"]) for row in csv.DictReader(f)]
            except (KeyError, csv.Error) as e:
                warn(f"{csv_path}: not a near-duplicate list ({e}); ignored")
    return []
