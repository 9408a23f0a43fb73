"""Issue 28's "nothing the clinician sees changes" figures: each encoder runtime against PyTorch, on real data.

    .venv/bin/python bench/encoder_equivalence.py [--data ../shared/data] [--runtimes openvino onnxruntime]
                                                  [--analyses 100] [--out bench/results/encoder_equivalence.json]

1. LiteMedSAM box Dice on every BUSI lesion (each expert mask; the box is the mask's): the mean Dice with
   the expert mask from PyTorch's encoder and from each runtime's (target: within 0.002), and the Dice
   between the two masks.
2. p(malignant) of `--analyses` BUSI analyses (benign and malignant interleaved, box prompt): the served
   US classifier + its SAM probe on each encoder's outline and embedding; the largest difference from
   PyTorch's (target: <= 0.01), and the AUC of those analyses under each encoder (the served model was
   trained on these images, so it says what the encoder changes, not how good the model is).
3. The served model's cross-validated AUC under each runtime, bounded: with every p(malignant) moved by at
   most the largest difference of 2., only (malignant, benign) pairs within twice that of each other can swap,
   and their share of the CV's out-of-fold pairs (`--cv`) bounds |delta AUC| (target: 0.003). `--bound-only`
   adds it to a finished OUT.
Every image is encoded by every runtime in the same process, one after the other, so the encode times
(median ms and the ratio to PyTorch) are measured under the same load.
Each image's figures are appended to OUT with `.jsonl` for `.json` as it finishes; a rerun with the same
runtimes, SAM and served classifier goes on after the images already there (a full run takes hours here).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.manifest import load_classifier, load_sam_probe  # noqa: E402
from models.preprocessing import box_of_mask, classifier_input, normalize, to_gray  # noqa: E402
from models.sam import load_sam  # noqa: E402
from models.probe_head import encoder_only, fuse  # noqa: E402
from models.sam_probe import probe_input  # noqa: E402
from models.segmentation import Prompt, SamSegmenter  # noqa: E402
from training.common.metrics import roc_auc  # noqa: E402


def lesions(data: Path) -> dict[Path, list[np.ndarray]]:
    """Every BUSI lesion: image -> its expert masks (one per mask file), benign and malignant."""
    folder = data / "busi" / "Dataset_BUSI_with_GT"
    out: dict[Path, list[np.ndarray]] = defaultdict(list)
    for label in ("benign", "malignant"):
        for mask_path in sorted((folder / label).glob("* (*)_mask*.png")):
            mask = np.asarray(Image.open(mask_path).convert("L")) > 0
            if mask.any():
                out[folder / label / (mask_path.name.split("_mask")[0] + ".png")].append(mask)
    return dict(out)


def interleaved(images: list[Path], n: int) -> list[Path]:
    benign = [p for p in images if p.parent.name == "benign"]
    malignant = [p for p in images if p.parent.name == "malignant"]
    return [p for pair in zip(benign, malignant) for p in pair][:n]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def p_malignant(segmenter, embedding, seg, rgb, model, entry, probe) -> float:
    spec = entry.input
    x = normalize(classifier_input(to_gray(rgb), seg.box, seg.mask if spec.channels == 2 else None,
                                   spec.size, spec.roi_margin, spec.intensity)[None])  # as server/engine.py
    with torch.inference_mode():
        logits = model(x)
        if probe is not None:
            f = probe_input(segmenter, embedding, seg.mask, seg.box, spec.roi_margin, entry.sam_probe.regions,
                            entry.sam_probe.iou_token, entry.sam_probe.stages)
            logits = fuse(logits, probe(f[None]), entry.sam_probe.alpha)
        return float(torch.softmax(logits / entry.temperature, dim=1)[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    p.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime"])
    p.add_argument("--analyses", type=int, default=100)
    p.add_argument("--limit", type=int, default=None, help="only the first N images (a quick look)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "encoder_equivalence.json")
    p.add_argument("--cv", type=Path, default=ROOT / "training" / "results" / "us-two-site" / "fused",
                   help="the served model's cross-validation (oof.csv, report.json) whose AUC is bounded")
    p.add_argument("--bound-only", action="store_true",
                   help="add the CV AUC bound to an existing OUT instead of measuring")
    args = p.parse_args()
    if args.bound_only:
        report = json.loads(args.out.read_text())
        add_cv_bounds(report, args.cv)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({r: v.get("cv_auc_bound") for r, v in report["runtimes"].items()}, indent=2))
        return

    model, entry = load_classifier("classifier-us")
    probe = load_sam_probe(entry)
    sam = load_sam(entry.sam_probe.sam if probe else "litemedsam")
    stages = encoder_only(entry.sam_probe.stages) if probe else ()
    names = ["torch", *args.runtimes]
    segmenters = {r: SamSegmenter(sam, stages=stages, runtime=r) for r in names}
    found = lesions(args.data)
    images = sorted(found)[: args.limit] if args.limit else sorted(found)
    first = interleaved(images, args.analyses)
    analysed = set(first)
    images = first + [p for p in images if p not in analysed]  # the analyses first: a partial run has them
    expert_dice = {r: [] for r in names}
    mask_dice = {r: [] for r in args.runtimes}
    encode_ms = {r: [] for r in names}
    p_mal = {r: [] for r in names}
    malignant: list[int] = []  # the analysed images' labels, for the AUC under each encoder
    rows = args.out.with_suffix(".jsonl")
    done = resumed(rows, {"runtimes": names, "sam": sam.name, "classifier": entry.sha256})
    start = time.perf_counter()
    for i, path in enumerate(images):
        key = str(path.relative_to(args.data))
        row = done.get(key) or measure(path, found[path], path in analysed, names, segmenters, model, entry, probe)
        if key not in done:
            with open(rows, "a") as f:
                f.write(json.dumps({"image": key, **row}) + "\n")
        if row["p_malignant"]:
            malignant.append(int(path.parent.name == "malignant"))
        for r in names:
            encode_ms[r].append(row["encode_ms"][r])
            expert_dice[r] += row["expert_dice"][r]
            if row["p_malignant"]:
                p_mal[r].append(row["p_malignant"][r])
        for r in args.runtimes:
            mask_dice[r] += row["mask_dice"][r]
        if i % 25 == 0 or i == len(images) - 1:
            print(f"{i + 1}/{len(images)} images, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            report = summary(sam.name, i + 1 == len(images), names, args.runtimes, expert_dice, mask_dice, encode_ms,
                             p_mal, malignant, entry.threshold, i + 1)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # so far: a long run can be read as it goes
    if report["complete"]:
        add_cv_bounds(report, args.cv)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def add_cv_bounds(report: dict, cv: Path) -> None:
    """Each runtime's bound on how far the served model's cross-validated AUC can move with that encoder.

    If every p(malignant) moves by at most eps (the largest difference measured over the analyses), a
    (malignant, benign) pair can change order only when its two p lie within 2 eps: the share of such pairs
    in the CV's out-of-fold predictions bounds |delta AUC|. The fold models are assumed to react to the
    encoder as the served model does (they are the same recipe on 4/5 of the lesions)."""
    from training.classifier.train_classifier import read_oof, read_oof_column, softmax_p
    cv_report = json.loads((cv / "report.json").read_text())
    y, _, logits = read_oof(cv / "oof.csv")
    p = softmax_p(logits, cv_report["temperature"])
    sites = np.array(read_oof_column(cv / "oof.csv", "source"))
    for runtime, row in report["runtimes"].items():
        eps = row.get("p_malignant_max_abs_diff")
        if eps is None or not np.isfinite(eps):
            continue
        subsets = {"pooled": np.ones_like(y, bool), **{str(s): sites == s for s in sorted(set(sites))}}
        row["cv_auc_bound"] = {"cv": str(cv.relative_to(ROOT)) if cv.is_relative_to(ROOT) else str(cv), "eps": eps,
                               **{name: near_pairs_share(y[mask], p[mask], eps) for name, mask in subsets.items()}}


def near_pairs_share(y: np.ndarray, p: np.ndarray, eps: float) -> float:
    """The share of (malignant, benign) pairs whose p lie within 2 eps of each other."""
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    near = np.searchsorted(neg, pos + 2 * eps, side="right") - np.searchsorted(neg, pos - 2 * eps, side="left")
    return float(near.sum() / (len(pos) * len(neg)))


def measure(path: Path, experts: list[np.ndarray], analyse: bool, names: list[str], segmenters, model, entry,
            probe) -> dict:
    """One image through every runtime: encode time, box masks from each expert mask's box, p(malignant)."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    row: dict = {"encode_ms": {}, "expert_dice": {}, "mask_dice": {}, "p_malignant": {}}
    masks: dict[str, list[np.ndarray]] = {}
    for r in names:
        t = time.perf_counter()
        embedding = segmenters[r].encode(rgb)
        row["encode_ms"][r] = (time.perf_counter() - t) * 1000
        segs = [segmenters[r].predict(embedding, Prompt(box=list(box_of_mask(m)))) for m in experts]
        masks[r] = [s.mask for s in segs]
        row["expert_dice"][r] = [dice(s.mask, m) for s, m in zip(segs, experts)]
        if analyse:
            row["p_malignant"][r] = p_malignant(segmenters[r], embedding, segs[0], rgb, model, entry, probe)
    row["mask_dice"] = {r: [dice(a, b) for a, b in zip(masks["torch"], masks[r])] for r in names if r != "torch"}
    return row


