"""`train-classifier`: group-aware stratified 5-fold cross-validation of the ResNet18, then a final fit.

Regimes (BraNet's question is whether synthetic ROIs help, so it is measured, not assumed):
  real    real ROIs only
  sngan   pretrain on SNGAN-synthesised ROIs, then fine-tune on real ones (the BraNet method)
  hybrid  real + synthetic ROIs mixed in one training set
In cross-validation the SNGAN of each fold is trained on that fold's training ROIs only, so that no
test lesion leaks into its synthetic pretraining data. Every fold is evaluated at its last epoch:
nothing is chosen on the test fold. Temperature and decision threshold are fitted on the pooled
out-of-fold predictions and shipped with the final model (trained on all lesions).

With several sites (sources, e.g. BUSI and BUS-BRA), folds are stratified by site and label and the CV
report has per-site rows; `--holdout-site SITE` trains and calibrates on the other sites and tests on SITE
(OUT/holdout/).

Outputs under --out: cv/ (per-fold history and curves, oof.csv, report.json/.md, ROC, confusion and
reliability plots) and weights/ (classifier-<modality>.safetensors + manifest.json, ready for
`evaluate --weights` and `export`).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from tqdm import tqdm

from models.classifier import ARCHITECTURE, CLASSES, build_classifier
from models.manifest import InputSpec, Manifest, ModelEntry, save_classifier, write_manifest
from models.preprocessing import ROI_MARGIN, Intensity, normalize
from training.classifier.augment import affine, scanner
from training.common.device import bf16_native, default_device
from training.common.provenance import git_commit
from training.datasets.roi_table import RoiRecord, summarize
from training.rois.prepare import prepared
from training.rois.sources import load_inputs
from training.rois.splits import folds_of, select

Regime = Literal["real", "sngan", "hybrid"]


class TrainConfig(BaseModel):
    modality: Literal["us", "dm"]
    regime: Regime = "real"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: Literal["affine", "scanner", "none"] = "affine"  # scanner: affine + gain/speckle/blur/resolution
    aug_degrees: float = 15.0
    aug_translate: float = 0.08       # fraction of the crop
    aug_scale: tuple[float, float] = (0.9, 1.1)
    folds: int = 5
    seed: int = 0
    pretrain_epochs: int = 5          # sngan: epochs on synthetic ROIs before fine-tuning
    synthetic_per_class: int = 500    # sngan/hybrid: synthetic ROIs per class
    gan_epochs: int = 40
    gan_iters_per_epoch: int | None = None  # None: one pass over the ROIs per SNGAN epoch
    target_sensitivity: float = 0.90
    roi_source: Literal["expert", "box", "sam"] = "expert"  # training.rois.sources
    channels: Literal[1, 2] = 1       # 2: the lesion mask (of the ROI source) as a second input channel
    sam: str = "litemedsam"           # roi_source sam: the SAM that outlines the lesion (the server's box route)
    sam_masks: str | None = None      # roi_source sam: its masks from this file instead (finetune-sam's out-of-fold masks)
    size: int = 128                   # classifier input, pixels
    margin: float = ROI_MARGIN        # context around the lesion box, fraction of its longer side (served too)
    intensity: Intensity = "raw"      # percentile: each image's gray levels standardised before the crop (served too)
    aux_outline: float = 0.0          # training-only head drawing the expert mask (training.classifier.outline_aux)
    aux_irregularity: float = 0.0     # training-only head predicting the expert outline's 1 - solidity
    amp: bool = True                  # bf16 autocast + channels_last where the hardware computes in bf16 (AMX
                                      # CPUs, GPUs: ~6x faster); float32 elsewhere (training.common.device)
    quick: bool = False

    @classmethod
    def quick_config(cls, **kw) -> "TrainConfig":
        base = dict(epochs=2, batch_size=8, folds=2, pretrain_epochs=1, synthetic_per_class=8, gan_epochs=1,
                    quick=True)
        return cls(**{**base, **kw})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rois", type=Path, required=True, help="prepared folder (rois.csv) or a raw dataset folder")
    p.add_argument("--modality", choices=["us", "dm"], required=True)
    p.add_argument("--regime", choices=["real", "sngan", "hybrid"], default="real")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="tiny config that proves the command end to end")
    for name, typ in (("epochs", int), ("batch-size", int), ("lr", float), ("folds", int), ("seed", int),
                      ("pretrain-epochs", int), ("synthetic-per-class", int), ("gan-epochs", int),
                      ("gan-iters-per-epoch", int)):
        p.add_argument(f"--{name}", type=typ, default=None)
    p.add_argument("--roi-source", choices=["expert", "box", "sam"], default=None,
                   help="crop from the expert mask, a jittered box, or SAM's mask from that box (training.rois.sources)")
    p.add_argument("--sam", default=None, help="SAM for the sam ROI source (default litemedsam; a fine-tuned name "
                   "from models/weights, e.g. litemedsam-us); the manifest tells the server to route boxes to it")
    p.add_argument("--sam-masks", type=Path, default=None,
                   help="the sam ROI source's masks from this file: finetune-sam's OUT/oof_masks.npz (cross-fitted)")
    p.add_argument("--mask-channel", action="store_true", help="give the ROI source's lesion mask as a 2nd channel")
    p.add_argument("--served-as", nargs="*", default=["expert", "box", "sam"],
                   choices=["expert", "box", "sam", "auto"],
                   help="also score every fold model on its test lesions cropped by these ROI sources "
                        "(default: expert box sam; none: --served-as). auto: the served localiser's box "
                        "(models/weights, trained on BUSI and BUS-BRA, so optimistic there), blank where it "
                        "finds no lesion: pair on found lesions with evaluate-auto-roi --cv")
    p.add_argument("--augment", choices=["affine", "scanner", "none"], default=None,
                   help="affine (flips, rotation, shift, scale); scanner: affine + gain, speckle, blur, resolution")
    p.add_argument("--size", type=int, default=None, help="classifier input size (BraNet: 128)")
    p.add_argument("--margin", type=float, default=None,
                   help=f"context around the lesion box, fraction of its longer side (default {ROI_MARGIN})")
    p.add_argument("--intensity", choices=["raw", "percentile"], default=None,
                   help="raw gray levels, or each image's 1st-99th percentile stretched to the full range before "
                        "the crop (a scanner's gain and dynamic range standardised; served the same way)")
    p.add_argument("--aux-outline", type=float, default=None, metavar="W",
                   help="weight of a training-only head that draws the expert mask (privileged information)")
    p.add_argument("--aux-irregularity", type=float, default=None, metavar="W",
                   help="weight of a training-only head that predicts the expert outline's 1 - solidity")
    p.add_argument("--aug-scale", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    p.add_argument("--aug-translate", type=float, default=None)
    p.add_argument("--no-final", action="store_true", help="cross-validate only, skip the final fit")
    p.add_argument("--no-cv", action="store_true", help="final fit only")
    p.add_argument("--limit", type=int, default=None, help="use the first N lesions per class (smoke tests)")
    p.add_argument("--gan-dir", type=Path, default=None,
                   help="reuse the per-fold SNGANs of another run's --out (e.g. hybrid reusing sngan's)")
    p.add_argument("--only-folds", type=int, nargs="+", default=None, metavar="K",
                   help="run only these folds (0-based), e.g. in parallel processes; rerun without it to report")
    p.add_argument("--report-only", action="store_true", help="rebuild cv/report.* and plots from cv/oof.csv")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    p.add_argument("--holdout-site", default=None, metavar="SITE",
                   help="out-of-site test: cross-validate and fit on the other site(s) (sources), temperature and "
                        "threshold from their out-of-fold predictions, then score SITE (e.g. busbra, busi) under "
                        "OUT/holdout; SITE is never trained or calibrated on. With --no-cv: the final fit alone, "
                        "uncalibrated (temperature 1, threshold 0.5), for comparing recipes by AUC")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {k: v for k, v in dict(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, folds=args.folds, seed=args.seed,
        pretrain_epochs=args.pretrain_epochs, synthetic_per_class=args.synthetic_per_class,
        gan_epochs=args.gan_epochs, gan_iters_per_epoch=args.gan_iters_per_epoch, augment=args.augment, aug_scale=args.aug_scale,
        aug_translate=args.aug_translate, roi_source=args.roi_source, size=args.size, margin=args.margin,
        intensity=args.intensity, aux_outline=args.aux_outline, aux_irregularity=args.aux_irregularity, sam=args.sam,
        sam_masks=str(args.sam_masks) if args.sam_masks else None,
        channels=2 if args.mask_channel else None).items() if v is not None}
    kw = dict(modality=args.modality, regime=args.regime, **overrides)
    return TrainConfig.quick_config(**kw) if args.quick else TrainConfig(**kw)


# ---------------------------------------------------------------------------------------------- training

def _batches(n: int, batch_size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def uses_outline(cfg: TrainConfig) -> bool:
    return cfg.aux_outline > 0 or cfg.aux_irregularity > 0


def fit(model: torch.nn.Module, images: np.ndarray, targets: np.ndarray, cfg: TrainConfig, epochs: int,
        desc: str, evaluate: Callable[[torch.nn.Module], dict] | None = None,
        outlines: np.ndarray | None = None) -> list[dict]:
    """Adam + one-cycle cosine schedule, class-weighted cross-entropy; returns per-epoch history.

    `outlines`: the expert masks cropped like `images`, for the training-only heads of OutlineAux;
    `model` itself is trained and stays a plain ResNet18."""
    from training.classifier.outline_aux import OutlineAux, aux_loss, irregularity
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = default_device()
    amp = cfg.amp and bf16_native(dev)
    memory_format = torch.channels_last  # faster in float32 too: 1.50 vs 1.75 s per batch of 32 on the AVX2 CPU
    aux = outlines is not None
    net = OutlineAux(model) if aux else model
    net.to(dev, memory_format=memory_format)
    x_all = normalize(images)
    if aux:  # one more channel, so that every augmentation moves the target with the image
        x_all = torch.cat([x_all, normalize(outlines)], dim=1)
        irregular_all = torch.as_tensor(irregularity(outlines))
    y_all = torch.as_tensor(targets, dtype=torch.long)
    counts = torch.bincount(y_all, minlength=2).clamp(min=1).float()
    class_weight = counts.sum() / (2 * counts)  # malignant is the minority in every set here
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, epochs * -(-len(y_all) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    history = []
    for epoch in tqdm(range(1, epochs + 1), desc=desc, leave=False):
        net.train()
        total, seen, t0 = 0.0, 0, time.time()
        for idx in _batches(len(y_all), cfg.batch_size, gen):
            if len(idx) < 2:  # batch norm needs two samples
                continue
            x, y = x_all[idx], y_all[idx]
            if cfg.augment in ("affine", "scanner"):
                x = affine(x, cfg.modality, gen, cfg.aug_degrees, cfg.aug_translate, cfg.aug_scale)
            if cfg.augment == "scanner":
                x = scanner(x, gen)
            x = x.to(dev, memory_format=memory_format)
            if aux:
                x, outline = x[:, :-1], x[:, -1:]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                out = net(x)
            logits = out[0] if aux else out
            loss = F.cross_entropy(logits.float(), y.to(dev), weight=class_weight.to(dev))
            if aux:
                loss = loss + aux_loss(out[1], out[2], outline, irregular_all[idx].to(dev),
                                       cfg.aux_outline, cfg.aux_irregularity)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        row = {"epoch": epoch, "train_loss": total / max(seen, 1), "seconds": round(time.time() - t0, 1),
               "precision": "bf16" if amp else "f32"}
        if evaluate is not None and (epoch % 3 == 0 or epoch == epochs):
            row.update(evaluate(model))
        history.append(row)
    return history


@torch.inference_mode()
def logits_of(model: torch.nn.Module, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """float32 logits, as served."""
    model.eval()
    dev = next(model.parameters()).device
    x = normalize(images)
    return torch.cat([model(x[i:i + batch_size].to(dev)).float().cpu()
                      for i in range(0, len(x), batch_size)]).numpy()


def softmax_p(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """p(malignant) of two-column logits at `temperature`."""
    return torch.softmax(torch.as_tensor(logits) / temperature, dim=1)[:, 1].numpy()


def gan_config(cfg: TrainConfig):
    """The SNGAN configuration of a run's per-fold GANs."""
    from training.gan.sngan import GanConfig
    update = {"epochs": cfg.gan_epochs, "seed": cfg.seed}
    if cfg.gan_iters_per_epoch:
        update["iters_per_epoch"] = cfg.gan_iters_per_epoch
    return (GanConfig.quick() if cfg.quick else GanConfig()).model_copy(update=update)


