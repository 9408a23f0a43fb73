"""`train-gan`: train the class-conditional SNGAN on one modality's lesion ROIs, then measure it.

Outputs under --out: checkpoint.pt, losses.json/.png and grid_epochNNN.png every epoch (training
resumes from checkpoint.pt unless --no-resume), then generator.safetensors + generator.json (fp16
weights, config), samples.png (8x8, rows alternate benign / malignant) and metrics.json: FID and KID
of synthetic ROIs (as many per class as there are real ones, or --fid-n in all) against the real ROIs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from training.common.device import default_device
from training.datasets.roi_table import lesions
from training.gan.fid import FidError, fid_kid
from training.gan.sngan import CheckpointError, GanConfig, generate, sample_grid, save_generator, save_grid, train_gan
from training.rois.crops import load_rois
from training.rois.prepare import LayoutError, prepared

QUICK_FID_N = 16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rois", type=Path, required=True, help="prepared folder (rois.csv) or a raw dataset folder")
    p.add_argument("--modality", choices=["us", "dm"], required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=None, help=f"default {GanConfig().epochs} (quick: 2)")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {GanConfig().batch_size} (quick: 8)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--quick", action="store_true",
                   help="tiny config (2 epochs of 2 iterations, batch 8, FID on 16 images): proves the command")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/checkpoint.pt exists")
    p.add_argument("--fid-n", type=int, default=None,
                   help="real ROIs (random, stratified) and as many synthetic ones for FID/KID (default: all; quick: 16)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: all cores; use 1 when another job shares the CPU)")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> GanConfig:
    overrides = {k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed).items()
                 if v is not None}
    return GanConfig.quick(**overrides) if args.quick else GanConfig(**overrides)


def _subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Indices of a class-stratified random subset of size n (all, in order, when n is None or too big)."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(n * len(idx) / len(labels)))
        picked.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))[:max(n, 2)]


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        records = lesions(prepared(args.rois), args.modality)
    except LayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not records:
        print(f"error: no {args.modality} lesions with a box under {args.rois}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    images = load_rois(records, progress=progress)
    labels = np.array([r.target for r in records], np.int64)
    counts = np.bincount(labels, minlength=2)
    print(f"{len(images)} {args.modality} lesion ROIs: {counts[0]} benign, {counts[1]} malignant")
    out: Path = args.out
    device = torch.device(args.device) if args.device else default_device()
    t0 = time.perf_counter()
    try:
        generator = train_gan(images, labels, config, out, resume=not args.no_resume, progress=progress,
                              device=device)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train_s = time.perf_counter() - t0
    sources = sorted({r.source for r in records})
    save_generator(generator, out / "generator.safetensors", config,
                   extra={"modality": args.modality, "sources": sources, "n_train": int(len(images)),
                          "n_train_per_class": counts.tolist()})
    save_grid(sample_grid(generator, config.seed), out / "samples.png")

    fid_n = args.fid_n if args.fid_n is not None else (QUICK_FID_N if args.quick else None)
    idx = _subset(labels, fid_n, config.seed)
    real, real_labels = images[idx], labels[idx]
    fake = generate(generator, real_labels, seed=config.seed + 1)
    print(f"FID/KID: {len(real)} real vs {len(fake)} synthetic ROIs (same class mix)")
    try:
        metrics = fid_kid(real, fake, device=device, progress=progress)
    except FidError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    history = json.loads((out / "losses.json").read_text()) if (out / "losses.json").is_file() else []
    metrics.update(modality=args.modality, sources=sources, epochs=config.epochs,
                   train_seconds_this_run=round(train_s, 1), device=str(device),
                   threads=torch.get_num_threads(), final_losses=history[-1] if history else None,
                   config=config.model_dump(mode="json"))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"FID {metrics['fid']:.2f}  KID {metrics['kid_mean']:.4f} +- {metrics['kid_std']:.4f}")
    print(f"wrote {out / 'generator.safetensors'}, {out / 'metrics.json'}, {out / 'samples.png'}")
    return 0
