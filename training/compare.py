"""`compare`: regimes side by side from their cross-validation runs (train-classifier --out folders).

For each run: fold AUC, pooled out-of-fold AUC with its CI, accuracy/sensitivity/specificity, ECE.
Against the first run (the baseline, e.g. `real`): the AUC difference with a 95% paired bootstrap CI
over lesions, which says whether a technique helps. Writes compare.json, compare.md, compare.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from training.metrics import roc_auc
from training.plots import _roc_points
from training.train_classifier import _softmax_p, read_oof


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+", help="train-classifier output folders; the first is the baseline")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-boot", type=int, default=2000)


def paired_auc_difference(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, n_boot: int, seed: int = 0
                          ) -> tuple[float, list[float]]:
    """AUC(b) - AUC(a) on the same lesions, with a 95% percentile CI from paired case resampling."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx].tolist())) < 2:
            continue
        diffs.append(roc_auc(y[idx], p_b[idx]) - roc_auc(y[idx], p_a[idx]))
    return roc_auc(y, p_b) - roc_auc(y, p_a), [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def load_run(run: Path) -> dict:
    report = json.loads((run / "cv" / "report.json").read_text())
    y, _, logits = read_oof(run / "cv" / "oof.csv")
    return {"run": str(run), "report": report, "y": y, "p": _softmax_p(logits, report["temperature"])}


def compare(runs: list[Path], n_boot: int = 2000) -> list[dict]:
    loaded = [load_run(r) for r in runs]
    base = loaded[0]
    rows = []
    for item in loaded:
        rep, pooled = item["report"], item["report"]["summary"]["pooled"]
        regime = rep["regime"] if "ensemble_of" in rep else f"{rep['regime']} (seed {rep['config']['seed']})"
        row = {"run": item["run"], "modality": rep["modality"], "regime": regime, "n": rep["n"],
               "fold_auc_mean": rep["summary"]["roc_auc"]["mean"], "fold_auc_std": rep["summary"]["roc_auc"]["std"],
               "pooled_auc": pooled["roc_auc"], "pooled_auc_ci": pooled["roc_auc_ci"],
               "accuracy_at_0.5": rep["at_0.5"]["accuracy"], "threshold": rep["threshold"],
               "sensitivity": pooled["sensitivity"], "specificity": pooled["specificity"],
               "accuracy_at_threshold": pooled["accuracy"],
               "ece_before": rep["ece_uncalibrated"], "ece_after": pooled["ece"],
               "tta_flip_auc": rep.get("tta_flip", {}).get("roc_auc"), "seconds": rep.get("seconds")}
        if item is not base and np.array_equal(item["y"], base["y"]):
            d, ci = paired_auc_difference(base["y"], base["p"], item["p"], n_boot)
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


def plot(runs: list[Path], rows: list[dict], path: Path) -> None:
    fig = Figure(figsize=(11, 4.8))
    roc_ax, auc_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    roc_ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    for run, row in zip(runs, rows):
        item = load_run(run)
        fpr, tpr = _roc_points(item["y"], item["p"])
        roc_ax.plot(fpr, tpr, lw=1.5, label=f"{row['modality']} {row['regime']} (AUC {row['pooled_auc']:.3f})")
    roc_ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="pooled out-of-fold ROC", xlim=(0, 1), ylim=(0, 1.01))
    roc_ax.legend(loc="lower right", fontsize=8)
    labels = [f"{r['modality']}\n{r['regime']}" for r in rows]
    aucs = np.array([r["pooled_auc"] for r in rows])
    err = np.array([[a - r["pooled_auc_ci"][0], r["pooled_auc_ci"][1] - a] for a, r in zip(aucs, rows)]).T
    auc_ax.errorbar(range(len(rows)), aucs, yerr=err, fmt="o", capsize=4)
    auc_ax.scatter(range(len(rows)), [r["fold_auc_mean"] for r in rows], marker="x", color="C1", label="fold mean")
    auc_ax.set_xticks(range(len(rows)), labels)
    auc_ax.set(ylabel="ROC-AUC", title="AUC with 95% bootstrap CI", ylim=(max(0.0, float(aucs.min()) - 0.2), 1.0))
    auc_ax.legend(fontsize=8)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def run(args: argparse.Namespace) -> int:
    rows = compare(args.runs, args.n_boot)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    md = markdown(rows)
    (args.out / "compare.md").write_text(md + "\n![comparison](compare.png)\n")
    plot(args.runs, rows, args.out / "compare.png")
    print(md)
    return 0
