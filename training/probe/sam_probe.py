"""`sam-probe`: SAM's own view of the lesion next to the ResNet18 (models.sam_probe), cross-validated.

RUN... are train-classifier runs on the `sam` ROI source: one, or several seeds (then their mean, as
`ensemble` does). For each run the probe, a logistic regression on SAM's embedding of the lesion
averaged over `--regions` and (`--iou-token`, not served) its mask decoder's IoU token for SAM's mask
box (`models.sam_probe.probe_input`), is fitted on that run's training folds
and scored on its test fold, so every lesion's fused prediction comes from models that never saw it.
The fused logit difference is the ResNet18's + alpha x the probe's, alpha = the ratio of their
out-of-fold spreads (no labels used; the two get equal say); temperature and threshold are then fitted
on the fused out-of-fold logits as for any run. The regression's C is fixed beforehand, not tuned on
any fold. Other views of each lesion (measurement marks burned in, a scanner shift) are scored out of
fold with `--marks` / `--scanner`, and also fitted on with `--mark-augment` / `--scanner-augment`.

Writes OUT/cv (oof.csv fused, oof_resnet.csv, oof_probe.csv; report with each part's AUC and the
paired AUC difference fused - ResNet18) and OUT/weights (the runs' final fits, the probe fitted on
all lesions, one manifest entry), ready for `export`.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from models.manifest import SamProbeSpec, WeightsError, sha256_file
from models.probe_head import (ALL_REGIONS, ALL_STAGES, REGIONS, STAGES, Region, SamProbe, Stage, encoder_only,
                               probe_size)
from models.sam_probe import probe_input
from training.classifier.train_classifier import (TrainConfig, cv_markdown, manifest_metrics, read_oof, report_cv,
                                                   write_oof)
from training.datasets.roi_table import RoiRecord
from training.probe.views import Job, View, view_rows
from training.rois.crops import save_atomic
from training.rois.sources import SamViews, drawn_box, lesion_rng, lesion_view

C = 0.05  # L2 strength of RESEARCH.md's probe on LiteMedSAM features, fixed before any of these runs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+", help="train-classifier output folders on the sam ROI source")
    p.add_argument("--rois", type=Path, required=True, help="the runs' --rois (prepared folder or dataset folder)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=int, default=None, help="the runs' --limit, if they had one")
    p.add_argument("--marks", action="store_true",
                   help="also score each fold's probe on the lesions with measurement marks burned in (out of fold)")
    p.add_argument("--mark-augment", action="store_true",
                   help="train the probe on the marked view of every training lesion too (implies --marks)")
    p.add_argument("--scanner", action="store_true",
                   help="also score each fold's probe on a scanner-shifted view of each lesion (out of fold)")
    p.add_argument("--scanner-augment", action="store_true",
                   help="train the probe on the scanner-shifted view of every training lesion too (implies --scanner)")
    p.add_argument("--regions", nargs="+", choices=ALL_REGIONS, default=list(REGIONS),
                   help="where to average SAM's embedding (default: mask crop posterior, served; mask crop = the "
                        "first served probe; see probe-regions)")
    p.add_argument("--stages", nargs="+", choices=ALL_STAGES, default=list(STAGES),
                   help="which outputs of SAM's image encoder to average (default: all, as served; neck = the image "
                        "embedding alone, the probe served before)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: all cores), also the encoder worker processes' count")
    p.add_argument("--iou-token", action="store_true",
                   help="also read the mask decoder's IoU token for the box of SAM's mask (default: off, as served; "
                        "it reads how the box was drawn, see RESULTS.md)")


def probe_features(records: list[RoiRecord], source: str, sam_name: str, margin: float,
                   regions: tuple[Region, ...] = REGIONS, seed: int = 0, sam_masks: Path | None = None,
                   progress: bool = True, iou_token: bool = False, stages: tuple[Stage, ...] = ("neck",),
                   weights_dir: Path | None = None) -> np.ndarray:
    """(N, models.sam_probe.probe_size): SAM `sam_name`'s encoder `stages` for each image, averaged over
    each region around the ROI source's lesion mask and box, then (`iou_token`) its decoder's IoU token
    for that box (models.sam_probe.probe_input). The image embedding alone comes from its cache; other
    stages from a fresh encoder pass, whose features are cached. The `auto` source takes the localiser of
    `weights_dir` (default models/weights) and only lesions it found (training.rois.auto_views.NotFound)."""
    from models.sam import SAM_MODELS, load_sam
    from models.segmentation import Embedding, SamSegmenter
    from training.rois.sam_embeddings import Embeddings
    if sam_name not in SAM_MODELS:
        raise ValueError(f"the SAM probe needs a packaged SAM encoder ({', '.join(SAM_MODELS)}), not {sam_name!r}")
    if source == "sam":
        sam = SamViews(records, seed, sam_name, progress, sam_masks)
    elif source == "auto":
        from training.rois.auto_views import AutoViews, NotFound
        sam = AutoViews(records, sam_name, weights_dir, progress)
        if not sam.found().all():  # before the encoder pass, not half-way through it
            raise NotFound(f"{int((~sam.found()).sum())} of these {len(records)} lesions have no auto ROI "
                           "(no lesion found): give the found ones only")
    else:
        sam = None
    if source == "sam":
        sam.dice()  # outline first: that encoder pass also fills the embeddings' cache
    if encoder_only(stages):
        return view_features(records, sam_name, margin, regions, View("clean", source=source, sam=sam),
                             [source, sam.identity if sam else None], seed, progress, iou_token, stages)
    emb = Embeddings(records, sam_name, progress)
    segmenter = SamSegmenter(load_sam(sam_name)) if iou_token else None
    out = np.zeros((len(records), probe_size(regions, iou_token)), np.float32)
    for i, r in enumerate(records):
        shape = emb.original_size[i]
        box, mask = lesion_view(r, i, source, shape, seed, sam)
        embedding = Embedding(sam_name, emb[i], tuple(shape), tuple(emb.input_size[i]))
        out[i] = probe_input(segmenter, embedding, mask, box, margin, regions, iou_token).numpy()
    return out


MARK_COLOURS = ((255, 255, 255), (255, 230, 0), (0, 255, 255), (0, 255, 0))  # white, yellow, cyan, green
MARK_BOX_SEED = 2  # the marks' calipers sit on another drawn box than the prompt's (bench/marks.py uses seed 0)
SHIFT_SEED = 3  # the scanner-shifted view's draw per lesion


def marked_features(records: list[RoiRecord], sam_name: str, margin: float, regions: tuple[Region, ...] = REGIONS,
                    seed: int = 0, progress: bool = True, iou_token: bool = False,
                    stages: tuple[Stage, ...] = ("neck",)) -> np.ndarray:
    """`probe_features` of each image with measurement marks burned in (training.classifier.marks; colour and
    caliper box drawn per lesion): the view of a scanner's overlay that the probe learns to look past."""
    return view_features(records, sam_name, margin, regions, View("marked", partial(burn_marks, seed)),
                         [MARK_BOX_SEED, MARK_COLOURS], seed, progress, iou_token, stages)


