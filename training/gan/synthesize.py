"""`synthesize`: synthetic lesion ROIs from a trained SNGAN generator into one .npz.

The .npz holds `images` (uint8 N x 128 x 128, class-sorted) and `labels` (int64, 0 benign,
1 malignant); a preview grid (8x8, rows alternate benign / malignant) is written beside it as .png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from training.common.device import default_device
from training.gan.sngan import GeneratorFileError, class_grid, load_generator, save_grid, synthesize


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generator", type=Path, required=True, help="generator.safetensors written by train-gan")
    p.add_argument("--n-per-class", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="output .npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append .npz to the name
        np.savez_compressed(f, images=images, labels=labels)
    tmp.replace(path)
    return path


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n_per_class < 1:
        print("error: --n-per-class must be at least 1", file=sys.stderr)
        return 2
    device = torch.device(args.device) if args.device else default_device()
    try:
        generator = load_generator(args.generator, device=device)
    except GeneratorFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images, labels = synthesize(generator, args.n_per_class, seed=args.seed, batch_size=args.batch_size)
    out = write_npz(args.out, images, labels)
    preview = save_grid(class_grid(images, labels, n_classes=generator.n_classes), out.with_suffix(".png"))
    print(f"wrote {len(images)} ROIs ({args.n_per_class} per class) to {out}; preview {preview}")
    return 0
