"""`evaluate`: served weights on a dataset folder -> report.json, report.md, predictions.csv, plots.

DATA is a prepared folder (with rois.csv) or any folder of known datasets (e.g. BUSI, mini-MIAS), prepared
on the fly into the cache. A folder of several sets (sources: sites, e.g. BUSI and BUS-BRA) is also
reported per site (`per_site` in report.json, a table in report.md, one ROC curve each).
`--roi-source` says where each crop comes from (training/rois/sources.py): `sam` (default) is what the
server does, SAM's mask from a box drawn around the lesion (the expert box, jittered); `box` is that
drawn box alone; `expert` the dataset's own annotation, which measures the classifier alone and is
optimistic.

Exit status 2: missing or unknown data folder, no lesions of the modality, missing/corrupt weights.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from training.datasets.roi_table import MODALITIES, RoiRecord

ROI_SOURCE_TEXT = {"expert": "lesion box from the dataset's own annotation",
                   "box": "the annotation's box with each side jittered by up to 5%, as a user draws it",
                   "sam": "SAM's mask from that jittered box, cropped as the server crops"}
PLOTS = {"roc": "roc.png", "confusion": "confusion.png", "reliability": "reliability.png"}


class EvaluateError(RuntimeError):
    """Bad input: printed as one error line, exit 2."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    # The default weights dir is models/weights; spelled out here so --help works without importing torch.
    p.add_argument("--weights", type=Path, default=Path(__file__).resolve().parents[2] / "models" / "weights",
                   help="weights folder holding manifest.json (default: models/weights)")
    p.add_argument("--data", type=Path, required=True,
                   help="prepared folder (rois.csv) or dataset folder in a known layout (e.g. BUSI, mini-MIAS)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--modality", choices=MODALITIES,
                   help="us or dm (default: the only modality in DATA)")
    p.add_argument("--model", help="manifest entry to evaluate (default: classifier-<modality>)")
    p.add_argument("--roi-source", choices=["expert", "box", "sam"], default="sam",
                   help="where the crop comes from: the expert annotation, a jittered box as a user draws it, or "
                        "SAM's mask from that box as the server does (default: sam)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the AUC 95%% CI")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def _log(msg: str) -> None:
    # stdout carries the report; progress goes to stderr.
    print(msg, file=sys.stderr)


def select_lesions(data: Path, modality: str | None) -> tuple[str, list[RoiRecord]]:
    from training.datasets.roi_table import lesions
    from training.rois.prepare import LayoutError, prepared

    if not data.is_dir():
        raise EvaluateError(f"data folder not found: {data}")
    try:
        records = prepared(data, log=_log)
    except LayoutError as e:
        raise EvaluateError(str(e)) from e
    except (ValueError, KeyError, TypeError) as e:  # a hand-edited or foreign rois.csv
        raise EvaluateError(f"cannot read the ROI table of {data}: {e}") from e
    present = sorted({r.modality for r in lesions(records)})
    if modality is None:
        if not present:
            raise EvaluateError(f"no benign/malignant lesion with a box in {data}")
        if len(present) > 1:
            raise EvaluateError(f"{data} holds several modalities ({', '.join(present)}): "
                                f"choose one with --modality")
        modality = present[0]
    chosen = lesions(records, modality)
    if not chosen:
        raise EvaluateError(f"no benign/malignant {modality} lesion with a box in {data} "
                            f"(it has: {', '.join(present) or 'none'})")
    return modality, chosen


def predict(records: list[RoiRecord], weights: Path, name: str, roi_source: str = "sam") -> tuple[list[float], Any]:
    """p(malignant) per record from the verified classifier `name`, and its manifest entry."""
    import torch

    from models.manifest import WeightsError, load_classifier, load_sam_probe
    from models.preprocessing import MEAN, STD
    from training.classifier.train_classifier import logits_of
    from training.rois.sources import SAM_FOR_BOXES, load_inputs

    try:
        model, entry = load_classifier(name, weights)
        probe = load_sam_probe(entry, weights)
    except WeightsError as e:
        raise EvaluateError(str(e)) from e
    if (entry.input.mean, entry.input.std) != (MEAN, STD):
        # normalize() is the one served preprocessing; other constants would mean other weights' inputs.
        raise EvaluateError(f"{name} expects inputs normalised with mean {entry.input.mean}, std {entry.input.std}; "
                            f"models.preprocessing uses {MEAN}, {STD}")
    if entry.modality not in ("", records[0].modality):
        _log(f"warning: {name} was trained on {entry.modality}, evaluating it on {records[0].modality}")
    inputs = load_inputs(records, roi_source, entry.input.channels, size=entry.input.size,
                         margin=entry.input.roi_margin, progress=sys.stderr.isatty(),
                         sam_name=entry.input.sam or SAM_FOR_BOXES, weights_dir=weights,
                         intensity=entry.input.intensity)
    logits = torch.from_numpy(logits_of(model, inputs))
    if probe is not None:  # as the server does: the probe's logit from SAM's embedding of the same lesion
        from models.probe_head import fuse
        from training.probe.sam_probe import probe_features
        features = probe_features(records, roi_source, entry.sam_probe.sam, entry.input.roi_margin,
                                  entry.sam_probe.regions, progress=sys.stderr.isatty(),
                                  iou_token=entry.sam_probe.iou_token, stages=entry.sam_probe.stages,
                                  weights_dir=weights)
        with torch.inference_mode():
            logits = fuse(logits, probe(torch.from_numpy(features)), entry.sam_probe.alpha)
    p = torch.softmax(logits / entry.temperature, dim=1)[:, 1]
    return [float(v) for v in p.tolist()], entry