def burn_marks(seed: int, r: RoiRecord, rgb: np.ndarray) -> np.ndarray:
    from training.classifier.marks import burn_measurement
    colour = MARK_COLOURS[int(lesion_rng(r, seed).integers(len(MARK_COLOURS)))]
    return burn_measurement(rgb, drawn_box(r, rgb.shape[:2], MARK_BOX_SEED), colour)


def shift_scanner(r: RoiRecord, rgb: np.ndarray) -> np.ndarray:
    from training.classifier.scanner_shifts import random_shift
    return random_shift(rgb, lesion_rng(r, SHIFT_SEED))


def shifted_features(records: list[RoiRecord], sam_name: str, margin: float, regions: tuple[Region, ...] = REGIONS,
                     seed: int = 0, progress: bool = True, iou_token: bool = False,
                     stages: tuple[Stage, ...] = ("neck",)) -> np.ndarray:
    """`probe_features` of each image as another scanner or setting would give it (one random kind and
    strength per lesion, training.classifier.scanner_shifts): the view that teaches the probe to look past texture."""
    from training.classifier.scanner_shifts import RANGES
    return view_features(records, sam_name, margin, regions, View("shifted", shift_scanner),
                         ["scanner", SHIFT_SEED, RANGES], seed, progress, iou_token, stages)


