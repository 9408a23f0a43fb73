"""PNG figures for reports: ROC, confusion matrix, reliability diagram, training curves.

Figures are built on matplotlib's object API with the Agg canvas, never pyplot: no global figure
state (safe inside a server or a training loop) and no display needed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from training.common.metrics import calibration_bins, ece, roc_auc

DPI = 120
CLASS_NAMES = ("benign", "malignant")


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # One point per distinct score, highest first, so tied scores make a diagonal step like sklearn's.
    order = np.argsort(-p, kind="mergesort")
    y, p = y[order], p[order]
    last = np.r_[np.nonzero(np.diff(p))[0], y.size - 1]
    tps, fps = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def plot_roc(curves: Sequence[tuple[str, Sequence[int], Sequence[float]]], path: str | Path,
             title: str = "ROC") -> Path:
    """One ROC curve per (label, y, p_malignant), AUC in the legend; one-class curves are listed, not drawn."""
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    for label, y, p in curves:
        yy, pp = np.asarray(y, dtype=np.int64), np.asarray(p, dtype=float)
        auc = roc_auc(yy, pp) if yy.size else None
        if auc is None:
            ax.plot([], [], " ", label=f"{label} (one class: no ROC)")
            continue
        fpr, tpr = roc_points(yy, pp)
        ax.plot(fpr, tpr, lw=1.5, label=f"{label} (AUC {auc:.3f}, n={yy.size})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(cm: Sequence[Sequence[int]], path: str | Path, title: str = "Confusion matrix") -> Path:
    """2x2 counts [[TN, FP], [FN, TP]]: rows true class, columns predicted."""
    m = np.asarray(cm, dtype=np.int64)
    # Constrained layout: tight_layout ignores the colorbar and clips the y label.
    fig = Figure(figsize=(4.8, 4.0), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=max(int(m.max()), 1))
    fig.colorbar(im, ax=ax, shrink=0.85)
    for (i, j), v in np.ndenumerate(m):
        # Dark text on light cells and the reverse, so small and large counts stay readable.
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14,
                color="white" if v > m.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
           xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)


def plot_reliability(y: Sequence[int], p: Sequence[float], path: str | Path, title: str = "Reliability",
                     n_bins: int = 10) -> Path:
    """Observed malignant fraction vs mean p_malignant per equal-width bin, with the count per bin below."""
    bins = calibration_bins(y, p, n_bins)
    e = ece(y, p, n_bins)
    fig = Figure(figsize=(5.0, 5.6))
    ax, hx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    if bins:
        ax.plot([b["mean_p"] for b in bins], [b["observed"] for b in bins], "o-", color="C0",
                label=f"model (ECE {e:.3f})" if e is not None else "model")
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="observed malignant fraction", title=title)
    ax.legend(loc="upper left", fontsize=8)
    width = 1.0 / n_bins
    hx.bar([b["lo"] + width / 2 for b in bins], [b["count"] for b in bins], width=width * 0.9, color="C0")
    hx.set(xlabel="predicted p(malignant)", ylabel="cases")
    fig.tight_layout()
    return _save(fig, path)


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and math.isfinite(float(v))


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "Training") -> Path:
    """One line per numeric key of the history rows against `epoch`: losses left, the rest (AUC,
    accuracy, ...) right, since they live on different scales."""
    keys: list[str] = []
    for row in history:
        keys += [k for k, v in row.items() if k != "epoch" and k not in keys and _numeric(v)]
    groups = [g for g in ([k for k in keys if "loss" in k], [k for k in keys if "loss" not in k]) if g]
    fig = Figure(figsize=(5.0 * max(len(groups), 1), 4.0))
    axes = fig.subplots(1, max(len(groups), 1), squeeze=False)[0]
    for ax, group in zip(axes, groups or [[]]):
        for k in group:
            pts = [(row.get("epoch", i), float(row[k])) for i, row in enumerate(history)
                   if _numeric(row.get(k))]
            ax.plot([e for e, _ in pts], [v for _, v in pts], marker="o" if len(pts) < 30 else None,
                    ms=3, label=k)
        is_loss = bool(group) and "loss" in group[0]
        ax.set(xlabel="epoch", ylabel="loss" if is_loss else "metric",
               title="loss" if is_loss else "metrics")
        if group:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_dice_histogram(by_class: dict[str, Sequence[float]], path: str | Path, title: str = "Dice",
                        bins: int = 20) -> Path:
    """Histogram of per-image Dice in [0, 1], one outline per class with its mean in the legend."""
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for i, (label, values) in enumerate(by_class.items()):
        v = np.asarray(values, dtype=float)
        if not v.size:
            continue
        ax.hist(v, bins=edges, histtype="stepfilled", alpha=0.35, color=f"C{i}")
        ax.hist(v, bins=edges, histtype="step", lw=1.5, color=f"C{i}",
                label=f"{label} (n={v.size}, mean {v.mean():.3f})")
    ax.set(xlim=(0, 1), xlabel="Dice", ylabel="images", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
