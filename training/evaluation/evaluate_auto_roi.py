"""`evaluate-auto-roi`: the served classifier on the automatic ROI (the server's `{}`) next to a drawn box's.

For every lesion of DATA (any dataset folder `evaluate` reads; several sites are reported per site), the
served localiser of `--weights` finds a box and LiteMedSAM outlines it, as the server answers `{}`
(the `auto` ROI source, training.rois.auto_views); the drawn-box ROI is the `sam` source (the expert
box jittered as a user draws it, outlined by the same SAM), `evaluate`'s default. Per site:

- found: the share of lesions whose image gets a lesion (else the server answers "no lesion found" and
  the user has to draw a box); hit: the share whose automatic outline has IoU >= 0.5 with the lesion's
  expert mask (train-localiser's "detected").
- on the lesions found, paired: the served model's ROC AUC with the auto crop and with the drawn-box crop,
  95% bootstrap CIs over patient groups, the paired AUC difference auto - drawn with its CI, and
  sensitivity / specificity at the served threshold for both.

Lesions not found get no auto prediction (none is substituted); their drawn-box predictions stay in
predictions.csv. The served localiser was trained on BUSI and BUS-BRA (manifest `data`), so on those two
sites the localisation step is in-sample: optimistic. The report names the classifier's overlap with DATA
as `evaluate` does. Writes OUT/report.json, report.md, predictions.csv, roc.png.

`--cv RUN`: instead of the served classifier, a train-classifier run's fold models, each on its own test
lesions (out of fold), from RUN/cv/oof_served_auto.csv (`train-classifier --served-as ... auto`) and the
drawn-box crops' oof.csv (a run trained on `sam`) or oof_served_sam.csv, at the run's temperature and
threshold; DATA is the run's --rois. The honest cross-validated figure where the served classifier saw DATA
(BUSI); the fold models are the ResNet18 alone (the served SAM probe is fitted by `sam-probe` on top).

Exit status 2: missing or unknown data folder, no lesions, missing/corrupt weights, no localiser served.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluation.evaluate import EvaluateError, predict, select_lesions, training_overlap

SUMMARY_KEYS = ("n", "n_malignant", "roc_auc", "roc_auc_ci", "sensitivity", "specificity", "ece", "confusion_matrix")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=Path, default=Path(__file__).resolve().parents[2] / "models" / "weights",
                   help="weights folder holding manifest.json with a classifier and a localiser (default: "
                        "models/weights; with --cv the localiser the run's auto crops came from, the same default)")
    p.add_argument("--data", type=Path, required=True,
                   help="prepared folder (rois.csv) or dataset folder in a known layout (e.g. BUSI, BUS-BRA)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--modality", choices=("us", "dm"), help="us or dm (default: the only modality in DATA)")
    p.add_argument("--model", help="manifest entry to evaluate (default: classifier-<modality>)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--cv", type=Path, default=None,
                   help="a train-classifier run scored with --served-as auto: its out-of-fold predictions instead "
                        "of the served classifier's (DATA: the run's --rois)")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def compare_site(y: np.ndarray, p_auto: np.ndarray, p_drawn: np.ndarray, found: np.ndarray, hit: np.ndarray,
                 groups: np.ndarray, threshold: float, n_boot: int, seed: int) -> dict[str, Any]:
    """One site's (or all sites') figures; `p_auto` is NaN where no lesion was found."""
    from training.common.metrics import binary_report, paired_auc_difference
    row: dict[str, Any] = {
        "lesions": int(y.size), "found": int(found.sum()), "found_fraction": float(found.mean()),
        "hit": int(hit.sum()), "hit_fraction": float(hit.mean()),
        "hit_fraction_of_found": float(hit[found].mean()) if found.any() else None,
        "not_found_by_class": {"benign": int((~found & (y == 0)).sum()), "malignant": int((~found & (y == 1)).sum())},
        "drawn_all": {k: v for k, v in binary_report(y, p_drawn, threshold, n_boot, seed, groups=list(groups)).items()
                      if k in SUMMARY_KEYS},
    }
    yf, gf = y[found], list(groups[found])
    for name, p in (("auto", p_auto[found]), ("drawn", p_drawn[found])):
        rep = binary_report(yf, p, threshold, n_boot, seed, groups=gf)
        row[name] = {k: rep[k] for k in SUMMARY_KEYS}
    if len(set(yf.tolist())) == 2 and n_boot:
        delta, ci = paired_auc_difference(yf, p_drawn[found], p_auto[found], n_boot, seed, groups=gf)
        row["delta_auc"], row["delta_auc_ci"] = delta, ci
    else:
        row["delta_auc"], row["delta_auc_ci"] = None, None
    return row


def auto_predictions(records, weights: Path, name: str, found: np.ndarray) -> np.ndarray:
    """The served classifier's p(malignant) on the auto crop of the lesions found, NaN elsewhere."""
    p_auto = np.full(len(records), np.nan)
    if found.any():
        p_auto[found] = predict([r for r, f in zip(records, found) if f], weights, name, "auto")[0]
    return p_auto


