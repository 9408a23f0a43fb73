"""Does the served prediction hold when the same lesion comes from another scanner or setting? (issue 9)

The served model must generalise to other hospitals and scanners, and nothing here may be tuned on
such a set. This bench measures what can be measured without one: real gray BUSI lesions (the same
order as bench/marks.py, alternating benign and malignant) through the served pipeline
(`server.engine.Engine`: SAM from the drawn box, crop, ResNet18 + SAM probe) clean and with the whole
image changed as another scanner or setting would change it: gain down / up, lower contrast,
speckle, blur, half the resolution. SAM re-outlines each changed image, so the mask, the crop and the
embedding all move, as they would at serving. For each shift it reports how far the served
probability moves, how many decisions flip at the served threshold and the AUC; and, for the
ResNet18's part alone (the same engine with the probe set aside) against the served fused one, how far
each logit difference moves, median and mean, in units of its own spread over the clean lesions (the
fused logits spread about twice as wide). The served model was trained on these lesions: the AUCs are
not a validation, the movements are the measurement.

    .venv/bin/python bench/shift.py --n 60 --out bench/results/shift.json
    .venv/bin/python bench/shift.py --summarise bench/results/shift.json   # again from its rows
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.segmentation import Prompt  # noqa: E402
from server.engine import Engine, Timer  # noqa: E402
from server.settings import Settings  # noqa: E402
from training.classifier.scanner_shifts import blur, contrast, gain, resolution, speckle  # noqa: E402
from training.common.metrics import roc_auc  # noqa: E402
from training.rois.sources import drawn_box, lesion_rng  # noqa: E402
from bench.marks import gray_lesions  # noqa: E402  (the same lesions, in the same order)


# name -> the whole image as another scanner or setting would give it (rng: the lesion's own, fixed). The
# SAM probe's --scanner-augment view draws from the same kinds (training.classifier.scanner_shifts.RANGES).
SHIFTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "gain -30%": lambda rgb, rng: gain(rgb, 0.7),
    "gain +30%": lambda rgb, rng: gain(rgb, 1.3),
    "contrast x0.7": lambda rgb, rng: contrast(rgb, 0.7),
    "speckle 15%": lambda rgb, rng: speckle(rgb, 0.15, rng),
    "blur 1.5 px": lambda rgb, rng: blur(rgb, 1.5),
    "half resolution": lambda rgb, rng: resolution(rgb, 0.5),
}


def logit_difference(p: float, temperature: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return float(np.log(p / (1 - p)) * temperature)


def predict(engine: Engine, key: str, rgb: np.ndarray, box) -> tuple[float, float]:
    """The served p(malignant), and the ResNet18 part's logit difference (the probe set aside)."""
    seg = engine.segment(key, rgb, "us", Prompt(box=list(box)), Timer())
    served = engine.classify(rgb, "us", seg, Timer(), key).p_malignant
    probe = engine.probes.pop("us")
    try:
        alone = engine.classify(rgb, "us", seg, Timer(), key).p_malignant
    finally:
        engine.probes["us"] = probe
    return served, logit_difference(alone, engine.classifiers["us"][1].temperature)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("BRANET_DATA", "../shared/data")))
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--out", type=Path, default=Path("bench/results/shift.json"))
    p.add_argument("--summarise", type=Path, help="summarise and plot the rows of an earlier run's JSON instead")
    args = p.parse_args()
    if args.summarise:
        run = json.loads(args.summarise.read_text())
        return write(args.summarise, run["rows"], run["summary"]["threshold"], run["summary"]["temperature"],
                     run["summary"]["model"])
    engine = Engine(Settings(create_dev_user=False))
    engine.load()
    entry = engine.classifiers["us"][1]
    if "us" not in engine.probes:
        print("error: the served US classifier has no SAM probe; this bench compares the two parts", file=sys.stderr)
        return 2
    rows = []
    for r in tqdm(gray_lesions(args.data, args.n), desc="lesions"):
        rgb = np.asarray(Image.open(r.image_path).convert("RGB"))
        box = drawn_box(r, rgb.shape[:2], 0)
        row = {"lesion": r.lesion_id, "target": r.target}
        row["clean"], row["clean resnet"] = predict(engine, f"{r.lesion_id}|clean", rgb, box)
        for name, shift in SHIFTS.items():
            row[name], row[f"{name} resnet"] = predict(engine, f"{r.lesion_id}|{name}", shift(rgb, lesion_rng(r, 7)), box)
        rows.append(row)
    return write(args.out, rows, entry.threshold, entry.temperature, entry.sha256)


