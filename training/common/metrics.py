"""Binary metrics for benign (0) vs malignant (1), shared by cross-validation, `evaluate` and `kappa`.

Every ratio whose denominator is zero is None rather than NaN: reports are written as strict JSON,
and a reader must see "undefined" rather than a number that looks like a result.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray

# Metrics summarised across folds by `cv_summary`.
CV_KEYS = ("roc_auc", "accuracy", "sensitivity", "specificity", "f1", "ece")


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _as_arrays(y_true: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float).ravel()
    q = np.asarray(p, dtype=float).ravel()
    if y.shape != q.shape:
        raise ValueError(f"y_true has {y.size} values but p_malignant has {q.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0 (benign) and 1 (malignant)")
    if not np.isfinite(q).all() or (q < 0).any() or (q > 1).any():
        raise ValueError("p_malignant must be finite probabilities in [0, 1]")
    return y.astype(np.int64), q


def roc_auc(y_true: ArrayLike, p: ArrayLike) -> float | None:
    """Mann-Whitney AUC with ties counted half (equals sklearn's roc_auc_score); None for one class."""
    y, q = _as_arrays(y_true, p)
    values, codes = np.unique(q, return_inverse=True)
    return _auc_rows(y, codes, np.ones((1, y.size)), values.size)[0]


def _auc_rows(y: np.ndarray, codes: np.ndarray, weights: np.ndarray, n_values: int) -> list[float | None]:
    """AUC under each row of case weights (a bootstrap resample is the count of each case in it), from
    weighted per-score-value class counts: one vectorised pass for all resamples, no sort per resample
    and no scipy import (this module loads in the server too)."""
    rows = weights.shape[0]
    flat = (np.arange(rows)[:, None] * n_values + codes[None]).ravel()
    pos = np.bincount(flat, (weights * (y == 1)).ravel(), minlength=rows * n_values).reshape(rows, n_values)
    neg = np.bincount(flat, (weights * (y == 0)).ravel(), minlength=rows * n_values).reshape(rows, n_values)
    neg_below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)  # ties count half
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    return [float(w / (a * b)) if a and b else None for w, a, b in zip(wins, n_pos, n_neg)]


def resample_weights(n: int, rows: int, rng: np.random.Generator, groups: Sequence | None = None) -> np.ndarray:
    """(rows, n) bootstrap weights: how often each case is drawn. With `groups` (a patient or near-duplicate
    group per case) whole groups are drawn, so that the lesions of one patient rise and fall together:
    resampling them one by one would treat them as independent and make intervals too narrow."""
    if groups is None:
        idx = rng.integers(0, n, size=(rows, n))
        return np.stack([np.bincount(i, minlength=n) for i in idx]).astype(np.float64)
    _, code = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_groups = int(code.max()) + 1 if n else 0
    drawn = rng.integers(0, n_groups, size=(rows, n_groups))
    counts = np.stack([np.bincount(d, minlength=n_groups) for d in drawn]).astype(np.float64)
    return counts[:, code]


def _check_groups(groups: Sequence | None, n: int) -> None:
    if groups is not None and len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} cases")