def _sam_dice(records: list[RoiRecord], sam_name: str, weights: Path) -> dict[str, float]:
    """How far SAM's masks (from the jittered boxes) are from the expert's: mean Dice per class."""
    import numpy as np

    from training.rois.sources import SamViews
    dice = SamViews(records, sam_name=sam_name, progress=False, weights_dir=weights).dice()
    labels = np.array([r.label for r in records])
    return {"all": round(float(dice.mean()), 4),
            **{c: round(float(dice[labels == c].mean()), 4) for c in ("benign", "malignant") if (labels == c).any()}}


def _fmt(v: Any, digits: int = 3) -> str:
    return "undefined" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def report_markdown(rep: dict[str, Any]) -> str:
    from training.common.metrics import site_table
    ci = rep["roc_auc_ci"]
    ci_txt = f"{ci[0]:.3f} to {ci[1]:.3f}" if ci else "undefined"
    (tn, fp), (fn, tp) = rep["confusion_matrix"]
    counts = rep["data"]["counts"]
    lines = [
        f"# Evaluation of `{rep['model']}` on {rep['modality']}",
        "",
        "Research use only. Not for clinical diagnosis.",
        "",
        f"- data: `{rep['data']['folder']}` ({', '.join(rep['data']['sources'])}): "
        f"{rep['n']} lesions, {counts.get('benign', 0)} benign, {counts.get('malignant', 0)} malignant",
        f"- ROIs: {rep['roi_source']} ({ROI_SOURCE_TEXT[rep['roi_source']]})"
        + (f"; SAM vs expert mask Dice {rep['sam_dice_vs_expert']['all']:.3f}" if "sam_dice_vs_expert" in rep else ""),
        f"- weights sha256: `{rep['model_sha256']}`",
        *([f"- **{rep['training_overlap']['images']} of {rep['training_overlap']['of']} images were trained on by "
           "these weights: these figures are not a test of them.**"] if rep["training_overlap"]["images"] else []),
        f"- temperature {rep['temperature']:g}, threshold {rep['threshold']:g} "
        f"(malignant when p(malignant) >= threshold)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| ROC AUC | {_fmt(rep['roc_auc'])} (95% bootstrap CI {ci_txt}) |",
        *[f"| {label} | {_fmt(rep[key])} |" for key, label in (
            ("accuracy", "accuracy"), ("sensitivity", "sensitivity (malignant recall)"),
            ("specificity", "specificity (benign recall)"), ("ppv", "PPV"), ("npv", "NPV"),
            ("f1", "F1 (malignant)"), ("mcc", "MCC"), ("ece", "ECE (10 bins)"))],
        *(["", f"Per site (source), at the served threshold {rep['threshold']:g}:", "",
           *site_table(rep["per_site"], rep["threshold"])] if len(rep["per_site"]) > 1 else []),
        "",
        "Confusion matrix (rows: true class, columns: predicted):",
        "",
        "| | predicted benign | predicted malignant |",
        "|---|---|---|",
        f"| true benign | {tn} (TN) | {fp} (FP) |",
        f"| true malignant | {fn} (FN) | {tp} (TP) |",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
        *[f"| {c} | {_fmt(v['precision'])} | {_fmt(v['recall'])} | {_fmt(v['f1'])} | {v['support']} |"
          for c, v in rep["per_class"].items()],
        "",
        "![ROC](roc.png) ![confusion matrix](confusion.png) ![reliability](reliability.png)",
        "",
        "Predictions per lesion: [predictions.csv](predictions.csv).",
    ]
    return "\n".join(lines) + "\n"