def synthetic_set(images: np.ndarray, targets: np.ndarray, cfg: TrainConfig, gan_dir: Path
                  ) -> tuple[np.ndarray, np.ndarray]:
    """SNGAN trained on these (training-only) ROIs, then sampled: the synthetic ROIs of one fold."""
    from training.gan.sngan import save_generator, synthesize, train_gan
    gan_cfg = gan_config(cfg)
    generator = train_gan(images, targets, gan_cfg, gan_dir, resume=True)
    save_generator(generator, gan_dir / "generator.safetensors", gan_cfg)
    return synthesize(generator, cfg.synthetic_per_class, seed=cfg.seed)


def train_one(images: np.ndarray, targets: np.ndarray, cfg: TrainConfig, gan_dir: Path, desc: str,
              evaluate: Callable[[torch.nn.Module], dict] | None = None,
              outlines: np.ndarray | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """One model under the configured regime (used by every fold and by the final fit).

    `gan_dir` holds the SNGAN trained on exactly these ROIs; an sngan and a hybrid run can share it
    (train_gan resumes a finished run instead of training again)."""
    torch.manual_seed(cfg.seed)
    model = build_classifier(in_channels=cfg.channels)
    history: list[dict] = []
    if cfg.regime in ("sngan", "hybrid"):
        syn_x, syn_y = synthetic_set(images, targets, cfg, gan_dir)
        if cfg.regime == "sngan":
            history += [{**h, "phase": "pretrain-synthetic"} for h in
                        fit(model, syn_x, syn_y, cfg, cfg.pretrain_epochs, f"{desc} pretrain")]
        else:
            images, targets = np.concatenate([images, syn_x]), np.concatenate([targets, syn_y])
    history += fit(model, images, targets, cfg, cfg.epochs, desc, evaluate, outlines)
    return model, history


# ------------------------------------------------------------------------------------ cross-validation

def cross_validate(records: list[RoiRecord], images: np.ndarray, cfg: TrainConfig, out: Path,
                   gan_root: Path | None = None, only_folds: set[int] | None = None,
                   served_as: dict[str, np.ndarray] | None = None, outlines: np.ndarray | None = None
                   ) -> dict | None:
    """Every fold (or `only_folds`, so that folds can run in parallel processes); the report once all
    folds have predictions. `served_as`: the same lesions cropped by other ROI sources; each fold model
    is also scored on its test fold as those sources crop it (training/serving skew)."""
    targets = np.array([r.target for r in records])
    served_as = served_as or {}
    oof = np.zeros((len(records), 2), np.float32)
    oof_tta = np.zeros((len(records), 2), np.float32)
    oof_by = {src: np.zeros((len(records), 2), np.float32) for src in served_as}
    fold_of = np.full(len(records), -1)
    for k, (train_idx, test_idx) in enumerate(folds_of(records, cfg.folds, cfg.seed)):
        fold_dir = out / "cv" / f"fold{k}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        test_groups = {records[i].group for i in test_idx}
        assert not test_groups & {records[i].group for i in train_idx}, "a group crosses folds"

        def monitor(model: torch.nn.Module, idx=test_idx) -> dict:
            # Logged for the curves only; no choice (epoch, threshold, config) is made from it.
            from sklearn.metrics import roc_auc_score
            lg = logits_of(model, images[idx])
            y = targets[idx]
            return {"test_fold_auc": float(roc_auc_score(y, softmax_p(lg))) if len(set(y)) == 2 else None,
                    "test_fold_loss": float(F.cross_entropy(torch.as_tensor(lg), torch.as_tensor(y)))}

        done = fold_dir / "predictions.npz"  # a finished fold: an interrupted CV resumes after it
        if done.is_file() and same_config(json.loads(str(np.load(done)["config"])), cfg):
            saved = np.load(done)
            oof[test_idx], oof_tta[test_idx], fold_of[test_idx] = saved["logits"], saved["logits_tta"], k
            for src in list(oof_by):
                if f"logits_{src}" in saved:
                    oof_by[src][test_idx] = saved[f"logits_{src}"]
                else:  # saved before this source was scored
                    del oof_by[src]
            print(f"fold {k + 1}/{cfg.folds}: already done ({done})", flush=True)
            continue
        if only_folds is not None and k not in only_folds:
            continue
        model, history = train_one(images[train_idx], targets[train_idx], cfg,
                                   (gan_root or out) / "cv" / f"fold{k}" / "gan",
                                   f"fold {k + 1}/{cfg.folds}", monitor,
                                   None if outlines is None else outlines[train_idx])
        oof[test_idx] = logits_of(model, images[test_idx])
        # Test-time augmentation, measured alongside: mean logits of the crop and its mirror image.
        oof_tta[test_idx] = (oof[test_idx] + logits_of(model, images[test_idx][..., ::-1].copy())) / 2
        for src, arr in served_as.items():
            if src in oof_by:
                oof_by[src][test_idx] = logits_of(model, arr[test_idx])
        fold_of[test_idx] = k
        (fold_dir / "history.json").write_text(json.dumps(history, indent=1))
        np.savez(fold_dir / "predictions.tmp.npz", logits=oof[test_idx], logits_tta=oof_tta[test_idx],
                 test_idx=test_idx, config=json.dumps(cfg.model_dump(mode="json")),
                 **{f"logits_{src}": lg[test_idx] for src, lg in oof_by.items()})
        (fold_dir / "predictions.tmp.npz").replace(done)
        last = history[-1]
        print(f"fold {k + 1}/{cfg.folds}: test-fold AUC {last.get('test_fold_auc')} "
              f"({sum(h['seconds'] for h in history):.0f} s)", flush=True)
    if (fold_of < 0).any():
        print(f"folds {sorted(set(range(cfg.folds)) - set(fold_of.tolist()))} not done yet: no report", flush=True)
        return None
    write_oof(out / "cv" / "oof.csv", records, fold_of, oof)
    write_oof(out / "cv" / "oof_tta.csv", records, fold_of, oof_tta)
    for src, logits in oof_by.items():
        write_oof(out / "cv" / f"oof_served_{src}.csv", records, fold_of, logits)
    return report_cv(out / "cv", cfg)


SKEW_KEYS = ("roc_auc", "roc_auc_ci", "sensitivity", "specificity", "accuracy", "ece")


def same_config(saved: dict, cfg: TrainConfig) -> bool:
    """A fold saved under an older TrainConfig counts as done if its settings equal cfg's, new fields at defaults."""
    return TrainConfig.model_validate(saved).model_dump(mode="json") == cfg.model_dump(mode="json")


def write_oof(path: Path, records: list[RoiRecord], fold_of: np.ndarray, logits: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lesion_id", "group", "source", "label", "target", "fold", "logit_benign", "logit_malignant"])
        for r, k, lg in zip(records, fold_of, logits):
            w.writerow([r.lesion_id, r.group, r.source, r.label, r.target, int(k), float(lg[0]), float(lg[1])])


def read_oof_column(path: Path, column: str) -> list[str]:
    """One column of an oof.csv (`source`: each lesion's site, `group`: its patient / near-duplicate group)."""
    with open(path, newline="") as f:
        return [r[column] for r in csv.DictReader(f)]


def read_oof(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    y = np.array([int(r["target"]) for r in rows])
    fold = np.array([int(r["fold"]) for r in rows])
    logits = np.array([[float(r["logit_benign"]), float(r["logit_malignant"])] for r in rows], np.float32)
    return y, fold, logits


def report_cv(cv_dir: Path, cfg: TrainConfig) -> dict:
    """Fold metrics, pooled out-of-fold metrics, temperature and threshold, plots: from oof.csv alone."""
    from training.common.metrics import binary_report, cv_summary, fit_temperature, per_site, threshold_on_every_site
    from training.common.plots import plot_confusion, plot_curves, plot_reliability, plot_roc
    y, fold, logits = read_oof(cv_dir / "oof.csv")
    sites = read_oof_column(cv_dir / "oof.csv", "source")
    groups = read_oof_column(cv_dir / "oof.csv", "group")  # CIs resample whole patients / near-duplicate groups
    p_raw = softmax_p(logits)
    temperature = fit_temperature(y, logits)
    p = softmax_p(logits, temperature)
    threshold = threshold_on_every_site(y, p, sites, cfg.target_sensitivity)
    folds = sorted(set(fold.tolist()))
    fold_reports = [binary_report(y[fold == k], p[fold == k], threshold=threshold) for k in folds]
    summary = cv_summary(fold_reports, y, p, threshold, groups=groups)
    report = {
        "modality": cfg.modality, "regime": cfg.regime, "folds": len(folds), "n": int(len(y)),
        "roi_source": cfg.roi_source, "channels": cfg.channels, "config": cfg.model_dump(),
        "temperature": temperature, "threshold": threshold,
        "threshold_rule": f"largest threshold with out-of-fold sensitivity >= {cfg.target_sensitivity}"
                          + (" on each site" if len(set(sites)) > 1 else ""),
        "ece_uncalibrated": binary_report(y, p_raw, threshold=0.5, n_boot=0)["ece"],
        "summary": summary, "fold_reports": fold_reports,
        "at_0.5": binary_report(y, p, threshold=0.5, n_boot=0),
        "cross_fitted": cross_fitted_operating_point(y, fold, logits, cfg.target_sensitivity, sites),
        # Each site's out-of-fold predictions at the pooled temperature and threshold: the threshold must
        # hold its sensitivity on every site, not only pooled.
        "per_site": per_site(sites, y, p, threshold, groups=groups),
    }
    # The same fold models, the test lesions cropped by each ROI source, the temperature and threshold
    # of the training source: what the model does when serving crops differ from training crops.
    report["served_as"] = {cfg.roi_source: {k: summary["pooled"][k] for k in SKEW_KEYS}}
    for path in sorted(cv_dir.glob("oof_served_*.csv")):
        y_s, _, logits_s = read_oof(path)
        rep_s = binary_report(y_s, softmax_p(logits_s, temperature), threshold=threshold, groups=groups)
        report["served_as"][path.stem.removeprefix("oof_served_")] = {k: rep_s[k] for k in SKEW_KEYS}
    if (cv_dir / "oof_tta.csv").is_file():
        y_t, _, logits_t = read_oof(cv_dir / "oof_tta.csv")
        report["tta_flip"] = binary_report(y_t, softmax_p(logits_t, fit_temperature(y_t, logits_t)), threshold=0.5,
                                           groups=groups)
    (cv_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_roc([(f"fold {k + 1}", y[fold == k], p[fold == k]) for k in folds] + [("pooled", y, p)],
             cv_dir / "roc.png", f"{cfg.modality.upper()} {cfg.regime}: {len(folds)}-fold CV")
    plot_confusion(summary["pooled"]["confusion_matrix"], cv_dir / "confusion.png",
                   f"{cfg.modality.upper()} {cfg.regime}: pooled out-of-fold, threshold {threshold:.3f}")
    plot_reliability(y, p, cv_dir / "reliability.png", f"{cfg.modality.upper()} {cfg.regime}: calibrated")
    seconds = 0.0
    for k in folds:
        history = json.loads((cv_dir / f"fold{k}" / "history.json").read_text())
        seconds += sum(h["seconds"] for h in history)
        plot_curves([h for h in history if "phase" not in h], cv_dir / f"fold{k}" / "curves.png",
                    f"{cfg.modality.upper()} {cfg.regime}: fold {k + 1} (test-fold values: monitoring only)")
    report["seconds"] = round(seconds)  # training time of all folds (monitoring passes excluded)
    (cv_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (cv_dir / "report.md").write_text(cv_markdown(report))
    return report


def cross_fitted_operating_point(y: np.ndarray, fold: np.ndarray, logits: np.ndarray, target: float,
                                 sites: list[str] | None = None) -> dict:
    """The served recipe judged without looking at the judged fold: for each fold, temperature and
    threshold (the same rule: sensitivity >= target on each site) are fitted on the other folds'
    out-of-fold predictions, then applied to this one. Pooled and per site."""
    from training.common.metrics import ece, fit_temperature, threshold_on_every_site
    site = np.asarray(sites if sites is not None else ["all"] * len(y))
    p = np.zeros(len(y))
    decision = np.zeros(len(y), bool)
    for k in sorted(set(fold.tolist())):
        rest, here = fold != k, fold == k
        t = fit_temperature(y[rest], logits[rest])
        thr = threshold_on_every_site(y[rest], softmax_p(logits[rest], t), site[rest], target)
        p[here] = softmax_p(logits[here], t)
        decision[here] = p[here] >= thr

    def operating_point(m: np.ndarray) -> dict:
        d, yy = decision[m], y[m]
        tp, fn = int((d & (yy == 1)).sum()), int((~d & (yy == 1)).sum())
        tn, fp = int((~d & (yy == 0)).sum()), int((d & (yy == 0)).sum())
        return {"sensitivity": tp / max(tp + fn, 1), "specificity": tn / max(tn + fp, 1),
                "accuracy": (tp + tn) / max(len(yy), 1), "ece": ece(yy, p[m]), "confusion_matrix": [[tn, fp], [fn, tp]]}
    out = operating_point(np.ones(len(y), bool))
    if len(set(site.tolist())) > 1:
        out["per_site"] = {s: operating_point(site == s) for s in sorted(set(site.tolist()))}
    return out


def cv_markdown(report: dict) -> str:
    s, pooled = report["summary"], report["summary"]["pooled"]

    def ms(key: str) -> str:
        return f"{s[key]['mean']:.3f} ± {s[key]['std']:.3f}" if s.get(key) and s[key].get("mean") is not None else "n/a"

    ci = pooled["roc_auc_ci"]
    return "\n".join([
        f"# {report['modality'].upper()} classifier, regime `{report['regime']}`: {report['folds']}-fold CV",
        "", f"{report['n']} lesions, group-aware stratified folds, last epoch of every fold.", "",
        "| | value |", "|---|---|",
        f"| fold ROC-AUC (mean ± sd) | {ms('roc_auc')} |",
        f"| pooled out-of-fold ROC-AUC [95% bootstrap CI] | {pooled['roc_auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] |",
        f"| accuracy / sensitivity / specificity at threshold {report['threshold']:.3f} | "
        f"{pooled['accuracy']:.3f} / {pooled['sensitivity']:.3f} / {pooled['specificity']:.3f} |",
        f"| accuracy / sensitivity / specificity at 0.5 (calibrated) | {report['at_0.5']['accuracy']:.3f} / "
        f"{report['at_0.5']['sensitivity']:.3f} / {report['at_0.5']['specificity']:.3f} |",
        f"| sensitivity / specificity / accuracy, temperature and threshold fitted on the other folds | "
        f"{report['cross_fitted']['sensitivity']:.3f} / {report['cross_fitted']['specificity']:.3f} / "
        f"{report['cross_fitted']['accuracy']:.3f} |",
        f"| ECE before / after temperature {report['temperature']:.2f} | "
        f"{report['ece_uncalibrated']:.3f} / {pooled['ece']:.3f} |",
        "", *per_site_markdown(report), *served_as_markdown(report),
        "![ROC](roc.png) ![confusion](confusion.png) ![reliability](reliability.png)", ""])


def per_site_markdown(report: dict) -> list[str]:
    from training.common.metrics import site_table
    rows = report.get("per_site", {})
    if len(rows) < 2:
        return []
    return [f"Out-of-fold predictions per site (source): temperature fitted on all sites pooled, threshold "
            f"{report['threshold']:.3f} the largest keeping sensitivity >= "
            f"{report['config']['target_sensitivity']:.2f} on each site:", "", *site_table(rows, report["threshold"]), ""]


def served_as_markdown(report: dict) -> list[str]:
    rows = report.get("served_as", {})
    if len(rows) < 2:
        return []
    lines = [f"Trained on `{report['roi_source']}` ROIs; the same fold models on test lesions cropped by each "
             f"source (temperature and threshold {report['threshold']:.3f} from the training source):", "",
             "| served ROI source | AUC [95% CI] | sensitivity / specificity at threshold | ECE |", "|---|---|---|---|"]
    for src, m in rows.items():
        ci = m["roc_auc_ci"] or [float("nan")] * 2
        lines.append(f"| {src} | {m['roc_auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
                     f"{m['sensitivity']:.3f} / {m['specificity']:.3f} | {m['ece']:.3f} |")
    return lines + [""]


# ------------------------------------------------------------------------------------------- final fit

def manifest_metrics(report: dict) -> dict:
    """The cross-validated numbers a manifest entry carries, from a cv/report.json."""
    pooled = report["summary"]["pooled"]
    return {"cv_folds": report["folds"], "roi_source": report["roi_source"],
            "cv_roc_auc_mean": report["summary"]["roc_auc"]["mean"],
            "cv_roc_auc_std": report["summary"]["roc_auc"]["std"],
            **{f"oof_{k}": pooled[k] for k in ("roc_auc", "roc_auc_ci", "accuracy", "sensitivity", "specificity",
                                                "f1", "ece")},
            "oof_accuracy_at_0.5": report["at_0.5"]["accuracy"],
            "threshold_rule": report.get("threshold_rule"), "ci_resamples": pooled.get("ci_resamples", "cases"),
            # what the recipe does at a threshold it did not see: fitted on the other folds (the pooled
            # oof_sensitivity above is at the threshold fitted on all of them, so it meets the target by design)
            "cross_fitted": {k: v for k, v in report.get("cross_fitted", {}).items() if k != "confusion_matrix"},
            "sites": sorted(report.get("per_site", {})),
            "per_site": {s: {k: m[k] for k in ("n", "n_malignant", "roc_auc", "roc_auc_ci", "sensitivity",
                                               "specificity", "ece")}
                         for s, m in report.get("per_site", {}).items()}}


def image_hashes(records: list[RoiRecord]) -> list[str]:
    """The first 16 hex digits of the sha256 of every image trained on, sorted: `evaluate` warns when a
    folder it is given holds any of them (a model scored on its own training images says nothing)."""
    from models.manifest import sha256_file
    return sorted({sha256_file(Path(p))[:16] for p in {r.image_path for r in records}})


def final_fit(records: list[RoiRecord], images: np.ndarray, cfg: TrainConfig, out: Path, cv: dict | None,
              gan_root: Path | None = None, outlines: np.ndarray | None = None) -> Path:
    targets = np.array([r.target for r in records])
    model, history = train_one(images, targets, cfg, (gan_root or out) / "final" / "gan", "final fit",
                               outlines=outlines)
    from training.common.plots import plot_curves
    (out / "final").mkdir(parents=True, exist_ok=True)
    (out / "final" / "history.json").write_text(json.dumps(history, indent=1))
    plot_curves([h for h in history if "phase" not in h], out / "final" / "curves.png",
                f"{cfg.modality.upper()} {cfg.regime}: final fit on all lesions")
    name = f"classifier-{cfg.modality}"
    weights = out / "weights"
    sha = save_classifier(model, weights / f"{name}.safetensors")
    summary = summarize(records)
    metrics = manifest_metrics(cv) if cv else {}
    entry = ModelEntry(
        name=name, file=f"{name}.safetensors", sha256=sha, architecture=ARCHITECTURE, modality=cfg.modality,
        input=InputSpec(channels=cfg.channels, roi_source=cfg.roi_source, size=cfg.size, roi_margin=cfg.margin,
                        intensity=cfg.intensity,
                        sam=cfg.sam if cfg.roi_source == "sam" else None), classes=list(CLASSES), regime=cfg.regime,
        temperature=cv["temperature"] if cv else 1.0, threshold=cv["threshold"] if cv else 0.5,
        training=cfg.model_dump(),
        data={"sources": summary.counts, "lesions": len(records), "groups": len({r.group for r in records}),
              "split_seed": cfg.seed, "image_sha256_16": image_hashes(records)},
        metrics=metrics, git_commit=git_commit(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_manifest(Manifest(models={name: entry}), weights)
    return weights


# ---------------------------------------------------------------------------------------- held-out site

def holdout_report(held: list[RoiRecord], weights: Path, cfg: TrainConfig, cv: dict | None, out: Path,
                   crop_kw: dict) -> dict:
    """The final model of the training sites on the held-out site, at the temperature and threshold fitted
    on the training sites' out-of-fold predictions: report.json/.md, predictions.csv, ROC and reliability.
    Without a cross-validation (--no-cv) nothing is calibrated: temperature 1 and threshold 0.5, marked
    `"calibrated": false`, a recipe's AUC to compare and never an out-of-site row to serve (export refuses it)."""
    from models.manifest import load_classifier
    from training.common.metrics import SITE_KEYS, binary_report
    from training.common.plots import plot_confusion, plot_reliability, plot_roc
    name = f"classifier-{cfg.modality}"
    model, entry = load_classifier(name, weights)
    logits = logits_of(model, load_inputs(held, cfg.roi_source, cfg.channels, **crop_kw))
    temperature, threshold = (cv["temperature"], cv["threshold"]) if cv else (1.0, 0.5)
    p = softmax_p(logits, temperature)
    y = np.array([r.target for r in held])
    site = held[0].source
    trained_on = sorted(entry.data["sources"])
    calibration = (f"temperature and threshold fitted on the out-of-fold predictions of {', '.join(trained_on)} "
                   f"(sensitivity >= {cfg.target_sensitivity} there); {site} never trained or calibrated on"
                   if cv else f"uncalibrated (--no-cv): temperature 1 and threshold 0.5, compare the AUC only; "
                              f"{site} never trained on")
    report = {
        "site": site, "trained_on": trained_on, "modality": cfg.modality, "regime": cfg.regime,
        "roi_source": cfg.roi_source, "channels": cfg.channels, "model_sha256": entry.sha256,
        "training": {k: getattr(cfg, k) for k in ("epochs", "seed", "augment", "intensity")},
        "calibrated": cv is not None, "temperature": temperature, "threshold": threshold, "calibration": calibration,
        **binary_report(y, p, threshold, groups=[r.group for r in held]),
        "training_sites_cv": {"pooled": {k: cv["summary"]["pooled"][k] for k in SITE_KEYS},
                              "per_site": cv.get("per_site", {})} if cv else {"pooled": {}, "per_site": {}},
    }
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lesion_id", "group", "source", "label", "logit_benign", "logit_malignant", "p_malignant"])
        w.writerows([r.lesion_id, r.group, r.source, r.label, float(lg[0]), float(lg[1]), repr(float(pi))]
                    for r, lg, pi in zip(held, logits, p))
    title = f"{cfg.modality.upper()} trained on {', '.join(trained_on)}, tested on {site}"
    plot_roc([(site, y, p)], out / "roc.png", title)
    plot_confusion(report["confusion_matrix"], out / "confusion.png", f"{title}, threshold {threshold:.3f}")
    plot_reliability(y, p, out / "reliability.png", title)
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(holdout_markdown(report))
    return report


def holdout_markdown(rep: dict) -> str:
    from training.common.metrics import site_table
    rows = {f"{rep['site']} (held out)": {k: rep[k] for k in ("n", "n_malignant", "roc_auc", "roc_auc_ci",
                                                              "sensitivity", "specificity", "ece")},
            **{f"{s} (out of fold)": m for s, m in rep["training_sites_cv"]["per_site"].items()}}
    return "\n".join([
        f"# {rep['modality'].upper()} classifier out of site: trained on {', '.join(rep['trained_on'])}, "
        f"tested on {rep['site']}", "",
        f"ROI source `{rep['roi_source']}`, regime `{rep['regime']}`, ResNet18 alone (no SAM probe). "
        f"{rep['calibration']}: temperature {rep['temperature']:.3f}, threshold {rep['threshold']:.3f}.", "",
        *site_table(rows, rep["threshold"]), "",
        "![ROC](roc.png) ![confusion](confusion.png) ![reliability](reliability.png)", ""])


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    if args.report_only:
        cfg = TrainConfig.model_validate_json((args.out / "config.json").read_text())
        print(cv_markdown(report_cv(args.out / "cv", cfg)))
        return 0
    records = select(prepared(args.rois), cfg.modality, args.limit)
    held: list[RoiRecord] = []
    if args.holdout_site:
        sites = sorted({r.source for r in records})
        if args.holdout_site not in sites or len(sites) < 2:
            print(f"error: --holdout-site {args.holdout_site}: the {cfg.modality} lesions of {args.rois} come from "
                  f"{', '.join(sites) or 'no site'}; name one of them, with another site left to train on",
                  file=sys.stderr)
            return 2
        held = [r for r in records if r.source == args.holdout_site]
        records = [r for r in records if r.source != args.holdout_site]
    if len({r.target for r in records}) < 2:
        print(f"error: {args.rois} holds no benign and malignant {cfg.modality} lesions to train on", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(cfg.model_dump_json(indent=2))
    torch.manual_seed(cfg.seed)
    if cfg.regime != "real" and (cfg.channels, cfg.size) != (1, 128):
        print("error: the SNGAN makes 128x128 gray ROIs only: --mask-channel and --size need --regime real",
              file=sys.stderr)
        return 2
    crop_kw = dict(size=cfg.size, margin=cfg.margin, sam_name=cfg.sam, intensity=cfg.intensity,
                   sam_masks=Path(cfg.sam_masks) if cfg.sam_masks else None)
    images = load_inputs(records, cfg.roi_source, cfg.channels, **crop_kw)  # fixed jitter seed: one set of SAM masks
    served_as = {src: load_inputs(records, src, cfg.channels, **crop_kw)
                 for src in args.served_as if src != cfg.roi_source}
    # The expert masks in the training crops' frame: targets of the training-only heads.
    outlines = load_inputs(records, cfg.roi_source, 2, mask_of="expert", **crop_kw)[:, 1] if uses_outline(cfg) else None
    print(f"{len(records)} {cfg.modality} lesions ({sum(r.target for r in records)} malignant), regime {cfg.regime}")
    cv = None if args.no_cv else cross_validate(records, images, cfg, args.out, args.gan_dir,
                                                 set(args.only_folds) if args.only_folds else None, served_as,
                                                 outlines)
    if args.only_folds:
        return 0
    if cv:
        print((args.out / "cv" / "report.md").read_text())
    if held:  # the protocol needs the model of all training sites, --no-final or not
        weights = final_fit(records, images, cfg, args.out, cv, args.gan_dir, outlines)
        print(f"final weights (trained on {', '.join(sorted({r.source for r in records}))}): {weights}")
        holdout_report(held, weights, cfg, cv, args.out / "holdout", crop_kw)
        print((args.out / "holdout" / "report.md").read_text())
    elif not args.no_final:
        print(f"final weights: {final_fit(records, images, cfg, args.out, cv, args.gan_dir, outlines)}")
    return 0
