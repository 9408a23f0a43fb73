"""ROI crops of a table's lesions, as the classifier sees them (uint8 N x size x size), cached on disk."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from models.preprocessing import INPUT_SIZE, ROI_MARGIN, roi_from_image, to_gray
from training.common.cache import cache_root
from training.datasets.roi_table import RoiRecord


def load_gray(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return to_gray(im)


def _cache_key(records: list[RoiRecord], size: int, margin: float) -> str:
    h = hashlib.sha256(json.dumps([size, margin]).encode())
    for r in records:
        p = Path(r.image_path)
        mtime = p.stat().st_mtime if p.exists() else 0
        h.update(f"{r.image_path}|{r.box}|{mtime}\n".encode())
    return h.hexdigest()[:20]


def load_rois(records: list[RoiRecord], size: int = INPUT_SIZE, margin: float = ROI_MARGIN,
              progress: bool = True) -> np.ndarray:
    """Crops of every record's lesion box (records without a box are an error)."""
    path = cache_root() / "rois" / f"{_cache_key(records, size, margin)}.npy"
    if path.is_file():
        return np.load(path)
    out = np.zeros((len(records), size, size), np.uint8)
    last_path, gray = None, None
    for i, r in enumerate(tqdm(records, desc="cropping ROIs", disable=not progress, leave=False)):
        if r.box is None:
            raise ValueError(f"{r.image_path}: record {r.lesion_id} has no lesion box")
        if r.image_path != last_path:
            gray, last_path = load_gray(r.image_path), r.image_path
        out[i] = roi_from_image(gray, r.box, size, margin)
    save_atomic(path, out)
    return out


def save_atomic(path: Path, array: np.ndarray) -> None:
    """Cache files appear whole or not at all (an interrupted run never leaves a half-written one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")  # parallel processes may fill the same cache entry
    np.save(tmp, array)
    tmp.replace(path)
