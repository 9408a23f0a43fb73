"""`kappa`: agreement between two readers (Cohen's kappa) and each reader's (and the model's) accuracy.

RATINGS is a CSV with columns case_id, truth, and two reader columns (default reader_1, reader_2);
labels are benign|malignant or 0|1. An optional `model` column holds p(malignant) in [0, 1] or a
label. A row with an unknown label or a missing value is skipped with a warning naming its row.
Writes kappa.json and kappa.md to OUT and prints the markdown.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Sequence

LABEL_VALUES = {"benign": 0, "0": 0, "malignant": 1, "1": 1}

# Landis & Koch (1977): upper bound (inclusive) of each band; anything below 0 is "poor".
BANDS = ((0.20, "slight"), (0.40, "fair"), (0.60, "moderate"), (0.80, "substantial"), (1.00, "almost perfect"))


class RatingsError(ValueError):
    """The ratings file cannot be used at all: printed as one error line, exit 2."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ratings", type=Path, required=True, help="CSV: case_id, truth, reader columns[, model]")
    p.add_argument("--readers", nargs=2, default=["reader_1", "reader_2"], metavar=("READER_A", "READER_B"),
                   help="the two reader columns (default: reader_1 reader_2)")
    p.add_argument("--model-column", default="model",
                   help="optional column with the model's p(malignant) or label (default: model)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="p(malignant) at or above which the model calls malignant (default 0.5)")
    p.add_argument("--out", type=Path, required=True, help="output folder for kappa.json and kappa.md")


def cohen_kappa(a: Sequence[int], b: Sequence[int]) -> float | None:
    """Cohen's kappa of two binary raters; None when chance agreement is 1 (both raters constant and equal)."""
    n = len(a)
    if n == 0 or n != len(b):
        raise ValueError("cohen_kappa needs two equally long, non-empty rating lists")
    po = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    return None if pe >= 1.0 else (po - pe) / (1.0 - pe)


def landis_koch(kappa: float | None) -> str:
    if kappa is None:
        return "undefined"
    if kappa < 0:
        return "poor"
    # Round first so 0.2000000001 from float arithmetic is still "slight", as the table reads.
    k = round(kappa, 6)
    return next(name for hi, name in BANDS if k <= hi)


def _label(v: str | None) -> int | None:
    return LABEL_VALUES.get((v or "").strip().lower())


def _model_call(v: str | None, threshold: float) -> tuple[int | None, float | None]:
    """(call, probability) from a label or a p(malignant); (None, None) if it is neither."""
    label = _label(v)
    if label is not None:
        return label, float(label)
    try:
        p = float((v or "").strip())
    except ValueError:
        return None, None
    if not 0.0 <= p <= 1.0:  # also rejects nan
        return None, None
    return int(p >= threshold), p


def read_ratings(path: Path, readers: Sequence[str], model_column: str = "model", threshold: float = 0.5,
                 warn=print) -> dict[str, Any]:
    """Valid rows as parallel lists: case_id, truth, one list per reader, and the model's calls/p if present."""
    if not path.is_file():
        raise RatingsError(f"ratings file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheets often add a BOM
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        needed = ["case_id", "truth", *readers]
        missing = [c for c in needed if c not in header]
        if missing:
            raise RatingsError(f"{path}: missing column(s) {', '.join(missing)} (columns found: "
                               f"{', '.join(header) or 'none'})")
        has_model = model_column in header
        out: dict[str, Any] = {"case_id": [], "truth": [], **{r: [] for r in readers}}
        if has_model:
            out["model"], out["model_p"] = [], []
        seen: set[str] = set()
        skipped = 0
        # Row numbers count data rows from 1; the file line (header = line 1) is given as well.
        for i, row in enumerate(reader, start=1):
            where = f"row {i} (line {reader.line_num})"
            case = (row.get("case_id") or "").strip()
            problem = None
            if not case:
                problem = "missing case_id"
            elif case in seen:
                problem = f"duplicate case_id {case!r}"
            values = {}
            for col in ["truth", *readers]:
                if problem:
                    break
                values[col] = _label(row.get(col))
                if values[col] is None:
                    raw = (row.get(col) or "").strip()
                    problem = f"{col}: " + (f"unknown label {raw!r} (expected benign|malignant|0|1)"
                                            if raw else "missing value")
            call = p = None
            if has_model and not problem:
                call, p = _model_call(row.get(model_column), threshold)
                if call is None:
                    raw = (row.get(model_column) or "").strip()
                    problem = f"{model_column}: " + (f"{raw!r} is neither a label nor a probability in [0, 1]"
                                                     if raw else "missing value")
            if problem:
                warn(f"warning: {path}: {where}: {problem}; row skipped")
                skipped += 1
                continue
            seen.add(case)
            out["case_id"].append(case)
            for col, v in values.items():
                out[col].append(v)
            if has_model:
                out["model"].append(call)
                out["model_p"].append(p)
    out["skipped"] = skipped
    return out


def rater_stats(truth: Sequence[int], calls: Sequence[int]) -> dict[str, Any]:
    from training.common.metrics import binary_report
    rep = binary_report(truth, calls, threshold=0.5, n_boot=0)
    return {k: rep[k] for k in ("n", "accuracy", "sensitivity", "specificity", "confusion_matrix")}


def kappa_report(ratings: dict[str, Any], readers: Sequence[str], threshold: float = 0.5) -> dict[str, Any]:
    a, b, truth = ratings[readers[0]], ratings[readers[1]], ratings["truth"]
    n = len(truth)
    if n == 0:
        raise RatingsError("no usable rows: every row was skipped")
    k = cohen_kappa(a, b)
    rep: dict[str, Any] = {
        "n": n,
        "n_malignant": sum(truth),
        "skipped_rows": ratings["skipped"],
        "readers": list(readers),
        "kappa": k,
        "band": landis_koch(k),
        "percent_agreement": 100.0 * sum(x == y for x, y in zip(a, b)) / n,
        "raters": {r: rater_stats(truth, ratings[r]) for r in readers},
    }
    if "model" in ratings:
        rep["raters"]["model"] = rater_stats(truth, ratings["model"])
        rep["raters"]["model"]["threshold"] = threshold
        from training.common.metrics import roc_auc
        # An AUC only means something when the model column held scores rather than only labels.
        if any(p not in (0.0, 1.0) for p in ratings["model_p"]):
            rep["raters"]["model"]["roc_auc"] = roc_auc(truth, ratings["model_p"])
    return rep


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "undefined"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def kappa_markdown(rep: dict[str, Any]) -> str:
    r1, r2 = rep["readers"]
    lines = [
        f"# Reader agreement: {r1} vs {r2}",
        "",
        f"{rep['n']} cases ({rep['n_malignant']} malignant)"
        + (f", {rep['skipped_rows']} rows skipped" if rep["skipped_rows"] else "") + ".",
        "",
        f"- Cohen's kappa: **{_fmt(rep['kappa'])}** ({rep['band']}, Landis-Koch)",
        f"- percent agreement: {rep['percent_agreement']:.1f}%",
        "",
        "| rater | accuracy | sensitivity | specificity | TN | FP | FN | TP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in rep["raters"].items():
        (tn, fp), (fn, tp) = s["confusion_matrix"]
        label = name + (f" (p >= {s['threshold']:g})" if "threshold" in s else "")
        lines.append(f"| {label} | {_fmt(s['accuracy'], True)} | {_fmt(s['sensitivity'], True)} "
                     f"| {_fmt(s['specificity'], True)} | {tn} | {fp} | {fn} | {tp} |")
    if "roc_auc" in rep["raters"].get("model", {}):
        lines += ["", f"Model ROC AUC: {_fmt(rep['raters']['model']['roc_auc'])}"]
    lines += ["", "Landis-Koch bands: <0 poor, 0-0.20 slight, 0.21-0.40 fair, 0.41-0.60 moderate, "
                  "0.61-0.80 substantial, 0.81-1 almost perfect."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        ratings = read_ratings(args.ratings, args.readers, args.model_column, args.threshold,
                               warn=lambda m: print(m, file=sys.stderr))
        rep = kappa_report(ratings, args.readers, args.threshold)
    except (RatingsError, csv.Error, UnicodeDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep["ratings"] = str(Path(args.ratings).resolve())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kappa.json").write_text(json.dumps(rep, indent=2, allow_nan=False) + "\n")
    md = kappa_markdown(rep)
    (out / "kappa.md").write_text(md)
    print(md)
    print(f"wrote {out / 'kappa.json'}, {out / 'kappa.md'}")
    return 0
