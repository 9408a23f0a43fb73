"""Do burned-in calipers and coloured marks change the served prediction? (issue 9)

Real BUSI lesions on the gray images (the 16 with coloured overlays are left out: they are marked
already), taken in a fixed order alternating benign and malignant. Each goes through the served
pipeline (`server.engine.Engine`: the box route's SAM, then the served US classifier) three times
with the same drawn box (the expert box, each side jittered by up to 5%, as a user draws it):
clean, with white calipers + dotted lines + a measurement label burned in, and with the same marks
in yellow (`training.classifier.marks.burn_measurement`). As a yardstick, each is also run clean with the box
drawn again (another jitter of the same expert box): how much the prediction moves anyway when a
user draws the box twice; and with the box drawn loose (the drawn box widened by 15% of its size on
every side): a user who leaves room around the lesion should get the same answer. Reports how far the
probability moves, how many decisions flip at the served threshold, and the AUC of each variant; writes
JSON and a PNG. The served model was trained on these lesions: the AUCs are not a validation, the
movements are the measurement.

    .venv/bin/python bench/marks.py --n 80 --out bench/results/marks.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.segmentation import Prompt  # noqa: E402
from server.engine import Engine, Timer  # noqa: E402
from server.settings import Settings  # noqa: E402
from training.classifier.marks import WHITE, YELLOW, burn_measurement  # noqa: E402
from training.common.metrics import roc_auc  # noqa: E402
from training.datasets.roi_table import lesions  # noqa: E402
from training.rois.prepare import prepared  # noqa: E402
from training.rois.sources import drawn_box  # noqa: E402

LOOSE = 0.15  # of the box's size, added on every side


def loose_box(record, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = drawn_box(record, shape, 0)
    dx, dy = (x1 - x0) * LOOSE, (y1 - y0) * LOOSE
    return max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(shape[1]), x1 + dx), min(float(shape[0]), y1 + dy)


# name -> (colour of the burned-in marks or None for a clean image, the box drawn for it)
VARIANTS = {"white marks": (WHITE, lambda r, shape: drawn_box(r, shape, 0)),
            "yellow marks": (YELLOW, lambda r, shape: drawn_box(r, shape, 0)),
            "box redrawn": (None, lambda r, shape: drawn_box(r, shape, 1)),
            "box drawn loose": (None, loose_box)}


def gray_lesions(data: Path, n: int):
    records = [r for r in lesions(prepared(data, log=lambda *a: None), "us")
               if Image.open(r.image_path).mode == "L"]
    by_label = {c: [r for r in records if r.label == c] for c in ("benign", "malignant")}
    chosen = [r for pair in zip(by_label["benign"], by_label["malignant"]) for r in pair]
    return chosen[:n]


def predict(engine: Engine, key: str, rgb: np.ndarray, box) -> float:
    seg = engine.segment(key, rgb, "us", Prompt(box=list(box)), Timer())
    return engine.classify(rgb, "us", seg, Timer(), key).p_malignant


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("BRANET_DATA", "../shared/data")))
    p.add_argument("--n", type=int, default=80)
    p.add_argument("--out", type=Path, default=Path("bench/results/marks.json"))
    args = p.parse_args()
    engine = Engine(Settings(create_dev_user=False))
    engine.load()
    threshold = engine.classifiers["us"][1].threshold
    rows = []
    for r in tqdm(gray_lesions(args.data, args.n), desc="lesions"):
        rgb = np.asarray(Image.open(r.image_path).convert("RGB"))
        box = drawn_box(r, rgb.shape[:2], 0)
        row = {"lesion": r.lesion_id, "target": r.target, "clean": predict(engine, f"{r.lesion_id}|clean", rgb, box)}
        for name, (colour, drawn) in VARIANTS.items():
            b = drawn(r, rgb.shape[:2])
            if colour is None:
                row[name] = predict(engine, f"{r.lesion_id}|clean", rgb, b)
            else:  # the marks sit on the box the user then draws
                row[name] = predict(engine, f"{r.lesion_id}|{name}", burn_measurement(rgb, b, colour), b)
        rows.append(row)
    y = np.array([row["target"] for row in rows])
    clean = np.array([row["clean"] for row in rows])
    summary = {"lesions": len(rows), "threshold": threshold, "model": engine.classifiers["us"][1].sha256,
               "auc": {"clean": roc_auc(y, clean)}}
    for name in VARIANTS:
        marked = np.array([row[name] for row in rows])
        delta = marked - clean
        summary["auc"][name] = roc_auc(y, marked)
        summary[name] = {"median_abs_delta": float(np.median(np.abs(delta))), "mean_delta": float(delta.mean()),
                         "max_abs_delta": float(np.abs(delta).max()),
                         "flips": int(((clean >= threshold) != (marked >= threshold)).sum()),
                         "flips_to_malignant": int(((clean < threshold) & (marked >= threshold)).sum())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    plot(rows, threshold, args.out.with_suffix(".png"))
    print(json.dumps(summary, indent=2))
    return 0


def plot(rows: list[dict], threshold: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(VARIANTS), figsize=(4.6 * len(VARIANTS), 4.2))
    y = np.array([r["target"] for r in rows])
    clean = np.array([r["clean"] for r in rows])
    for ax, name in zip(axes, VARIANTS):
        marked = np.array([r[name] for r in rows])
        for label, colour, text in ((0, "tab:blue", "benign"), (1, "tab:red", "malignant")):
            ax.scatter(clean[y == label], marked[y == label], s=14, color=colour, label=text, alpha=0.7)
        ax.plot([0, 1], [0, 1], color="gray", lw=0.8)
        ax.axvline(threshold, color="gray", ls=":", lw=0.8)
        ax.axhline(threshold, color="gray", ls=":", lw=0.8)
        ax.set_xlabel("p(malignant), clean image")
        ax.set_ylabel(f"p(malignant), {name}")
        ax.set_title(f"{name}: {len(rows)} BUSI lesions", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
