"""`compare`: regimes side by side from their cross-validation runs (train-classifier --out folders).

For each run: fold AUC, pooled out-of-fold AUC with its CI, accuracy/sensitivity/specificity, ECE.
Against the first run (the baseline, e.g. `real`): the AUC difference with a 95% paired bootstrap CI
over patient / near-duplicate groups, which says whether a technique helps. Writes compare.json, compare.md, compare.png.

`--served-as SRC` compares what each run's fold models do on test lesions cropped by SRC (expert,
box or sam: the server's), with each run's own temperature and threshold, whatever the run trained on.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from training.classifier.train_classifier import read_oof, read_oof_column, softmax_p
from training.common.metrics import paired_auc_difference, roc_auc
from training.common.plots import roc_points


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+", help="train-classifier output folders; the first is the baseline")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--served-as", choices=["expert", "box", "sam"], default=None,
                   help="score every run on this ROI source (its cv/oof_served_SRC.csv unless it trained on SRC)")


def load_run(run: Path, served_as: str | None = None) -> dict:
    report = json.loads((run / "cv" / "report.json").read_text())
    trained_on = report.get("roi_source", "expert")
    oof = "oof.csv" if served_as in (None, trained_on) else f"oof_served_{served_as}.csv"
    if not (run / "cv" / oof).is_file():
        raise SystemExit(f"error: {run} has no {oof}: it was not scored on {served_as} crops (train-classifier --served-as)")
    y, fold, logits = read_oof(run / "cv" / oof)
    return {"run": str(run), "report": report, "y": y, "fold": fold, "logits": logits,
            "groups": read_oof_column(run / "cv" / oof, "group"),
            "p": softmax_p(logits, report["temperature"]), "served_as": served_as or trained_on}


def run_label(rep: dict) -> str:
    regime = rep["regime"] if "ensemble_of" in rep else f"{rep['regime']} (seed {rep['config']['seed']})"
    source = rep.get("roi_source", "expert")
    if source == "sam" and rep["config"].get("sam", "litemedsam") != "litemedsam":
        source = f"sam {rep['config']['sam']}"
    extra = " + mask" if rep.get("channels", 1) == 2 else ""
    aug = rep["config"].get("augment", "affine")
    size = rep["config"].get("size", 128)
    return (f"{regime}, {source}{extra}" + ("" if aug == "affine" else f", aug {aug}")
            + ("" if size == 128 else f", {size} px"))


def _metrics(item: dict) -> dict:
    """The run's own report where it is scored on what it trained on; recomputed from the OOF otherwise."""
    rep = item["report"]
    if item["served_as"] == rep.get("roi_source", "expert"):
        pooled = rep["summary"]["pooled"]
        return {"fold_auc_mean": rep["summary"]["roc_auc"]["mean"], "fold_auc_std": rep["summary"]["roc_auc"]["std"],
                "pooled": pooled, "at_0.5": rep["at_0.5"]["accuracy"], "ece_before": rep["ece_uncalibrated"],
                "tta_flip_auc": rep.get("tta_flip", {}).get("roc_auc")}
    from training.common.metrics import binary_report
    y, fold, p = item["y"], item["fold"], item["p"]
    folds = [roc_auc(y[fold == k], p[fold == k]) for k in sorted(set(fold.tolist()))]
    return {"fold_auc_mean": float(np.mean(folds)), "fold_auc_std": float(np.std(folds, ddof=1)),
            "pooled": binary_report(y, p, threshold=rep["threshold"], groups=item["groups"]),
            "at_0.5": binary_report(y, p, threshold=0.5, n_boot=0)["accuracy"],
            "ece_before": binary_report(y, softmax_p(item["logits"]), threshold=0.5, n_boot=0)["ece"],
            "tta_flip_auc": None}


