"""Pilot, BUS-BRA -> BUSI: each lever arm's ResNet18 (mean of its two seeds' logit differences) fused with the
SAM probe fitted on BUS-BRA (probe-sites held-out-busi), alpha = the ratio of the two parts' spreads (the
served rule; here on the held-out site's own predictions, since the arms have no out-of-fold ones: no labels
are used). AUC only: nothing is calibrated.

Usage (2026-12-03): python fuse_arms.py runs/abl-rev runs/probe-sites/held-out-busi runs/abl-rev-fused, then
`python -m training site-ablation --site busi --row NAME=runs/abl-rev-fused/fused-ARM ...`."""
import csv, json, sys
from pathlib import Path
import numpy as np

root, probe_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
prows = {r["lesion_id"]: r for r in csv.DictReader(open(probe_dir / "predictions.csv"))}
for arm in ("base", "scanner", "percentile"):
    diffs = []
    for s in (0, 1):
        rows = list(csv.DictReader(open(root / f"{arm}-s{s}/holdout/predictions.csv")))
        diffs.append(np.array([float(r["logit_malignant"]) - float(r["logit_benign"]) for r in rows]))
    ids = [r["lesion_id"] for r in rows]
    q = np.clip(np.array([float(prows[i]["p_malignant"]) for i in ids]), 1e-7, 1 - 1e-7)
    d_p = np.log(q / (1 - q))
    d_r = np.mean(diffs, 0)
    alpha = d_r.std() / d_p.std()
    fused = d_r + alpha * d_p
    folder = out / f"fused-{arm}"; folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["lesion_id", "group", "source", "label", "p_malignant"]); w.writeheader()
        for r, d in zip(rows, fused):
            w.writerow({k: r[k] for k in ("lesion_id", "group", "source", "label")} | {"p_malignant": 1 / (1 + np.exp(-d))})
    (folder / "report.json").write_text(json.dumps({"threshold": 0.5, "alpha": alpha}))
    print(arm, "alpha", round(float(alpha), 3))
