"""`fold-fid`: FID/KID of the SNGAN of one cross-validation fold (train-classifier --regime sngan). A study.

The fold's generator (trained on that fold's training ROIs) draws as many ROIs per class as the
training ROIs hold, subsampled to --n; they are compared with the real training ROIs. For scale,
the same numbers are computed between two disjoint halves of the real ROIs (real vs real).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from training.classifier.train_classifier import TrainConfig, gan_config
from training.gan.fid import fid_kid
from training.gan.sngan import generate, load_generator, train_gan
from training.rois.crops import load_rois
from training.rois.prepare import prepared
from training.rois.splits import folds_of, select


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="a finished train-classifier --regime sngan output folder")
    p.add_argument("--rois", type=Path, required=True, help="the --rois the run was trained on")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--n", type=int, default=200, help="images per set (Inception on CPU is slow)")
    p.add_argument("--threads", type=int, default=None)


def fold_fid(run: Path, rois: Path, fold: int, n: int) -> dict:
    cfg = TrainConfig.model_validate_json((run / "config.json").read_text())
    records = select(prepared(rois), cfg.modality, None)
    train_idx, _ = folds_of(records, cfg.folds, cfg.seed)[fold]
    images = load_rois(records, progress=False)[train_idx]
    labels = np.array([records[i].target for i in train_idx])
    gan_dir = run / "cv" / f"fold{fold}" / "gan"
    if (gan_dir / "generator.safetensors").is_file():
        generator = load_generator(gan_dir / "generator.safetensors")
    else:  # runs made before generators were saved: a finished checkpoint loads and trains nothing
        generator = train_gan(images, labels, gan_config(cfg), gan_dir, resume=True, progress=False)
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(images))
    half = min(n, len(images) // 2)
    fake = generate(generator, labels[pick[:n]], seed=1)
    result = {"fold": fold, "modality": cfg.modality, "gan_epochs": cfg.gan_epochs,
              "sngan_vs_real": fid_kid(images[pick[:n]], fake, device="cpu"),
              "real_vs_real": fid_kid(images[pick[:half]], images[pick[half:2 * half]], device="cpu")}
    (gan_dir / "fid.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    r = fold_fid(args.run, args.rois, args.fold, args.n)
    s, ref = r["sngan_vs_real"], r["real_vs_real"]
    print(f"{r['modality']} fold {r['fold']}: SNGAN vs real FID {s['fid']:.1f}, KID {s['kid_mean']:.4f} ± "
          f"{s['kid_std']:.4f} (n={s['n_real']}/{s['n_fake']}); real vs real FID {ref['fid']:.1f}, "
          f"KID {ref['kid_mean']:.4f} (n={ref['n_real']}/{ref['n_fake']})")
    return 0