def compare(runs: list[Path], n_boot: int = 2000, served_as: str | None = None) -> list[dict]:
    loaded = [load_run(r, served_as) for r in runs]
    base = loaded[0]
    rows = []
    for item in loaded:
        rep, m = item["report"], _metrics(item)
        pooled = m["pooled"]
        row = {"run": item["run"], "modality": rep["modality"], "regime": run_label(rep), "n": rep["n"],
               "served_as": item["served_as"],
               "fold_auc_mean": m["fold_auc_mean"], "fold_auc_std": m["fold_auc_std"],
               "pooled_auc": pooled["roc_auc"], "pooled_auc_ci": pooled["roc_auc_ci"],
               "accuracy_at_0.5": m["at_0.5"], "threshold": rep["threshold"],
               "sensitivity": pooled["sensitivity"], "specificity": pooled["specificity"],
               "accuracy_at_threshold": pooled["accuracy"],
               "ece_before": m["ece_before"], "ece_after": pooled["ece"],
               "tta_flip_auc": m["tta_flip_auc"], "seconds": rep.get("seconds")}
        if item is not base and np.array_equal(item["y"], base["y"]):
            d, ci = paired_auc_difference(base["y"], base["p"], item["p"], n_boot, groups=base["groups"])
            row.update(delta_auc_vs_baseline=d, delta_auc_ci=ci, baseline=base["report"]["regime"])
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| modality | regime | n | fold AUC (mean ± sd) | pooled AUC [95% CI] | ΔAUC vs baseline [95% CI] "
             "| acc @0.5 | threshold | sens / spec @threshold | ECE before → after | AUC with flip TTA | train time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = (f"{r['delta_auc_vs_baseline']:+.3f} [{r['delta_auc_ci'][0]:+.3f}, {r['delta_auc_ci'][1]:+.3f}]"
                 if "delta_auc_vs_baseline" in r else "baseline")
        lines.append(
            f"| {r['modality']} | {r['regime']} | {r['n']} | {r['fold_auc_mean']:.3f} ± {r['fold_auc_std']:.3f} "
            f"| {r['pooled_auc']:.3f} [{r['pooled_auc_ci'][0]:.3f}, {r['pooled_auc_ci'][1]:.3f}] | {delta} "
            f"| {r['accuracy_at_0.5']:.3f} | {r['threshold']:.3f} | {r['sensitivity']:.3f} / {r['specificity']:.3f} "
            f"| {r['ece_before']:.3f} → {r['ece_after']:.3f} "
            f"| {'n/a' if r['tta_flip_auc'] is None else format(r['tta_flip_auc'], '.3f')} "
            f"| {'n/a' if r['seconds'] is None else format(r['seconds'] / 60, '.0f') + ' min'} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[Path], rows: list[dict], path: Path, served_as: str | None = None) -> None:
    fig = Figure(figsize=(12, 4.8))
    roc_ax, auc_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    roc_ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    for run, row in zip(runs, rows):
        item = load_run(run, served_as)
        fpr, tpr = roc_points(item["y"], item["p"])
        roc_ax.plot(fpr, tpr, lw=1.5, label=f"{row['modality']} {row['regime']} (AUC {row['pooled_auc']:.3f})")
    roc_ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="pooled out-of-fold ROC", xlim=(0, 1), ylim=(0, 1.01))
    roc_ax.legend(loc="lower right", fontsize=8)
    # horizontal: run labels are long ("real (seed 0), sam + mask, aug scanner")
    labels = [f"{r['modality']} {r['regime']}" for r in rows]
    aucs = np.array([r["pooled_auc"] for r in rows])
    err = np.array([[a - r["pooled_auc_ci"][0], r["pooled_auc_ci"][1] - a] for a, r in zip(aucs, rows)]).T
    auc_ax.errorbar(aucs, range(len(rows)), xerr=err, fmt="o", capsize=4)
    auc_ax.scatter([r["fold_auc_mean"] for r in rows], range(len(rows)), marker="x", color="C1", label="fold mean")
    auc_ax.set_yticks(range(len(rows)), labels, fontsize=8)
    auc_ax.invert_yaxis()
    auc_ax.set(xlabel="ROC-AUC", title="AUC with 95% bootstrap CI", xlim=(max(0.0, float(aucs.min()) - 0.2), 1.0))
    auc_ax.legend(fontsize=8)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def run(args: argparse.Namespace) -> int:
    rows = compare(args.runs, args.n_boot, args.served_as)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    md = ((f"Every run scored on test lesions cropped by `{args.served_as}`.\n\n" if args.served_as else "")
          + markdown(rows))
    (args.out / "compare.md").write_text(md + "\n![comparison](compare.png)\n")
    plot(args.runs, rows, args.out / "compare.png", args.served_as)
    print(md)
    return 0
