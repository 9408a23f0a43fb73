"""`site-ablation`: recipes side by side on one site's lesions, with paired bootstrap CIs over its patients.

Each `--row NAME=FOLDER` is a set of predictions with the threshold they were served at: an `evaluate`
output or a held-out site (`train-classifier --holdout-site` or `sam-probe` on such a run: OUT/holdout),
whose report.json and predictions.csv are read, or a cross-validation (OUT with cv/oof.csv and
cv/report.json: out-of-fold predictions at its temperature and threshold). Only the lesions of `--site`
are scored; every row must hold each of them. Against the first row: the AUC difference with a 95%
paired bootstrap CI over the site's patient groups, which says whether a recipe travels better.
Writes OUT/site-ablation.json and .md, and a ROC plot.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROW_KEYS = ("n", "n_malignant", "roc_auc", "roc_auc_ci", "sensitivity", "specificity", "ece", "threshold")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", required=True, help="the source whose lesions are scored (e.g. busi, busbra)")
    p.add_argument("--row", action="append", required=True, metavar="NAME=FOLDER",
                   help="a label and an evaluate / holdout / train-classifier output folder; the first is the baseline")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-boot", type=int, default=2000)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def predictions(folder: Path, site: str) -> dict[str, tuple[int, str, float]]:
    """lesion_id -> (target, group, p_malignant) for the site's lesions, and the folder's threshold."""
    from training.classifier.train_classifier import softmax_p
    if (folder / "cv" / "oof.csv").is_file():
        report = json.loads((folder / "cv" / "report.json").read_text())
        rows = [r for r in _rows(folder / "cv" / "oof.csv") if r["source"] == site]
        logits = np.array([[float(r["logit_benign"]), float(r["logit_malignant"])] for r in rows], np.float32)
        p = softmax_p(logits, report["temperature"]) if rows else []
        return {r["lesion_id"]: (int(r["target"]), r["group"], float(q)) for r, q in zip(rows, p)}, report["threshold"]
    report = json.loads((folder / "report.json").read_text())
    rows = [r for r in _rows(folder / "predictions.csv") if r["source"] == site]
    return ({r["lesion_id"]: (int(r["label"] == "malignant"), r["group"], float(r["p_malignant"])) for r in rows},
            report["threshold"])


def site_ablation(site: str, rows: list[tuple[str, Path]], n_boot: int = 2000) -> list[dict]:
    from training.common.metrics import binary_report, paired_auc_difference
    loaded = [(name, *predictions(folder, site)) for name, folder in rows]
    ids = sorted(loaded[0][1])
    if not ids:
        raise ValueError(f"{rows[0][1]} holds no lesion of {site}")
    for (name, preds, _), (_, folder) in zip(loaded, rows):
        if sorted(preds) != ids:
            raise ValueError(f"{folder} ({name}) scored other {site} lesions than {rows[0][1]}: "
                             f"{len(preds)} vs {len(ids)}")
    y = np.array([loaded[0][1][i][0] for i in ids])
    groups = [loaded[0][1][i][1] for i in ids]
    base_p = np.array([loaded[0][1][i][2] for i in ids])
    out = []
    for k, (name, preds, threshold) in enumerate(loaded):
        p = np.array([preds[i][2] for i in ids])
        rep = binary_report(y, p, threshold, groups=groups)
        row = {"name": name, "folder": str(rows[k][1]), "site": site, **{key: rep[key] for key in ROW_KEYS}}
        if k:
            row["delta_auc"], row["delta_auc_ci"] = paired_auc_difference(y, base_p, p, n_boot, groups=groups)
        out.append(row)
    return out


def markdown(table: list[dict]) -> str:
    def f(v) -> str:
        return "n/a" if v is None else f"{v:.3f}"
    site = table[0]["site"]
    lines = [f"| recipe (scored on {site}) | n (malignant) | ROC AUC [95% CI] | ΔAUC vs first [95% CI] "
             "| sensitivity / specificity at its threshold | ECE |", "|---|---|---|---|---|---|"]
    for r in table:
        ci = r["roc_auc_ci"] or [float("nan")] * 2
        delta = (f"{r['delta_auc']:+.3f} [{r['delta_auc_ci'][0]:+.3f}, {r['delta_auc_ci'][1]:+.3f}]"
                 if "delta_auc" in r else "baseline")
        lines.append(f"| {r['name']} | {r['n']} ({r['n_malignant']}) | {f(r['roc_auc'])} [{ci[0]:.3f}, {ci[1]:.3f}] "
                     f"| {delta} | {f(r['sensitivity'])} / {f(r['specificity'])} at {r['threshold']:.3f} | {f(r['ece'])} |")
    return "\n".join(lines) + "\n\nCIs: percentile bootstrap over patient groups (ΔAUC paired).\n"


def run(args: argparse.Namespace) -> int:
    from training.common.plots import plot_roc
    rows = []
    for spec in args.row:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            print(f"error: --row {spec!r}: give NAME=FOLDER", file=sys.stderr)
            return 2
        rows.append((name, Path(folder)))
    try:
        table = site_ablation(args.site, rows, args.n_boot)
        curves = [(name, *_yp(folder, args.site)) for name, folder in rows]
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "site-ablation.json").write_text(json.dumps(table, indent=2, allow_nan=False) + "\n")
    (args.out / "site-ablation.md").write_text(markdown(table))
    plot_roc(curves, args.out / "roc.png", f"Scored on {args.site}")
    print(markdown(table))
    return 0


def _yp(folder: Path, site: str) -> tuple[list[int], list[float]]:
    preds, _ = predictions(folder, site)
    ids = sorted(preds)
    return [preds[i][0] for i in ids], [preds[i][2] for i in ids]