def resumed(rows: Path, header: dict) -> dict[str, dict]:
    """The images already measured in `rows` under the same header (runtimes, SAM, classifier); a file of
    another setup is started afresh."""
    lines = []
    for text in rows.read_text().splitlines() if rows.is_file() else []:
        try:
            lines.append(json.loads(text))
        except ValueError:  # the line a killed run was writing
            break
    if not lines or lines[0] != header:
        lines = [header]
    rows.parent.mkdir(parents=True, exist_ok=True)
    tmp = rows.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tmp.replace(rows)
    if len(lines) > 1:
        print(f"going on after {len(lines) - 1} images in {rows}", file=sys.stderr)
    return {line.pop("image"): line for line in lines[1:]}


def summary(sam: str, complete: bool, names, runtimes, expert_dice, mask_dice, encode_ms, p_mal, malignant,
            threshold, images: int) -> dict:
    report = {"sam": sam, "complete": complete, "images": images, "lesions": len(expert_dice["torch"]),
              "analyses": len(p_mal["torch"]), "threads": torch.get_num_threads(), "runtimes": {}}
    ref_ms = statistics.median(encode_ms["torch"][1:] or encode_ms["torch"])
    for r in names:
        ms = statistics.median(encode_ms[r][1:] or encode_ms[r])  # the first call compiles
        row = {"encode_ms_median": round(ms, 1), "encode_vs_torch": round(ms / ref_ms, 3),
               "box_dice_mean": round(float(np.mean(expert_dice[r])), 5),
               # the served model on images it was trained on: not a performance figure, the encoder's effect on it
               "analyses_roc_auc": roc_auc(malignant, p_mal[r]) if 0 < sum(malignant) < len(malignant) else None}
        if r != "torch":
            diffs = np.abs(np.array(p_mal[r]) - np.array(p_mal["torch"])) if p_mal[r] else np.full(1, np.nan)
            row |= {"box_dice_minus_torch": round(row["box_dice_mean"] - report["runtimes"]["torch"]["box_dice_mean"], 5),
                    "mask_dice_vs_torch_mean": round(float(np.mean(mask_dice[r])), 6),
                    "mask_dice_vs_torch_min": round(float(np.min(mask_dice[r])), 6),
                    "masks_identical": int(sum(d == 1.0 for d in mask_dice[r])),
                    "p_malignant_max_abs_diff": float(diffs.max()), "p_malignant_mean_abs_diff": float(diffs.mean()),
                    "label_changes": int(sum((a >= threshold) != (b >= threshold)
                                             for a, b in zip(p_mal[r], p_mal["torch"])))}
        report["runtimes"][r] = row
    return report


if __name__ == "__main__":
    main()
