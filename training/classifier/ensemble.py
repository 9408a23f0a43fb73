"""`ensemble`: the mean of several train-classifier runs (different seeds, hence different splits).

Each lesion's out-of-fold logits from every run come from models that never saw it, so their mean
is an honest cross-validated estimate of the ensemble (if anything pessimistic: the served members
are final fits on all lesions). Writes OUT/cv (oof.csv, report, plots, with temperature and
threshold refitted on the ensemble's out-of-fold logits) and OUT/weights (one safetensors file
holding every member's final fit, and its manifest entry).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from models.classifier import ARCHITECTURE, LogitMean
from models.manifest import Manifest, WeightsError, load_classifier, save_classifier, write_manifest
from training.classifier.train_classifier import (TrainConfig, cv_markdown, manifest_metrics, read_oof, report_cv,
                                                   write_oof)
from training.datasets.roi_table import RoiRecord


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+", help="train-classifier output folders (cv/ and weights/)")
    p.add_argument("--out", type=Path, required=True)


def ensemble(runs: list[Path], out: Path) -> dict:
    cfg = TrainConfig.model_validate_json((runs[0] / "config.json").read_text())
    rows = [(run / "cv" / "oof.csv").read_text().splitlines() for run in runs]
    ids = [[line.split(",")[0] for line in r] for r in rows]
    if any(i != ids[0] for i in ids):
        raise ValueError("the runs were not made on the same lesions in the same order")
    oofs = [read_oof(run / "cv" / "oof.csv") for run in runs]
    fold = oofs[0][1]
    logits = np.mean([o[2] for o in oofs], axis=0)
    with open(runs[0] / "cv" / "oof.csv", newline="") as f:
        records = [RoiRecord(image_path="", modality=cfg.modality, label=r["label"], source=r["source"],
                             group=r["group"], lesion_id=r["lesion_id"]) for r in csv.DictReader(f)]
    cv_dir = out / "cv"
    cv_dir.mkdir(parents=True, exist_ok=True)
    for k in sorted(set(fold.tolist())):  # curves of the first run's folds, for the report's plots
        (cv_dir / f"fold{k}").mkdir(exist_ok=True)
        (cv_dir / f"fold{k}" / "history.json").write_text((runs[0] / "cv" / f"fold{k}" / "history.json").read_text())
    write_oof(cv_dir / "oof.csv", records, fold, logits)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    report = report_cv(cv_dir, cfg)
    report.update(regime=f"{cfg.regime} ensemble x{len(runs)}", ensemble_of=[str(r) for r in runs],
                  member_seeds=[TrainConfig.model_validate_json((r / "config.json").read_text()).seed for r in runs])
    report["seconds"] = sum(json.loads((r / "cv" / "report.json").read_text()).get("seconds", 0) for r in runs)
    (cv_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (cv_dir / "report.md").write_text(cv_markdown(report))
    return report


def combine_weights(runs: list[Path], out: Path, report: dict, update: dict | None = None) -> Path:
    """The runs' final fits as one weights file (their mean logits if several) and its manifest entry;
    `update` adds to the entry (e.g. a SAM probe whose file is already in OUT/weights)."""
    name = f"classifier-{report['modality']}"
    members, entries = [], []
    for run in runs:
        model, entry = load_classifier(name, run / "weights")
        members.append(model)
        entries.append(entry)
    weights = out / "weights"
    one = len(members) == 1
    sha = save_classifier(members[0] if one else LogitMean(members), weights / f"{name}.safetensors")
    entry = entries[0].model_copy(update=dict(
        sha256=sha, members=len(members), architecture=ARCHITECTURE if one else f"mean logits of {len(members)} x {ARCHITECTURE}",
        regime=report["regime"], temperature=report["temperature"], threshold=report["threshold"],
        training={**entries[0].training, "member_seeds": report["member_seeds"]},
        metrics=manifest_metrics(report)) | (update or {}))
    write_manifest(Manifest(models={name: entry}), weights)
    load_classifier(name, weights)
    return weights


def run(args: argparse.Namespace) -> int:
    try:
        report = ensemble(args.runs, args.out)
        has_weights = all((r / "weights" / "manifest.json").is_file() for r in args.runs)
        if has_weights:
            print(f"ensemble weights: {combine_weights(args.runs, args.out, report)}")
    except (ValueError, FileNotFoundError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((args.out / "cv" / "report.md").read_text())
    return 0