def cv_predictions(run: Path, records) -> tuple[np.ndarray, np.ndarray, dict]:
    """A train-classifier run's out-of-fold p(malignant) on the drawn-box and auto crops, in `records`' order,
    at the run's temperature, and its cv report."""
    from training.classifier.train_classifier import read_oof, read_oof_column, softmax_p
    cv = Path(run) / "cv"
    if not (cv / "report.json").is_file():
        raise EvaluateError(f"{run} is not a finished train-classifier run (no cv/report.json)")
    report = json.loads((cv / "report.json").read_text())
    files = {"drawn": cv / ("oof.csv" if report["roi_source"] == "sam" else "oof_served_sam.csv"),
             "auto": cv / "oof_served_auto.csv"}
    at = {r.lesion_id: i for i, r in enumerate(records)}
    out = {}
    for key, path in files.items():
        if not path.is_file():
            raise EvaluateError(f"{run} has no {path.name}: it was not scored on {key} crops "
                                f"(train-classifier --served-as ... {'auto' if key == 'auto' else 'sam'})")
        ids = read_oof_column(path, "lesion_id")
        if sorted(ids) != sorted(at):
            raise EvaluateError(f"{path} covers other lesions than {len(records)} of --data: give the run's --rois")
        _, _, logits = read_oof(path)
        p = np.empty(len(records))
        p[[at[i] for i in ids]] = softmax_p(logits, report["temperature"])
        out[key] = p
    return out["drawn"], out["auto"], report