def write(out: Path, rows: list[dict], threshold: float, temperature: float, model: str) -> int:
    summary = summarise(rows, threshold, temperature) | {"model": model}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    plot(summary, out.with_suffix(".png"))
    print(json.dumps(summary, indent=2))
    return 0


def summarise(rows: list[dict], threshold: float, temperature: float) -> dict:
    y = np.array([row["target"] for row in rows])
    clean = np.array([row["clean"] for row in rows])
    clean_d = np.array([logit_difference(v, temperature) for v in clean])
    clean_r = np.array([row["clean resnet"] for row in rows])
    out = {"lesions": len(rows), "threshold": threshold, "temperature": temperature,
           "clean_spread": {"served": float(clean_d.std()), "resnet": float(clean_r.std())},
           "auc": {"clean": roc_auc(y, clean)}, "auc_resnet": {"clean": roc_auc(y, 1 / (1 + np.exp(-clean_r)))}}
    for name in SHIFTS:
        shifted = np.array([row[name] for row in rows])
        d = np.array([logit_difference(v, temperature) for v in shifted])
        r = np.array([row[f"{name} resnet"] for row in rows])
        out["auc"][name] = roc_auc(y, shifted)
        out["auc_resnet"][name] = roc_auc(y, 1 / (1 + np.exp(-r)))
        out[name] = {"median_abs_delta_p": float(np.median(np.abs(shifted - clean))),
                     "mean_delta_p": float(np.mean(shifted - clean)),
                     "flips": int(((clean >= threshold) != (shifted >= threshold)).sum()),
                     "flips_to_malignant": int(((clean < threshold) & (shifted >= threshold)).sum()),
                     "median_abs_delta_served": float(np.median(np.abs(d - clean_d)) / clean_d.std()),
                     "median_abs_delta_resnet": float(np.median(np.abs(r - clean_r)) / clean_r.std()),
                     "mean_delta_served": float(np.mean(d - clean_d) / clean_d.std()),
                     "mean_delta_resnet": float(np.mean(r - clean_r) / clean_r.std())}
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(SHIFTS)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    at = np.arange(len(names))
    for offset, part, label in ((-0.2, "resnet", "ResNet18 part alone"), (0.2, "served", "served (+ SAM probe)")):
        left.bar(at + offset, [summary[n][f"median_abs_delta_{part}"] for n in names], 0.4, label=label)
        left.scatter(at + offset, [summary[n][f"mean_delta_{part}"] for n in names], color="black", s=12, zorder=3)
    left.axhline(0, color="gray", lw=0.8)
    left.set_ylabel("Δ logit difference vs clean, in clean spreads\n(bars: median |Δ|; dots: mean Δ, < 0 = to benign)",
                    fontsize=8)
    left.legend(fontsize=8)
    right.plot(at, [summary["auc_resnet"][n] for n in names], "o-", label="ResNet18 part alone")
    right.plot(at, [summary["auc"][n] for n in names], "s-", label="served")
    right.axhline(summary["auc"]["clean"], color="gray", ls=":", lw=0.8, label="served, clean")
    right.set_ylabel("in-sample AUC (trained on these lesions)")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xticks(at, names, rotation=25, fontsize=8)
    fig.suptitle(f"Scanner and setting shifts: {summary['lesions']} BUSI lesions through the served engine", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
