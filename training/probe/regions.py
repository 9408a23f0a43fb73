"""`probe-regions`: which regions and encoder stages the SAM probe should average, over many fold splits.
A study, measured and not served (the served probe's regions and stages are fixed in models.sam_probe).

The probe (models.sam_probe) reads means of LiteMedSAM's image embedding over regions around the lesion.
This measures, for each set of regions, the probe alone over `--splits` group 5-fold splits (seeds 0..N-1,
the folds train-classifier would draw; paired with the first served set, mask + crop, split by split), and fused with RUN... (train-classifier runs on the sam ROI
source) on their own folds, exactly as `sam-probe` fuses them. No region set is chosen on a test fold:
each split's AUC comes from out-of-fold logits, and the sets are fixed here beforehand. The fused AUC
is also given for the lesions whose posterior band stays clear of the image's bottom edge (a shortcut
guard: lesions reaching it are mostly large and malignant). `iou_token` stands for the mask decoder's
IoU token (models.sam_probe.probe_input), measured alone and next to the served regions. The last rows
keep the served regions and vary where in LiteMedSAM's image encoder the means are taken
(`STAGE_SETS`: the image embedding alone, each TinyViT stage before it, all of them).

Writes OUT/regions.json and OUT/regions.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from models.probe_head import ALL_REGIONS, ALL_STAGES, CHANNELS, REGIONS, STAGE_CHANNELS

TOKEN = "iou_token"  # the mask decoder's IoU token, a column block after ALL_REGIONS

# Fixed before measuring: the first served probe, its parts, the posterior band on its own and added
# (served); then the other bands as controls (is it the posterior acoustics, or any tissue around?).
REGION_SETS = (("mask", "crop"), ("mask",), ("posterior",), ("mask", "posterior"), ("mask", "crop", "posterior"),
               ("anterior",), ("lateral",), ("mask", "crop", "anterior"), ("mask", "crop", "lateral"),
               ("mask", "crop", "posterior", "anterior"),
               # added afterwards, once throwaway checks had picked it: the decoder's IoU token for SAM's mask box
               (TOKEN,), ("mask", "crop", "posterior", TOKEN))
# Added afterwards too, once throwaway checks over five splits had picked all stages: the served regions
# read from each stage of the encoder alone, and from all of them (served).
STAGE_SETS = (("neck",), ("layer0",), ("layer1",), ("layer2",), ("layer3",), ALL_STAGES)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+", help="train-classifier output folders on the sam ROI source")
    p.add_argument("--rois", type=Path, required=True, help="the runs' --rois (prepared folder or dataset folder)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--splits", type=int, default=10, help="group 5-fold splits for the probe alone")
    p.add_argument("--limit", type=int, default=None, help="the runs' --limit, if they had one")


def columns(regions: tuple[str, ...]) -> np.ndarray:
    """The feature columns of `regions` in features computed over ALL_REGIONS and the IoU token."""
    blocks = (*ALL_REGIONS, TOKEN)
    return np.concatenate([np.arange(CHANNELS) + CHANNELS * blocks.index(r) for r in regions])


def stage_columns(stages: tuple[str, ...], regions: tuple[str, ...] = REGIONS) -> np.ndarray:
    """The columns of `regions` of each of `stages` in features computed over ALL_STAGES x ALL_REGIONS."""
    starts = np.cumsum([0] + [STAGE_CHANNELS[s] * len(ALL_REGIONS) for s in ALL_STAGES])
    return np.concatenate([starts[ALL_STAGES.index(s)] + np.arange(STAGE_CHANNELS[s]) + STAGE_CHANNELS[s] *
                           ALL_REGIONS.index(r) for s in stages for r in regions])


def measure(runs: list[Path], rois: Path, splits: int, limit: int | None) -> dict:
    from training.classifier.train_classifier import read_oof
    from training.common.metrics import roc_auc
    from training.probe.sam_probe import check_lesions, out_of_fold, probe_features, run_configs
    from training.rois.prepare import prepared
    from training.rois.splits import folds_of, select
    cfg = run_configs(runs)
    records = select(prepared(rois), cfg.modality, limit)
    check_lesions(runs, records)
    y = np.array([r.target for r in records])
    masks = Path(cfg.sam_masks) if cfg.sam_masks else None
    x = probe_features(records, "sam", cfg.sam, cfg.margin, ALL_REGIONS, sam_masks=masks, progress=sys.stderr.isatty(),
                       iou_token=True)
    x_stages = probe_features(records, "sam", cfg.sam, cfg.margin, ALL_REGIONS, sam_masks=masks,
                              progress=sys.stderr.isatty(), stages=ALL_STAGES)
    interior = away_from_bottom(records, cfg)
    split_folds = []
    for seed in range(splits):
        fold = np.zeros(len(y), int)
        for k, (_, test) in enumerate(folds_of(records, cfg.folds, seed)):
            fold[test] = k
        split_folds.append(fold)
    sigmoid = lambda d: 1 / (1 + np.exp(-d.astype(np.float64)))  # noqa: E731
    rows = []
    sets = [(regions, ("neck",), x[:, columns(regions)]) for regions in REGION_SETS]
    sets += [(REGIONS, stages, x_stages[:, stage_columns(stages)]) for stages in STAGE_SETS]
    for regions, stages, xs in sets:
        alone = [roc_auc(y, sigmoid(out_of_fold(xs, y, fold)[0])) for fold in split_folds]
        fused, fused_interior = {}, {}
        for run in runs:
            _, fold, logits = read_oof(run / "cv" / "oof.csv")
            d_r, d_p = logits[:, 1] - logits[:, 0], out_of_fold(xs, y, fold)[0]
            p = sigmoid(d_r + d_r.std() / max(d_p.std(), 1e-6) * d_p)
            fused[str(run)], fused_interior[str(run)] = roc_auc(y, p), roc_auc(y[interior], p[interior])
        first = rows[0]["probe_auc"] if rows else alone
        rows.append({"regions": list(regions), "stages": list(stages), "probe_auc": alone,
                     "probe_auc_mean": float(np.mean(alone)),
                     "splits_above_first_set": int(sum(a > b for a, b in zip(alone, first))),
                     "fused_auc": fused, "fused_auc_mean": float(np.mean(list(fused.values()))),
                     "fused_auc_interior": fused_interior})
        print(f"{' + '.join(regions):24s} {' + '.join(stages):40s} probe alone {np.mean(alone):.3f} "
              f"(min {min(alone):.3f}, max {max(alone):.3f})"
              f"   fused {rows[-1]['fused_auc_mean']:.3f}", flush=True)
    return {"n": len(y), "splits": splits, "runs": [str(r) for r in runs], "sam": cfg.sam, "margin": cfg.margin,
            "interior": {"n": int(interior.sum()), "malignant": float(y[interior].mean()),
                         "malignant_elsewhere": float(y[~interior].mean()), "rule": INTERIOR_RULE},
            "rows": rows}


INTERIOR_RULE = "posterior band ends at least 5% of the image height above its bottom edge"


def away_from_bottom(records, cfg) -> np.ndarray:
    """Lesions whose posterior band stays clear of the image's bottom edge: there the band cannot be
    reading the edge or what scanners print along it (and it does not merely say "a large, deep lesion")."""
    from models.sam_probe import band
    from training.rois.sam_embeddings import Embeddings
    from training.rois.sources import SamViews, lesion_view
    sizes = Embeddings(records, cfg.sam, False).original_size  # cached by probe_features
    sam = SamViews(records, 0, cfg.sam, False, Path(cfg.sam_masks) if cfg.sam_masks else None)
    out = np.zeros(len(records), bool)
    for i, (r, shape) in enumerate(zip(records, sizes)):
        box, mask = lesion_view(r, i, "sam", shape, 0, sam)
        rows = np.nonzero(band(mask, box, "posterior").any(1))[0]
        out[i] = shape[0] - 1 - rows.max() >= 0.05 * shape[0]
    return out


def label(i: int, row: dict) -> str:
    if i < len(REGION_SETS):
        return " +\n".join(row["regions"])
    stages = row["stages"]
    what = ("every stage" if len(stages) == len(ALL_STAGES) else "the embedding" if stages == ["neck"]
            else " +\n".join(stages))
    return "m + c + p\nof " + what


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(16, 4.8))
    for i, row in enumerate(result["rows"]):
        jitter = np.linspace(-0.12, 0.12, len(row["probe_auc"]))
        ax.scatter(i + jitter, row["probe_auc"], s=14, color="tab:blue", label="probe alone, one split" if i == 0 else None)
        ax.scatter([i] * len(row["fused_auc"]), list(row["fused_auc"].values()), marker="D", s=30, color="tab:red",
                   label="ResNet18 + probe, one run's folds" if i == 0 else None)
    ax.set_xticks(range(len(result["rows"])), [label(i, r) for i, r in enumerate(result["rows"])], fontsize=7)
    ax.set_ylabel("pooled out-of-fold ROC-AUC")
    ax.set_title("SAM probe by region of the embedding, the decoder's IoU token, and the encoder stage "
                 f"({result['n']} lesions, {result['splits']} group 5-fold splits)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    try:
        result = measure(args.runs, args.rois, args.splits, args.limit)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "regions.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "regions.png")
    print(f"wrote {args.out / 'regions.json'} and regions.png")
    return 0