def view_cache(records: list[RoiRecord], sam_name: str, margin: float, regions: tuple[Region, ...], name: str,
               key: list, seed: int, iou_token: bool, stages: tuple[Stage, ...] = ("neck",)) -> Path:
    import hashlib

    from models.encoder_runtime import identity
    from models.sam import sam_identity
    from training.common.cache import cache_root
    # the token, the stages and the encoder's runtime joined the key later: views cached without them keep
    # their names
    later = (["iou_token"] if iou_token else []) + ([["stages", *stages]] if stages != ("neck",) else []) \
        + [identity(sam_name)]
    later += [["encoder", identity(sam_name)]]  # the image encoder's runtime and precision (issue 28)
    digest = hashlib.sha256(json.dumps([sam_name, sam_identity(sam_name), margin, list(regions), seed, *key,
                                        *later]).encode())
    for r in records:
        digest.update(f"{r.image_path}|{r.box}\n".encode())
    return cache_root() / "sam-probe" / f"{name}-{digest.hexdigest()[:20]}.npy"


def outline_rows(view: View, todo: list[int], margin: float, regions: tuple[Region, ...], iou_token: bool,
                 stages: tuple[Stage, ...]) -> np.ndarray | None:
    """The clean view's rows of lesions `todo` as the `sam` source's outline pass computed them, in the same
    encoder forward (SamViews.probe_rows: the served probe only), or None: then a fresh pass computes them."""
    if view.change is not None or not isinstance(view.sam, SamViews):
        return None
    rows = view.sam.probe_rows(margin, regions, iou_token, stages)
    return None if rows is None else rows[todo]


def view_features(records: list[RoiRecord], sam_name: str, margin: float, regions: tuple[Region, ...], view: View,
                  key: list, seed: int, progress: bool, iou_token: bool = False,
                  stages: tuple[Stage, ...] = ("neck",)) -> np.ndarray:
    """`probe_features` of every lesion in `view` (training.probe.views), from a fresh encoder pass.
    Encoded once and cached under the view's name and `key`: for this list of lesions, and per lesion,
    so that another list of the same lesions (a site of two, a held-out site) encodes only the new ones."""
    import hashlib

    from training.common.cache import cache_root
    path = view_cache(records, sam_name, margin, regions, view.name, key, seed, iou_token, stages)
    if path.is_file():
        return np.load(path)
    ident = view_cache([], sam_name, margin, regions, view.name, key, seed, iou_token, stages).stem

    def row_path(r: RoiRecord) -> Path:
        digest = hashlib.sha256(f"{ident}|{r.image_path}|{r.box}".encode()).hexdigest()[:24]
        return cache_root() / "sam-probe-lesions" / digest[:2] / f"{digest}.npy"
    todo = [i for i, r in enumerate(records) if not row_path(r).is_file()]
    rows = np.stack([np.load(row_path(r)) for r in records]) if not todo else None
    if todo:
        subset = [records[i] for i in todo]
        # the sam source indexes its masks by position: a subset of lesions needs the subset's masks
        if view.sam is not None and len(todo) < len(records) and not hasattr(view.sam, "_ident"):
            todo, subset = list(range(len(records))), records  # masks from a file: all of its lesions at once
        new = outline_rows(view, todo, margin, regions, iou_token, stages)
        if new is None:
            sub_view = view if view.sam is None or len(todo) == len(records) else \
                View(view.name, view.change, view.source, view.sam.subset(subset))
            new = view_rows(Job(subset, sub_view, sam_name, margin, regions, seed, iou_token, stages), progress)
        rows = np.zeros((len(records), new.shape[1]), np.float32)
        at = {i: k for k, i in enumerate(todo)}
        for i, r in enumerate(records):
            rows[i] = new[at[i]] if i in at else np.load(row_path(r))
        for i, row in zip(todo, new):
            save_atomic(row_path(records[i]), row)
    save_atomic(path, rows)
    return rows