def bootstrap_auc_ci(y_true: ArrayLike, p: ArrayLike, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95, groups: Sequence | None = None) -> list[float] | None:
    """Percentile bootstrap over cases, or over whole `groups` (patients, near-duplicate groups) when given;
    resamples holding one class only are skipped, not counted as 0.5."""
    y, q = _as_arrays(y_true, p)
    _check_groups(groups, y.size)
    if n_boot <= 0 or y.size == 0 or y.min() == y.max():
        return None
    values, codes = np.unique(q, return_inverse=True)
    rng = np.random.default_rng(seed)
    aucs: list[float] = []
    for start in range(0, n_boot, 250):  # chunks bound the memory of the resamples x values count tables
        w = resample_weights(y.size, min(250, n_boot - start), rng, groups)
        aucs += [a for a in _auc_rows(y, codes, w, values.size) if a is not None]
    if not aucs:
        return None
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(aucs, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def paired_auc_difference(y_true: ArrayLike, p_a: ArrayLike, p_b: ArrayLike, n_boot: int = 2000, seed: int = 0,
                          groups: Sequence | None = None) -> tuple[float, list[float]]:
    """AUC(b) - AUC(a) on the same cases, with a 95% percentile CI from paired resampling of cases (or of
    whole `groups`): both models are scored on every resample, so what the cases share cancels."""
    y, qa = _as_arrays(y_true, p_a)
    _, qb = _as_arrays(y_true, p_b)
    _check_groups(groups, y.size)
    (va, ca), (vb, cb) = (np.unique(q, return_inverse=True) for q in (qa, qb))
    rng = np.random.default_rng(seed)
    diffs: list[float] = []
    for start in range(0, n_boot, 250):
        w = resample_weights(y.size, min(250, n_boot - start), rng, groups)
        diffs += [b - a for a, b in zip(_auc_rows(y, ca, w, va.size), _auc_rows(y, cb, w, vb.size))
                  if a is not None and b is not None]
    delta = roc_auc(y, qb) - roc_auc(y, qa)
    return float(delta), [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def calibration_bins(y_true: ArrayLike, p: ArrayLike, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins of p_malignant: count, mean predicted, observed malignant fraction (empty bins left out)."""
    y, q = _as_arrays(y_true, p)
    # Interior edges only, so p == 1.0 falls into the last bin instead of an extra one.
    which = np.digitize(q, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    out = []
    for b in range(n_bins):
        m = which == b
        if m.any():
            out.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int(m.sum()),
                        "mean_p": float(q[m].mean()), "observed": float(y[m].mean())})
    return out


def ece(y_true: ArrayLike, p: ArrayLike, n_bins: int = 10) -> float | None:
    """Expected calibration error of p_malignant: count-weighted |observed - mean predicted| over bins."""
    bins = calibration_bins(y_true, p, n_bins)
    n = sum(b["count"] for b in bins)
    if not n:
        return None
    return float(sum(b["count"] * abs(b["observed"] - b["mean_p"]) for b in bins) / n)


def binary_report(y_true: ArrayLike, p_malignant: ArrayLike, threshold: float = 0.5, n_boot: int = 1000,
                  seed: int = 0, n_bins: int = 10, groups: Sequence | None = None) -> dict[str, Any]:
    """Everything reported for one set of predictions; malignant (1) is the positive class.

    A case is called malignant when p_malignant >= threshold. n_boot = 0 skips the AUC interval, which
    resamples whole `groups` when they are given (bootstrap_auc_ci)."""
    y, q = _as_arrays(y_true, p_malignant)
    pred = (q >= threshold).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    ppv, npv = _ratio(tp, tp + fp), _ratio(tn, tn + fn)
    den = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "n": int(y.size),
        "n_malignant": int(y.sum()),
        "threshold": float(threshold),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "accuracy": _ratio(tp + tn, y.size),
        "sensitivity": sens,
        "specificity": spec,
        "ppv": ppv,
        "npv": npv,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "mcc": (tp * tn - fp * fn) / den if den else None,
        "roc_auc": roc_auc(y, q) if y.size else None,
        "roc_auc_ci": bootstrap_auc_ci(y, q, n_boot, seed, groups=groups),
        "ci_resamples": "groups" if groups is not None else "cases",
        "ece": ece(y, q, n_bins),
        "per_class": {
            "benign": {"accuracy": spec, "precision": npv, "recall": spec,
                       "f1": _ratio(2 * tn, 2 * tn + fn + fp), "support": tn + fp},
            "malignant": {"accuracy": sens, "precision": ppv, "recall": sens,
                          "f1": _ratio(2 * tp, 2 * tp + fp + fn), "support": tp + fn},
        },
    }


def cv_summary(fold_reports: list[dict[str, Any]], y_all: ArrayLike, p_all: ArrayLike, threshold: float = 0.5,
               n_boot: int = 1000, seed: int = 0, n_bins: int = 10, groups: Sequence | None = None) -> dict[str, Any]:
    """Mean, std (ddof=1: folds are a sample of possible splits) and per-fold values of CV_KEYS, plus
    `pooled`, the report of all out-of-fold predictions together. Undefined fold values are left
    out of mean/std but kept (as None) in `per_fold` so fold positions still line up."""
    out: dict[str, Any] = {"n_folds": len(fold_reports)}
    for key in CV_KEYS:
        per_fold = [r.get(key) for r in fold_reports]
        vals = [float(v) for v in per_fold if v is not None]
        out[key] = {"mean": float(np.mean(vals)) if vals else None,
                    "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                    "per_fold": per_fold}
    out["pooled"] = binary_report(y_all, p_all, threshold, n_boot=n_boot, seed=seed, n_bins=n_bins, groups=groups)
    return out


# What each site's row carries (evaluate's report, the CV reports, the held-out site).
SITE_KEYS = ("n", "n_malignant", "roc_auc", "roc_auc_ci", "sensitivity", "specificity", "ece", "confusion_matrix")


def per_site(sites: Sequence[str], y_true: ArrayLike, p: ArrayLike, threshold: float, n_boot: int = 1000,
             seed: int = 0, n_bins: int = 10, groups: Sequence | None = None) -> dict[str, dict[str, Any]]:
    """SITE_KEYS of binary_report for each site (source) on its own cases, at the one shared threshold."""
    y, q = _as_arrays(y_true, p)
    _check_groups(groups, y.size)
    s = np.asarray(sites)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} sites for {y.size} cases")
    out = {}
    for site in sorted(set(s.tolist())):
        g = None if groups is None else np.asarray(groups)[s == site]
        rep = binary_report(y[s == site], q[s == site], threshold, n_boot=n_boot, seed=seed, n_bins=n_bins, groups=g)
        out[site] = {k: rep[k] for k in SITE_KEYS}
    return out


def site_table(rows: dict[str, dict[str, Any]], threshold: float) -> list[str]:
    """Markdown table of per_site rows."""
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"| site | n (malignant) | ROC AUC [95% CI] | sensitivity / specificity at {threshold:.3f} | ECE |",
             "|---|---|---|---|---|"]
    for site, m in rows.items():
        ci = m["roc_auc_ci"]
        ci_txt = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(f"| {site} | {m['n']} ({m['n_malignant']}) | {f(m['roc_auc'])}{ci_txt} | "
                     f"{f(m['sensitivity'])} / {f(m['specificity'])} | {f(m['ece'])} |")
    return lines


def threshold_for_sensitivity(y: ArrayLike, p: ArrayLike, target: float = 0.90) -> float:
    """The largest threshold t with sensitivity(p >= t) >= target: the k-th highest malignant score."""
    yy, q = _as_arrays(y, p)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    pos = np.sort(q[yy == 1])[::-1]
    if pos.size == 0:
        raise ValueError("no malignant cases: sensitivity is undefined")
    # The tolerance keeps e.g. 0.7 * 10 = 7.000000000000001 from asking for 8 cases.
    k = max(1, math.ceil(target * pos.size - 1e-9))
    return float(pos[k - 1])


def threshold_on_every_site(y: ArrayLike, p: ArrayLike, sites: Sequence[str], target: float = 0.90) -> float:
    """The largest threshold whose sensitivity reaches `target` on each site's cases, not only pooled: the
    lowest of the sites' own thresholds (a pooled one lets a large easy site hide a small hard one)."""
    yy, q = _as_arrays(y, p)
    s = np.asarray(sites)
    if s.shape != yy.shape:
        raise ValueError(f"{s.size} sites for {yy.size} cases")
    return min(threshold_for_sensitivity(yy[s == site], q[s == site], target)
               for site in sorted(set(s.tolist())) if (yy[s == site] == 1).any())


def fit_temperature(y: ArrayLike, logits_2col: ArrayLike, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T minimising the NLL of softmax(logits / T); searched on log T, which is where the
    NLL is close to unimodal and where 0.5x and 2x are equally far from 1."""
    from scipy.optimize import minimize_scalar  # only calibration needs scipy
    from scipy.special import log_softmax

    yy = np.asarray(y, dtype=np.int64).ravel()
    z = np.asarray(logits_2col, dtype=float)
    if z.ndim != 2 or z.shape[0] != yy.size:
        raise ValueError(f"logits must be N x C with N = {yy.size}, got shape {z.shape}")
    if yy.size == 0:
        raise ValueError("no cases to fit a temperature on")

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t), axis=1)[np.arange(yy.size), yy].mean())

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-5})
    return float(math.exp(res.x))