def training_overlap(records, entry) -> dict[str, Any]:
    """How many of these images the weights were trained on, by image sha256 (manifest data.image_sha256_16);
    `images` None when the manifest does not list its training images (weights trained before it did)."""
    from models.manifest import sha256_file
    images = sorted({r.image_path for r in records})
    trained = entry.data.get("image_sha256_16")
    if trained is None:
        return {"images": None, "of": len(images), "note": "the weights do not list the images they were trained on"}
    seen = set(trained)
    hit = sum(sha256_file(Path(p))[:16] in seen for p in images)
    return {"images": hit, "of": len(images),
            "note": ("disjoint from the training images" if not hit else
                     "overlaps the training images: not a test of these weights")}


def evaluate(data: Path, weights: Path, out: Path, modality: str | None = None, model: str | None = None,
             n_boot: int = 1000, seed: int = 0, roi_source: str = "sam") -> dict[str, Any]:
    from training.common.metrics import binary_report, per_site
    from training.common.plots import plot_confusion, plot_reliability, plot_roc
    from training.rois.sources import SAM_FOR_BOXES

    modality, records = select_lesions(Path(data), modality)
    name = model or f"classifier-{modality}"
    _log(f"evaluating {name} on {len(records)} {modality} lesions from {data}")
    p, entry = predict(records, Path(weights), name, roi_source)
    sam_name = entry.input.sam or SAM_FOR_BOXES
    y = [r.target for r in records]
    overlap = training_overlap(records, entry)
    if overlap["images"]:
        _log(f"warning: {overlap['images']} of the {overlap['of']} images in {data} were trained on by {name}: "
             "these figures are not a test of it")
    groups = [r.group for r in records]  # CIs resample whole patients / near-duplicate groups
    metrics = binary_report(y, p, threshold=entry.threshold, n_boot=n_boot, seed=seed, groups=groups)
    by_source: dict[str, Counter] = {}
    for r in records:
        by_source.setdefault(r.source, Counter())[r.label] += 1
    rep: dict[str, Any] = {
        "model": name,
        "model_sha256": entry.sha256,
        # what the model was trained on: export takes this report as an out-of-site row of the same recipe
        # for a model trained on other sites too (a site listed here is not out of site)
        "trained_on": sorted(entry.data.get("sources", {})),
        "regime": entry.regime,
        "modality": modality,
        **metrics,
        # Each source is a site (hospital, scanner): the pooled figures can hide one that fails.
        "per_site": per_site([r.source for r in records], y, p, entry.threshold, n_boot=n_boot, seed=seed,
                             groups=groups),
        "temperature": entry.temperature,
        "training_overlap": overlap,
        "data": {"folder": str(Path(data).resolve()), "sources": sorted(by_source),
                 "counts": dict(sorted(sum(by_source.values(), Counter()).items())),
                 "counts_by_source": {s: dict(sorted(c.items())) for s, c in sorted(by_source.items())}},
        "roi_source": roi_source,
        **({"sam": sam_name, "sam_dice_vs_expert": _sam_dice(records, sam_name, Path(weights))}
           if roi_source == "sam" else {}),
        "weights": str(Path(weights).resolve()),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lesion_id", "group", "source", "image_path", "label", "p_malignant"])
        # repr keeps every bit of the float, so metrics recomputed from this file match report.json.
        w.writerows([r.lesion_id, r.group, r.source, r.image_path, r.label, repr(pi)] for r, pi in zip(records, p))
    title = f"{name} on {', '.join(sorted(by_source))} ({modality}, n={len(records)})"
    sites = sorted(by_source)
    site_curves = [(s, [yi for yi, r in zip(y, records) if r.source == s],
                    [pi for pi, r in zip(p, records) if r.source == s]) for s in sites] if len(sites) > 1 else []
    plot_roc([(name if not site_curves else "all sites", y, p), *site_curves], out / PLOTS["roc"], f"ROC: {title}")
    plot_confusion(metrics["confusion_matrix"], out / PLOTS["confusion"],
                   f"{name}, threshold {entry.threshold:g}")
    plot_reliability(y, p, out / PLOTS["reliability"], f"Reliability: {title}")
    # allow_nan=False: a NaN slipping through must fail here, not in whoever reads the file.
    (out / "report.json").write_text(json.dumps(rep, indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(report_markdown(rep))
    return rep


def run(args: argparse.Namespace) -> int:
    try:
        evaluate(args.data, args.weights, args.out, args.modality, args.model, args.n_boot, args.seed,
                 args.roi_source)
    except EvaluateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out / 'report.json'}, report.md, predictions.csv, {', '.join(PLOTS.values())}")
    return 0