def fit_probe(x: np.ndarray, y: np.ndarray) -> SamProbe:
    from sklearn.linear_model import LogisticRegression
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-8] = 1.0
    lr = LogisticRegression(C=C, max_iter=5000).fit((x - mean) / scale, y)
    probe = SamProbe(x.shape[1])
    with torch.no_grad():
        probe.mean.copy_(torch.from_numpy(mean))
        probe.scale.copy_(torch.from_numpy(scale))
        probe.linear.weight.copy_(torch.from_numpy(lr.coef_.astype(np.float32)))
        probe.linear.bias.copy_(torch.from_numpy(lr.intercept_.astype(np.float32)))
    return probe.eval()


def probe_logits(probe: SamProbe, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return probe(torch.from_numpy(x)).numpy()


def two_columns(diff: np.ndarray) -> np.ndarray:
    return np.stack([-diff / 2, diff / 2], axis=1).astype(np.float32)


def run_configs(runs: list[Path]) -> TrainConfig:
    cfgs = [TrainConfig.model_validate_json((run / "config.json").read_text()) for run in runs]
    first = cfgs[0]
    for run, cfg in zip(runs, cfgs):
        if not (run / "cv" / "oof.csv").is_file():
            raise ValueError(f"{run} holds no cross-validation ({run / 'cv' / 'oof.csv'}; trained with --no-cv?): the "
                             "probe is fitted and fused on the run's out-of-fold predictions")
        if cfg.roi_source != "sam":
            raise ValueError(f"{run} was trained on {cfg.roi_source} ROIs: the probe reads SAM's view, train on --roi-source sam")
        if (cfg.modality, cfg.sam, cfg.sam_masks, cfg.margin, cfg.channels, cfg.size) != \
                (first.modality, first.sam, first.sam_masks, first.margin, first.channels, first.size):
            raise ValueError(f"{run} differs from {runs[0]} in modality, SAM, margin or input: one served input only")
    return first


def check_lesions(runs: list[Path], records: list[RoiRecord]) -> None:
    """ValueError unless every run's out-of-fold predictions are for exactly these lesions, in order."""
    ids = [r.lesion_id for r in records]
    for run in runs:
        with open(run / "cv" / "oof.csv", newline="") as f:
            if [row["lesion_id"] for row in csv.DictReader(f)] != ids:
                raise ValueError(f"{run} was not trained on these lesions (another --rois or --limit?)")


def fit_views(x: np.ndarray, y: np.ndarray, extra: list[np.ndarray]) -> SamProbe:
    """The probe on the clean features and on each `extra` view of the same lesions."""
    return fit_probe(np.concatenate([x, *extra]), np.concatenate([y] * (1 + len(extra))))


def out_of_fold(x: np.ndarray, y: np.ndarray, fold: np.ndarray, views: dict[str, np.ndarray] | None = None,
                augment: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each lesion's probe logit from the probe fitted on the other folds (and on their `augment` views),
    on its clean features and on each of its `views`."""
    views = views or {}
    d_p, d_v = np.zeros(len(y), np.float32), {name: np.zeros(len(y), np.float32) for name in views}
    for k in sorted(set(fold.tolist())):
        tr, te = fold != k, fold == k
        fold_probe = fit_views(x[tr], y[tr], [views[name][tr] for name in augment])
        d_p[te] = probe_logits(fold_probe, x[te])
        for name, v in views.items():
            d_v[name][te] = probe_logits(fold_probe, v[te])
    return d_p, d_v


VIEWS = {"marked": "marks", "shifted": "scanner"}  # view -> its entry in the report


def cross_fitted(runs: list[Path], records: list[RoiRecord], x: np.ndarray, out: Path, cfg: TrainConfig,
                 views: dict[str, np.ndarray] | None = None, augment: tuple[str, ...] = (),
                 regions: tuple[Region, ...] = REGIONS, iou_token: bool = False,
                 stages: tuple[Stage, ...] = ("neck",)) -> dict:
    """Fused out-of-fold predictions of the runs (each with its own folds' probes) and their report.
    `views`: other views' features (`marked`, `shifted`); each fold's probe is also scored on them (and
    trained on the training lesions' `augment` views too)."""
    from training.common.metrics import binary_report, fit_temperature, paired_auc_difference
    views = views or {}
    check_lesions(runs, records)
    y = np.array([r.target for r in records])
    groups = [r.group for r in records]
    resnet, probe, fused, alphas, probe_views = [], [], [], [], []
    for run in runs:
        _, fold, logits = read_oof(run / "cv" / "oof.csv")
        d_r = logits[:, 1] - logits[:, 0]
        d_p, d_v = out_of_fold(x, y, fold, views, augment)
        alphas.append(float(d_r.std() / max(d_p.std(), 1e-6)))
        resnet.append(d_r)
        probe.append(d_p)
        fused.append(d_r + alphas[-1] * d_p)
        probe_views.append(d_v)
    _, fold0, _ = read_oof(runs[0] / "cv" / "oof.csv")
    cv_dir = out / "cv"
    cv_dir.mkdir(parents=True, exist_ok=True)
    for k in sorted(set(fold0.tolist())):  # the first run's fold curves, for the report's plots
        (cv_dir / f"fold{k}").mkdir(exist_ok=True)
        (cv_dir / f"fold{k}" / "history.json").write_text((runs[0] / "cv" / f"fold{k}" / "history.json").read_text())
    parts = {"resnet": np.mean(resnet, 0), "probe": np.mean(probe, 0), "fused": np.mean(fused, 0)}
    write_oof(cv_dir / "oof_resnet.csv", records, fold0, two_columns(parts["resnet"]))
    write_oof(cv_dir / "oof_probe.csv", records, fold0, two_columns(parts["probe"]))
    write_oof(cv_dir / "oof.csv", records, fold0, two_columns(parts["fused"]))
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    report = report_cv(cv_dir, cfg)

    def alone(diff: np.ndarray) -> dict:
        lg = two_columns(diff)
        p = torch.softmax(torch.as_tensor(lg) / fit_temperature(y, lg), 1)[:, 1].numpy()
        return {k: v for k, v in binary_report(y, p, threshold=0.5, groups=groups).items()
                if k in ("roc_auc", "roc_auc_ci", "ece")}

    sigmoid = lambda d: 1 / (1 + np.exp(-d.astype(np.float64)))  # noqa: E731
    delta, ci = paired_auc_difference(y, sigmoid(parts["resnet"]), sigmoid(parts["fused"]), 2000, groups=groups)
    member = f" ensemble x{len(runs)}" if len(runs) > 1 else ""
    report.update(
        regime=f"{cfg.regime}{member} + SAM probe",
        sam_probe={"sam": cfg.sam, "C": C, "alpha": float(np.mean(alphas)), "alphas": alphas, "regions": list(regions),
                   "stages": list(stages), "iou_token": iou_token,
                   "mark_augment": "marked" in augment, "scanner_augment": "shifted" in augment,
                   **{VIEWS[name]: view_movement(report, parts, float(np.mean(alphas)),
                                                 np.mean([d[name] for d in probe_views], 0), y) for name in views},
                   "resnet": alone(parts["resnet"]), "probe": alone(parts["probe"]),
                   "fused_minus_resnet": {"delta": delta, "ci": ci}},
        member_runs=[str(r) for r in runs],
        member_seeds=[TrainConfig.model_validate_json((r / "config.json").read_text()).seed for r in runs],
        seconds=sum(json.loads((r / "cv" / "report.json").read_text()).get("seconds", 0) for r in runs))
    (cv_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (cv_dir / "report.md").write_text(cv_markdown(report) + probe_markdown(report))
    return report


def view_movement(report: dict, parts: dict[str, np.ndarray], alpha: float, probe_view: np.ndarray,
                  y: np.ndarray) -> dict:
    """How far another view (marks burned in, a scanner shift) moves the fused probability through the
    probe alone (out of fold; the ResNet18's part held at its clean value: its fold models are not kept)."""
    def p(diff: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-diff.astype(np.float64) / report["temperature"]))
    clean = p(parts["fused"])
    moved = p(parts["fused"] + alpha * (probe_view - parts["probe"]))
    t = report["threshold"]
    flips = (clean >= t) != (moved >= t)
    from training.common.metrics import roc_auc
    return {"median_abs_delta": float(np.median(np.abs(moved - clean))), "mean_delta": float(np.mean(moved - clean)),
            "flips": int(flips.sum()), "flips_to_malignant": int((flips & (moved >= t)).sum()),
            "probe_auc_clean": roc_auc(y, 1 / (1 + np.exp(-parts["probe"].astype(np.float64)))),
            "probe_auc_view": roc_auc(y, 1 / (1 + np.exp(-probe_view.astype(np.float64))))}


def probe_markdown(report: dict) -> str:
    sp = report["sam_probe"]
    d = sp["fused_minus_resnet"]
    token = " + its decoder's IoU token" if sp["iou_token"] else ""
    stages = sp.get("stages", ["neck"])
    where = "embedding" if stages == ["neck"] else f"encoder ({' + '.join(stages)})"
    probe = f"SAM probe ({sp['sam']} {where} over {' + '.join(sp['regions'])}{token}, logistic regression C={sp['C']})"
    rows = [("ResNet18" + (f" (mean of {len(report['member_seeds'])} seeds)" if len(report["member_seeds"]) > 1 else ""),
             sp["resnet"]), (probe, sp["probe"])]
    lines = ["", f"Parts of the fused prediction (alpha {sp['alpha']:.3f}; each part's own temperature):", "",
             "| part | pooled AUC [95% CI] | ECE |", "|---|---|---|"]
    lines += [f"| {name} | {m['roc_auc']:.3f} [{m['roc_auc_ci'][0]:.3f}, {m['roc_auc_ci'][1]:.3f}] | {m['ece']:.3f} |"
              for name, m in rows]
    lines += ["", f"Fused - ResNet18: ΔAUC {d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] "
                  "(paired bootstrap over patient / near-duplicate groups)", ""]
    trained = [name for name, flag in (("marked", "mark_augment"), ("scanner-shifted", "scanner_augment")) if sp.get(flag)]
    fitted = f"probe trained on clean{''.join(f' + {t}' for t in trained)} views" if trained else "probe trained on clean images"
    for key, title in (("marks", "Measurement marks burned in"), ("scanner", "Scanner shifts (one per lesion)")):
        if key in sp:
            m = sp[key]
            lines += [f"{title} ({fitted}; out of fold, the ResNet18's part held at its clean value): median |Δp| "
                      f"{m['median_abs_delta']:.3f}, mean Δp {m['mean_delta']:+.3f}, {m['flips']} of {report['n']} "
                      f"decisions flip ({m['flips_to_malignant']} to malignant); probe AUC clean "
                      f"{m['probe_auc_clean']:.3f}, this view {m['probe_auc_view']:.3f}", ""]
    return "\n".join(lines)


def write_weights(runs: list[Path], records: list[RoiRecord], x: np.ndarray, out: Path, report: dict,
                  extra: list[np.ndarray] | None = None) -> Path:
    """The runs' final fits (their mean if several) with the probe fitted on every lesion."""
    from training.classifier.ensemble import combine_weights
    y = np.array([r.target for r in records])
    modality = report["modality"]
    probe_file = f"sam-probe-{modality}.safetensors"
    weights = out / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in fit_views(x, y, extra or []).state_dict().items()}
    save_file(state, str(weights / f".{probe_file}.tmp"))
    (weights / f".{probe_file}.tmp").replace(weights / probe_file)
    sp = report["sam_probe"]
    spec = SamProbeSpec(file=probe_file, sha256=sha256_file(weights / probe_file), sam=sp["sam"], alpha=sp["alpha"], C=C,
                        mark_augment=sp["mark_augment"], scanner_augment=sp["scanner_augment"],
                        regions=tuple(sp["regions"]), iou_token=sp["iou_token"], stages=tuple(sp["stages"]))
    return combine_weights(runs, out, report, {"sam_probe": spec, "metrics": {**manifest_metrics(report),
                                                                             "sam_probe": sp}})


def held_out_site(runs: list[Path]) -> str | None:
    """The site the runs held out (train-classifier --holdout-site), None for runs on every site."""
    sites = {json.loads((r / "holdout" / "report.json").read_text())["site"] if (r / "holdout" / "report.json").is_file()
             else None for r in runs}
    if len(sites) > 1:
        raise ValueError(f"the runs held out different sites ({', '.join(map(str, sites))}): one protocol at a time")
    return sites.pop()


def holdout(runs: list[Path], train: list[RoiRecord], held: list[RoiRecord], x: np.ndarray, x_held: np.ndarray,
            report: dict, extra: list[np.ndarray], out: Path) -> dict:
    """The fused model out of site: the runs' final ResNet18s (their held-out logits) + alpha x the probe
    fitted on every training-site lesion, at the temperature and threshold of the training sites' fused
    out-of-fold predictions; the held-out site is neither trained nor calibrated on. Each part alone too,
    and the probe's gain (fused - ResNet18) on the held-out site, paired over its patients."""
    from training.common.metrics import SITE_KEYS, binary_report, fit_temperature, paired_auc_difference
    from training.common.plots import plot_reliability, plot_roc
    ids = [r.lesion_id for r in held]
    d_r = []
    for run in runs:
        with open(run / "holdout" / "predictions.csv", newline="") as f:
            rows = {row["lesion_id"]: row for row in csv.DictReader(f)}
        if sorted(rows) != sorted(ids):
            raise ValueError(f"{run}/holdout was scored on other lesions than {held[0].source}'s")
        d_r.append(np.array([float(rows[i]["logit_malignant"]) - float(rows[i]["logit_benign"]) for i in ids]))
    y = np.array([r.target for r in train])
    alpha = report["sam_probe"]["alpha"]
    d_p = probe_logits(fit_views(x, y, extra), x_held)
    parts = {"resnet": np.mean(d_r, 0), "probe": d_p, "fused": np.mean(d_r, 0) + alpha * d_p}
    y_h, groups = np.array([r.target for r in held]), [r.group for r in held]
    t, thr = report["temperature"], report["threshold"]
    p = 1 / (1 + np.exp(-parts["fused"].astype(np.float64) / t))
    site = held[0].source
    trained_on = sorted({r.source for r in train})

    def alone(part: str) -> dict:  # each part at its own temperature, fitted on the training sites' OOF
        diff, oof = parts[part], read_oof(out / "cv" / f"oof_{part}.csv")
        t_part = fit_temperature(oof[0], oof[2])
        q = 1 / (1 + np.exp(-diff.astype(np.float64) / t_part))
        return {k: v for k, v in binary_report(y_h, q, 0.5, groups=groups).items() if k in ("roc_auc", "roc_auc_ci", "ece")}
    sigmoid = lambda d: 1 / (1 + np.exp(-d.astype(np.float64)))  # noqa: E731
    delta, ci = paired_auc_difference(y_h, sigmoid(parts["resnet"]), sigmoid(parts["fused"]), 2000, groups=groups)
    rep = {"site": site, "trained_on": trained_on, "modality": report["modality"], "regime": report["regime"],
           "roi_source": "sam", "temperature": t, "threshold": thr,
           "calibration": f"temperature and threshold fitted on the fused out-of-fold predictions of "
                          f"{', '.join(trained_on)}; {site} never trained or calibrated on",
           **binary_report(y_h, p, thr, groups=groups),
           "parts": {"resnet": alone("resnet"), "probe": alone("probe"),
                     "fused_minus_resnet": {"delta": delta, "ci": ci}},
           "training_sites_cv": {"pooled": {k: report["summary"]["pooled"][k] for k in SITE_KEYS},
                                 "per_site": report.get("per_site", {})}}
    folder = out / "holdout"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lesion_id", "group", "source", "label", "diff_resnet", "diff_probe", "p_malignant"])
        w.writerows([r.lesion_id, r.group, r.source, r.label, float(a), float(b), repr(float(q))]
                    for r, a, b, q in zip(held, parts["resnet"], parts["probe"], p))
    title = f"{report['modality'].upper()} ResNet18 + SAM probe trained on {', '.join(trained_on)}, tested on {site}"
    plot_roc([(site, y_h, p)], folder / "roc.png", title)
    plot_reliability(y_h, p, folder / "reliability.png", title)
    (folder / "report.json").write_text(json.dumps(rep, indent=2, allow_nan=False) + "\n")
    from training.classifier.train_classifier import holdout_markdown
    d = rep["parts"]
    (folder / "report.md").write_text(holdout_markdown(rep).replace("ResNet18 alone (no SAM probe)", "ResNet18 + SAM probe")
                                      + f"\nOn {site}: ResNet18 alone AUC {d['resnet']['roc_auc']:.3f}, probe alone "
                                        f"{d['probe']['roc_auc']:.3f}; fused - ResNet18 ΔAUC {delta:+.3f} "
                                        f"[{ci[0]:+.3f}, {ci[1]:+.3f}] (paired bootstrap over patients)\n")
    return rep


def run(args: argparse.Namespace) -> int:
    from training.rois.prepare import prepared
    from training.rois.splits import select
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = run_configs(args.runs)
        records = select(prepared(args.rois), cfg.modality, args.limit)
        site = held_out_site(args.runs)
        held = [r for r in records if r.source == site]
        records = [r for r in records if r.source != site]
        regions, stages = tuple(args.regions), tuple(args.stages)
        x = probe_features(records, "sam", cfg.sam, cfg.margin, regions,
                           sam_masks=Path(cfg.sam_masks) if cfg.sam_masks else None, progress=sys.stderr.isatty(),
                           iou_token=args.iou_token, stages=stages)
        views, augment = {}, tuple(name for name, flag in (("marked", args.mark_augment),
                                                             ("shifted", args.scanner_augment)) if flag)
        if args.marks or args.mark_augment:
            views["marked"] = marked_features(records, cfg.sam, cfg.margin, regions, progress=sys.stderr.isatty(),
                                              iou_token=args.iou_token, stages=stages)
        if args.scanner or args.scanner_augment:
            views["shifted"] = shifted_features(records, cfg.sam, cfg.margin, regions, progress=sys.stderr.isatty(),
                                                iou_token=args.iou_token, stages=stages)
        report = cross_fitted(args.runs, records, x, args.out, cfg, views, augment, regions, args.iou_token, stages)
        if all((r / "weights" / "manifest.json").is_file() for r in args.runs):
            weights = write_weights(args.runs, records, x, args.out, report, [views[name] for name in augment])
            print(f"weights with the SAM probe: {weights}")
        if held:
            x_held = probe_features(held, "sam", cfg.sam, cfg.margin, regions, progress=sys.stderr.isatty(),
                                    iou_token=args.iou_token, stages=stages)
            holdout(args.runs, records, held, x, x_held, report, [views[name] for name in augment], args.out)
            print((args.out / "holdout" / "report.md").read_text())
    except (ValueError, FileNotFoundError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((args.out / "cv" / "report.md").read_text())
    return 0
