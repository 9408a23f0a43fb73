"""`probe-sites`: does the SAM probe travel between hospitals? A study, not a served model.

The served US model adds a logistic probe on LiteMedSAM's encoder (models.sam_probe) to the ResNet18.
The probe is cheap to fit once the encoder has seen every lesion (features cached per lesion), so it
can be measured across sites in minutes where the ResNet18 takes hours on this CPU. For the US lesions
of a folder with several sites (e.g. BUSI and BUS-BRA), with SAM's crop as served:
- `all sites`: group-aware 5-fold CV over every site (folds stratified by site and label), each site's
  out-of-fold figures at the served rule (temperature on the pooled out-of-fold logits, the largest
  threshold with sensitivity >= 0.90 on each site);
- `held out SITE`: the probe fitted on the other sites, temperature and threshold from their own
  cross-validation, then scored on SITE, which it never saw.
`--features`: what the logistic probe reads. `sam` (default, served): LiteMedSAM's encoder stages around
SAM's mask. `inception`: the 2048-d pool features of the ImageNet-trained Inception-v3 bundled for FID
(training.gan.fid), on the crop the server makes: a second pretrained view of the lesion, since no
ImageNet ResNet18 ships here. `sam+inception`: both, side by side (each feature standardised, the same
fixed C). A study of what travels between sites; none of it is served.
AUC CIs resample patients. Writes OUT/report.json, report.md and roc.png, and per held-out site
OUT/held-out-SITE/ (report.json with its threshold, predictions.csv per lesion): a `site-ablation` row, so
the probe alone is paired with the ResNet18 and the fused model on the same lesions.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from training.datasets.roi_table import RoiRecord
from training.rois.crops import save_atomic

FEATURES = ("sam", "inception", "sam+inception")
PROBE_NAMES = {"sam": "SAM probe", "inception": "Inception-v3 probe", "sam+inception": "SAM + Inception-v3 probe"}
ROW_KEYS = ("n", "n_malignant", "roc_auc", "roc_auc_ci", "sensitivity", "specificity", "ece")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rois", type=Path, required=True, help="prepared folder with two or more US sites")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=int, default=None,
                   help="the first N lesions per class and site, in 2 folds (smoke tests)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for SAM's encoder where not cached")
    p.add_argument("--features", choices=FEATURES, default="sam",
                   help="what the probe reads: LiteMedSAM's encoder (served), the FID Inception-v3's pool features "
                        "of the served crop, or both")


def _p(diff: np.ndarray, temperature: float) -> np.ndarray:
    return 1 / (1 + np.exp(-diff.astype(np.float64) / temperature))


def calibrated_oof(x: np.ndarray, records: list[RoiRecord], folds: int = 5) -> tuple[np.ndarray, float, float]:
    """Out-of-fold probe logits over `records`' group-aware folds, the temperature fitted on them and the
    threshold that keeps sensitivity >= 0.90 on each site."""
    from training.classifier.train_classifier import TrainConfig
    from training.common.metrics import fit_temperature, threshold_on_every_site
    from training.probe.sam_probe import out_of_fold, two_columns
    from training.rois.splits import folds_of
    y = np.array([r.target for r in records])
    cfg = TrainConfig(modality="us", folds=folds)  # the classifier's split seed and target sensitivity
    fold = np.zeros(len(records), int)
    for k, (_, test) in enumerate(folds_of(records, cfg.folds, cfg.seed)):
        fold[test] = k
    diff, _ = out_of_fold(x, y, fold)
    t = fit_temperature(y, two_columns(diff))
    return diff, t, threshold_on_every_site(y, _p(diff, t), [r.source for r in records], cfg.target_sensitivity)


def probe_sites(records: list[RoiRecord], x: np.ndarray, folds: int = 5) -> dict:
    from training.common.metrics import binary_report, per_site
    from training.probe.sam_probe import fit_probe, probe_logits
    y, groups = np.array([r.target for r in records]), [r.group for r in records]
    sites = sorted({r.source for r in records})
    diff, t, thr = calibrated_oof(x, records, folds)
    report: dict = {"all_sites": {"temperature": t, "threshold": thr,
                                  "per_site": per_site([r.source for r in records], y, _p(diff, t), thr,
                                                       groups=groups)},
                    "held_out": {}, "curves": {}}
    for k, site in enumerate(sites):
        train = np.array([r.source != site for r in records])
        tr_records = [r for r, keep in zip(records, train) if keep]
        _, t_tr, thr_tr = calibrated_oof(x[train], tr_records, folds)
        held = probe_logits(fit_probe(x[train], y[train]), x[~train])
        p = _p(held, t_tr)
        rep = binary_report(y[~train], p, thr_tr, groups=[g for g, keep in zip(groups, train) if not keep])
        report["held_out"][site] = {"trained_on": [s for s in sites if s != site], "temperature": t_tr,
                                    "threshold": thr_tr, **{key: rep[key] for key in ROW_KEYS}}
        report["curves"][site] = {"y": y[~train].tolist(), "p": p.tolist(),
                                  "records": [r for r, keep in zip(records, train) if not keep]}
    return report


def write_held_out(out: Path, site: str, row: dict, records: list[RoiRecord], p: list[float]) -> None:
    """OUT/held-out-SITE/ in the layout `site-ablation` reads (as train-classifier's OUT/holdout)."""
    import csv
    folder = out / f"held-out-{site}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(row, indent=2, allow_nan=False) + "\n")
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lesion_id", "group", "source", "label", "p_malignant"])
        w.writerows([r.lesion_id, r.group, r.source, r.label, repr(float(q))] for r, q in zip(records, p))


def inception_probe_features(records: list[RoiRecord], progress: bool) -> np.ndarray:
    """(N, 2048): the FID Inception-v3's pool features of each lesion's served crop (SAM's outline from a
    drawn box, the ResNet18's input), cached next to the crops."""
    from training.common.cache import cache_root
    from training.gan.fid import inception_features
    from training.rois.sources import load_inputs
    crops = load_inputs(records, "sam", channels=1, progress=progress)
    key = hashlib.sha256(np.ascontiguousarray(crops).tobytes()).hexdigest()[:20]
    path = cache_root() / "inception" / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    x = inception_features(crops, batch_size=16, progress=progress).astype(np.float32)
    save_atomic(path, x)
    return x


def markdown(report: dict) -> str:
    def f(v) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    def row(name: str, m: dict, thr: float) -> str:
        ci = m["roc_auc_ci"] or [float("nan")] * 2
        return (f"| {name} | {m['n']} ({m['n_malignant']}) | {f(m['roc_auc'])} [{ci[0]:.3f}, {ci[1]:.3f}] "
                f"| {f(m['sensitivity'])} / {f(m['specificity'])} at {thr:.3f} | {f(m['ece'])} |")
    a = report["all_sites"]
    lines = [f"| {PROBE_NAMES[report.get('features', 'sam')]} alone | n (malignant) | ROC AUC [95% CI] | sensitivity / specificity | ECE |",
             "|---|---|---|---|---|"]
    lines += [row(f"{s}, CV on all sites", m, a["threshold"]) for s, m in a["per_site"].items()]
    lines += [row(f"{s}, trained on {' + '.join(m['trained_on'])} only", m, m["threshold"])
              for s, m in report["held_out"].items()]
    return "\n".join(lines) + "\n\nCIs: percentile bootstrap over patient groups.\n"


def run(args: argparse.Namespace) -> int:
    import torch

    from models.preprocessing import ROI_MARGIN
    from models.probe_head import REGIONS, STAGES
    from training.common.plots import plot_roc
    from training.probe.sam_probe import probe_features
    from training.rois.prepare import prepared
    from training.rois.sources import SAM_FOR_BOXES
    from training.rois.splits import select
    if args.threads:
        torch.set_num_threads(args.threads)
    records = select(prepared(args.rois), "us", args.limit)
    sites = sorted({r.source for r in records})
    if len(sites) < 2:
        print(f"error: {args.rois} holds US lesions of {', '.join(sites) or 'no site'}: probe-sites needs two or more",
              file=sys.stderr)
        return 2
    parts = []
    if args.features in ("sam", "sam+inception"):
        parts.append(probe_features(records, "sam", SAM_FOR_BOXES, ROI_MARGIN, REGIONS, progress=sys.stderr.isatty(),
                                    stages=STAGES))
    if args.features in ("inception", "sam+inception"):
        parts.append(inception_probe_features(records, sys.stderr.isatty()))
    x = np.concatenate(parts, axis=1)
    report = probe_sites(records, x, folds=2 if args.limit else 5)  # a few lesions per class: two folds
    args.out.mkdir(parents=True, exist_ok=True)
    curves = report.pop("curves")
    report["features"] = args.features
    (args.out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    for site, c in curves.items():
        write_held_out(args.out, site, report["held_out"][site], c["records"], c["p"])
    plot_roc([(f"{s} held out", c["y"], c["p"]) for s, c in curves.items()], args.out / "roc.png",
             f"{PROBE_NAMES[args.features]} alone, trained on the other site")
    print(markdown(report))
    return 0