def evaluate_auto_roi(data: Path, weights: Path, out: Path, modality: str | None = None, model: str | None = None,
                      n_boot: int = 1000, seed: int = 0, cv: Path | None = None) -> dict[str, Any]:
    from models.manifest import WeightsError, read_manifest
    from training.common.plots import plot_roc
    from training.rois.auto_views import AutoViews, localiser_entry
    from training.rois.sources import SAM_FOR_BOXES

    modality, records = select_lesions(Path(data), modality)
    weights = Path(weights)
    name = model or f"classifier-{modality}"
    try:
        loc_entry = localiser_entry(weights, modality)
        entry = None if cv else read_manifest(weights).models.get(name)
    except (WeightsError, ValueError) as e:
        raise EvaluateError(str(e)) from e
    if cv is None and entry is None:
        raise EvaluateError(f"{weights / 'manifest.json'} has no {name}")
    if cv is not None and not (Path(cv) / "cv" / "report.json").is_file():
        raise EvaluateError(f"{cv} is not a finished train-classifier run (no cv/report.json)")
    cv_report = json.loads((Path(cv) / "cv" / "report.json").read_text()) if cv else {}
    # the SAM that outlined the auto box: the classifier's box route, as the server routes boxes
    sam_name = (entry.input.sam if entry else cv_report.get("config", {}).get("sam")) or SAM_FOR_BOXES
    _log(f"{cv or name} on {len(records)} {modality} lesions from {data}: drawn box vs {loc_entry.name}'s "
         "automatic ROI")
    if cv is None:
        # the drawn box first: its encoder pass (where it outlines anew) fills the embedding cache the localiser reads
        p_drawn, entry = predict(records, weights, name, "sam")
    try:
        auto = AutoViews(records, sam_name, weights, progress=sys.stderr.isatty())
        found, hit = auto.found(), auto.hit()
    except (WeightsError, ValueError) as e:
        raise EvaluateError(str(e)) from e
    _log(f"found {found.sum()} of {len(records)} lesions, hit {hit.sum()}")
    if cv is None:
        p_drawn, p_auto = np.asarray(p_drawn), auto_predictions(records, weights, name, found)
        threshold, temperature, sha = entry.threshold, entry.temperature, entry.sha256
        overlap = training_overlap(records, entry)
    else:
        p_drawn, p_auto, cv_report = cv_predictions(Path(cv), records)
        p_auto[~found] = np.nan  # the fold models scored a blank crop there: not an automatic prediction
        threshold, temperature, sha = cv_report["threshold"], cv_report["temperature"], None
        name = f"{Path(cv).name} (out of fold)"
        overlap = {"images": 0, "of": len({r.image_path for r in records}),
                   "note": "out of fold: each lesion scored by the fold model that did not train on it"}
    y = np.array([r.target for r in records])
    groups = np.array([r.group for r in records])  # CIs resample whole patients / near-duplicate groups
    sites = np.array([r.source for r in records])
    per_site = {s: compare_site(y[sites == s], p_auto[sites == s], p_drawn[sites == s], found[sites == s],
                                hit[sites == s], groups[sites == s], threshold, n_boot, seed)
                for s in sorted(set(sites.tolist()))}
    localiser_sites = sorted(loc_entry.data)
    rep: dict[str, Any] = {
        "model": name, "model_sha256": sha, "cv_run": str(Path(cv).resolve()) if cv else None,
        "modality": modality, "threshold": threshold, "temperature": temperature,
        "localiser": loc_entry.name, "localiser_sha256": loc_entry.sha256,
        "localiser_threshold": loc_entry.threshold, "localiser_training_sites": localiser_sites,
        "localiser_in_sample_sites": sorted(set(per_site) & set(localiser_sites)),
        "sam": sam_name, "hit_rule": "automatic outline IoU >= 0.5 with the lesion's expert mask",
        "training_overlap": overlap,
        "per_site": per_site,
        **({"all": compare_site(y, p_auto, p_drawn, found, hit, groups, threshold, n_boot, seed)}
           if len(per_site) > 1 else {}),
        "data": {"folder": str(Path(data).resolve()), "sources": sorted(per_site)},
        "weights": str(weights.resolve()), "n_boot": n_boot,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lesion_id", "group", "source", "image_path", "label", "found", "hit", "auto_score",
                    "auto_candidates", "auto_iou", "auto_box_iou", "p_malignant_drawn", "p_malignant_auto"])
        cols = [auto.column(c) for c in ("score", "candidates", "iou", "box_iou")]
        for i, r in enumerate(records):
            w.writerow([r.lesion_id, r.group, r.source, r.image_path, r.label, int(found[i]), int(hit[i]),
                        round(float(cols[0][i]), 4), int(cols[1][i]), round(float(cols[2][i]), 4),
                        round(float(cols[3][i]), 4), repr(float(p_drawn[i])),
                        repr(float(p_auto[i])) if found[i] else ""])
    curves = []
    for s in per_site:
        m = (sites == s) & found
        curves += [(f"{s} drawn box", y[m], p_drawn[m]), (f"{s} automatic", y[m], p_auto[m])]
    plot_roc(curves, out / "roc.png", f"{name}: automatic vs drawn-box ROI (lesions found)")
    (out / "report.json").write_text(json.dumps(rep, indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(markdown(rep))
    return rep


def _ci(v: list[float] | None) -> str:
    return f"[{v[0]:.3f}, {v[1]:.3f}]" if v else "[undefined]"


def _auc(m: dict) -> str:
    return "undefined" if m["roc_auc"] is None else f"{m['roc_auc']:.3f} {_ci(m['roc_auc_ci'])}"


def _ss(m: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    return f"{f(m['sensitivity'])} / {f(m['specificity'])}"


def markdown(rep: dict[str, Any]) -> str:
    rows = {**rep["per_site"], **({"all sites": rep["all"]} if "all" in rep else {})}
    overlap = rep["training_overlap"]
    lines = [
        f"# `{rep['model']}` on the automatic ROI vs a drawn box ({rep['modality']})", "",
        "Research use only. Not for clinical diagnosis.", "",
        f"- data: `{rep['data']['folder']}` ({', '.join(rep['data']['sources'])})",
        (f"- classifier sha256 `{rep['model_sha256'][:16]}`" if rep["model_sha256"] else
         f"- fold models of `{rep['cv_run']}`, each on its own test lesions") + f", threshold {rep['threshold']:.3f}; "
        f"localiser `{rep['localiser']}` sha256 `{rep['localiser_sha256'][:16]}`, lesion threshold "
        f"{rep['localiser_threshold']:.3f}, trained on {', '.join(rep['localiser_training_sites'])}",
        "- drawn box: the expert box jittered by up to 5% a side, outlined by "
        f"{rep['sam']} (the `sam` ROI source); automatic: the localiser's best box outlined by {rep['sam']} "
        "(the server's `{}`); hit: " + rep["hit_rule"],
        *([f"- **The localiser was trained on {', '.join(rep['localiser_in_sample_sites'])}: its finding and "
           "hitting there are in-sample (optimistic).**"] if rep["localiser_in_sample_sites"] else []),
        *([f"- **{overlap['images']} of {overlap['of']} images were trained on by the classifier: its AUCs here are "
           "in-sample, not a test of it.**"] if overlap["images"] else
          [f"- classifier training images: {overlap['note']}"]),
        "",
        "| site | lesions | found | hit (of all) | AUC drawn box, all lesions | AUC drawn box, found | "
        "AUC automatic, found | ΔAUC auto - drawn [95% CI] | sens / spec drawn | sens / spec automatic |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, m in rows.items():
        delta = "undefined" if m["delta_auc"] is None else f"{m['delta_auc']:+.3f} {_ci(m['delta_auc_ci'])}"
        lines.append(f"| {s} | {m['lesions']} | {m['found']} ({m['found_fraction']:.3f}) | "
                     f"{m['hit']} ({m['hit_fraction']:.3f}) | {_auc(m['drawn_all'])} | {_auc(m['drawn'])} | "
                     f"{_auc(m['auto'])} | {delta} | {_ss(m['drawn'])} | {_ss(m['auto'])} |")
    lines += ["", "Not found (no automatic ROI; the server asks for a box): " + "; ".join(
        f"{s}: {m['not_found_by_class']['benign']} benign, {m['not_found_by_class']['malignant']} malignant"
        for s, m in rows.items()),
        "", f"Sensitivity / specificity at the {'run' if rep['cv_run'] else 'served'} threshold {rep['threshold']:.3f}, on the lesions found. "
        "CIs: bootstrap over patient / near-duplicate groups, paired for ΔAUC.", "",
        "![ROC](roc.png)", "", "Per lesion: [predictions.csv](predictions.csv)."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        evaluate_auto_roi(args.data, args.weights, args.out, args.modality, args.model, args.n_boot, args.seed,
                          args.cv)
    except EvaluateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out / 'report.json'}, report.md, predictions.csv, roc.png")
    return 0
