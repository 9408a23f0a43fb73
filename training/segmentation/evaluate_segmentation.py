"""`evaluate-segmentation`: a SAM-family model, zero-shot, on the lesions of a BUSI-layout folder, or the
served automatic lesion finder on any dataset folder (`--prompt auto`).

Every benign and malignant image with a mask is segmented (normal images and images without a mask
are skipped); the truth is the union of the image's masks (`NAME_mask.png`, `NAME_mask_1.png`, ...).
The prompt is derived from that truth, so this measures SAM given a perfect prompt:
- `box`: the true mask's bounding box;
- `point`: one positive point at the mask's most interior pixel (maximum of the distance transform;
  with two lesions in one image it lies in the larger one);
- `sam-amg`: no prompt: SAM's automatic mask generator (the paper's) and the server's lesion pick;
- `auto`: no prompt, as the server answers `{}`: the served localiser (models.localiser, `--weights`)
  on every image of a dataset folder of any layout `prepare` reads, normal images included, reported
  per site: Dice (a missed lesion 0), detection (IoU >= 0.5), false positives on normal images,
  seconds per image (training.segmentation.localiser.evaluate_served; `--sam` is the localiser's).
The image is encoded once per image. "No lesion found" counts as Dice 0 and is noted per image.

`--limit N` evaluates the first N readable lesion images in a fixed order that alternates benign and
malignant, each class sorted by name with numbers in numeric order (benign (1), malignant (1), benign (2), ...).

Writes OUT/report.json, OUT/per_image.csv, OUT/dice.png and prints a summary.
Exit status 2: unknown SAM name, missing or wrong checkpoint, missing data folder, no BUSI layout.
A corrupt image or mask is skipped with a warning naming the file.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import re
import sys
import time
import warnings
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any, Iterator

import numpy as np

PROMPTS = ("box", "point", "sam-amg", "auto")
CLASSES = ("benign", "malignant")
SAM_NAMES = "litemedsam, mobilesam, vit_b, vit_l, vit_h"  # models.sam.SAM_MODELS, spelled out for --help


class SegEvalError(RuntimeError):
    """Bad input: printed as one error line, exit 2."""


class SkipImage(ValueError):
    """An image or mask that cannot be used: warned about, then skipped."""


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sam", help=f"SAM model: {SAM_NAMES} (not with --prompt auto: the localiser's)")
    p.add_argument("--prompt", required=True, choices=PROMPTS,
                   help="box: true bounding box; point: one point inside the true mask; sam-amg: SAM's automatic "
                        "mask generator; auto: the served lesion localiser, as the server answers {}")
    p.add_argument("--data", type=Path, required=True,
                   help="folder holding a BUSI-layout dataset ({benign,malignant}/NAME.png + NAME_mask*.png); with "
                        "--prompt auto any dataset folder (several sites: reported per site)")
    p.add_argument("--weights", type=Path, default=Path("models/weights"), help="--prompt auto: the served weights")
    p.add_argument("--modality", choices=("us", "dm"), default="us", help="--prompt auto: whose localiser")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--limit", type=_positive, help="evaluate only the first N lesion images (classes alternating); "
                   "--prompt auto: the first N images of each label (benign, malignant, normal) per site")
    p.add_argument("--threads", type=_positive, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--points-per-side", type=_positive, default=32,
                   help="automatic mask generator grid, --prompt auto only (default 32)")
    p.add_argument("--checkpoint", type=Path,
                   help="SAM checkpoint (default: the one that ships with the model; vit_* need one)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the Dice 95%% CI")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def _log(msg: str) -> None:
    # stdout carries the summary; progress and warnings go to stderr.
    print(msg, file=sys.stderr)


@dataclass
class Candidate:
    image: Path
    masks: list[Path]
    label: str


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def find_lesion_images(data: Path, warn=_log) -> list[Candidate]:
    """Benign/malignant images with their mask files, alternating classes, each sorted by name."""
    from training.datasets import busi, discover, known_layouts

    data = Path(data)
    if not data.is_dir():
        raise SegEvalError(f"data folder not found: {data}")
    roots = busi.find(data)
    if not roots:
        others = sorted({adapter.NAME for adapter, _ in discover(data)})
        if others:
            raise SegEvalError(f"no BUSI-layout dataset (benign/, malignant/ with NAME_mask.png files) under {data}; "
                               f"it holds {', '.join(others)}, and this command reads BUSI's layout only")
        raise SegEvalError(f"no dataset in a known layout under {data} (known: {known_layouts()}); "
                           f"segmentation needs BUSI's layout with NAME_mask.png files")
    by_class: dict[str, list[Candidate]] = {c: [] for c in CLASSES}
    for root in roots:
        for label in CLASSES:
            folder = root / label
            if not folder.is_dir():
                continue
            # The adapter's own pairing of an image with its mask files (`NAME_mask.png`, `NAME_mask_1.png`).
            for image, masks in busi._images_and_masks(folder).items():
                if not masks:
                    warn(f"warning: {image}: no mask file ({image.stem}_mask.png); skipped")
                    continue
                by_class[label].append(Candidate(image, sorted(masks), label))
    for cands in by_class.values():
        cands.sort(key=lambda c: (str(c.image.parent), _natural_key(c.image)))
    return [c for pair in zip_longest(*by_class.values()) for c in pair if c is not None]


def load_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8, as the server decodes an upload (16-bit rescaled, transparency on black)."""
    from PIL import Image

    from models.preprocessing import to_gray

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return np.repeat(to_gray(image)[..., None], 3, axis=2)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
            return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # Pillow's ways of saying corrupt/truncated
        raise SkipImage(f"{path}: unreadable image ({e}); skipped") from e


def load_truth(cand: Candidate, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    union = np.zeros(shape, bool)
    for mp in cand.masks:
        try:
            with Image.open(mp) as m:
                mask = np.asarray(m.convert("L")) > 0
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise SkipImage(f"{mp}: unreadable mask ({e}); image {cand.image.name} skipped") from e
        if mask.shape != shape:
            raise SkipImage(f"{mp}: mask is {mask.shape[1]}x{mask.shape[0]} but image is "
                            f"{shape[1]}x{shape[0]}; image skipped")
        union |= mask
    if not union.any():
        raise SkipImage(f"{cand.image}: {cand.label} image with an empty mask; skipped")
    return union


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel farthest from the mask's outline (first one in row order on ties)."""
    from scipy.ndimage import distance_transform_edt

    # Padding makes the image border count as outside: a mask cut by the border is not "deep" there.
    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def dice_iou(pred: np.ndarray | None, truth: np.ndarray) -> tuple[float, float]:
    if pred is None:
        return 0.0, 0.0
    inter = float(np.logical_and(pred, truth).sum())
    total = float(pred.sum() + truth.sum())
    union = total - inter
    return (2.0 * inter / total if total else 0.0), (inter / union if union else 0.0)


def bootstrap_mean_ci(values: list[float], n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap of the mean over images."""
    v = np.asarray(values, dtype=float)
    if n_boot <= 0 or v.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = np.concatenate([v[rng.integers(0, v.size, size=(min(250, n_boot - s), v.size))].mean(axis=1)
                            for s in range(0, n_boot, 250)])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def _summary_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    d = [r["dice"] for r in rows]
    i = [r["iou"] for r in rows]
    return {"n": len(rows),
            "dice_mean": float(np.mean(d)) if d else None,
            "dice_median": float(np.median(d)) if d else None,
            "iou_mean": float(np.mean(i)) if i else None}


def _segment(segmenter, rgb: np.ndarray, truth: np.ndarray, prompt: str):
    """(Segmentation | None, prompt as written to the CSV, error text)."""
    from models.preprocessing import box_of_mask
    from models.segmentation import NoLesionFound, Prompt, PromptError

    if prompt == "box":
        given: Any = list(box_of_mask(truth))
        ask = Prompt(box=given)
    elif prompt == "point":
        x, y = interior_point(truth)
        given = [x, y, 1]
        ask = Prompt(points=[given])
    else:
        given, ask = None, None
    try:
        if ask is None:
            return segmenter.automatic(rgb), given, ""
        return segmenter.predict(segmenter.encode(rgb), ask), given, ""
    except NoLesionFound as e:
        return None, given, f"NoLesionFound: {e}"
    except PromptError as e:  # a prompt built from the truth should always fit: counted, never hidden
        return None, given, f"PromptError: {e}"


def _iter_evaluated(cands: list[Candidate], limit: int | None, warn) -> Iterator[tuple[Candidate, np.ndarray, np.ndarray]]:
    taken = 0
    for cand in cands:
        if limit is not None and taken >= limit:
            return
        try:
            rgb = load_rgb(cand.image)
            truth = load_truth(cand, rgb.shape[:2])
        except SkipImage as e:
            warn(f"warning: {e}")
            continue
        taken += 1
        yield cand, rgb, truth


def evaluate_segmentation(sam: str, prompt: str, data: Path, out: Path, limit: int | None = None,
                          checkpoint: Path | None = None, points_per_side: int = 32, n_boot: int = 1000,
                          seed: int = 0, threads: int = 1) -> dict[str, Any]:
    from tqdm import tqdm

    from models.manifest import WeightsError
    from models.sam import SAM_MODELS, load_sam
    from models.segmentation import SamSegmenter
    from training.common.plots import plot_dice_histogram

    if prompt not in PROMPTS:
        raise SegEvalError(f"unknown prompt {prompt!r}; known: {', '.join(PROMPTS)}")
    if sam not in SAM_MODELS:  # checked before the data are read
        raise SegEvalError(f"unknown SAM model {sam!r}; known: {', '.join(SAM_MODELS)}")
    skipped: list[str] = []

    def warn(msg: str) -> None:
        skipped.append(msg.removeprefix("warning: "))
        tqdm.write(msg, file=sys.stderr)

    cands = find_lesion_images(Path(data), warn)
    if not cands:
        raise SegEvalError(f"no benign or malignant image with a mask under {data}")
    try:
        with warnings.catch_warnings():  # LiteMedSAM's vendored TinyViT imports timm through deprecated paths
            warnings.simplefilter("ignore", FutureWarning)
            loaded = load_sam(sam, checkpoint)
    except WeightsError as e:
        raise SegEvalError(str(e)) from e
    segmenter = SamSegmenter(loaded, amg={"points_per_side": points_per_side})
    total = min(limit, len(cands)) if limit else len(cands)
    _log(f"{sam} ({prompt} prompt) on {total} of {len(cands)} lesion images from {data}, {threads} thread(s)")

    rows: list[dict[str, Any]] = []
    bar = tqdm(_iter_evaluated(cands, limit, warn), total=total, desc=f"{sam} {prompt}", file=sys.stderr,
               mininterval=2.0, dynamic_ncols=True)
    for cand, rgb, truth in bar:
        start = time.perf_counter()
        seg, given, error = _segment(segmenter, rgb, truth, prompt)
        seconds = time.perf_counter() - start
        dice, iou = dice_iou(None if seg is None else seg.mask, truth)
        rows.append({"image_path": str(cand.image.resolve()), "label": cand.label, "dice": dice, "iou": iou,
                     "sam_score": None if seg is None else seg.score, "seconds": seconds,
                     "prompt": "" if given is None else json.dumps(given), "error": error})
        bar.set_postfix(dice=f"{np.mean([r['dice'] for r in rows]):.3f}", refresh=False)
    bar.close()
    if not rows:
        raise SegEvalError(f"no readable lesion image under {data} ({len(skipped)} skipped, see the warnings)")

    stats = _summary_stats(rows)
    rep: dict[str, Any] = {
        "sam": sam,
        "sam_sha256": loaded.sha256,
        "sam_checkpoint": str(loaded.checkpoint.resolve()),
        "prompt": prompt,
        **stats,
        "dice_ci": bootstrap_mean_ci([r["dice"] for r in rows], n_boot, seed),
        "iou_median": float(np.median([r["iou"] for r in rows])),
        "per_class": {c: _summary_stats([r for r in rows if r["label"] == c]) for c in CLASSES},
        "failures": sum(r["error"].startswith("NoLesionFound") for r in rows),
        "prompt_errors": sum(r["error"].startswith("PromptError") for r in rows),
        "seconds_per_image": float(np.mean([r["seconds"] for r in rows])),
        "threads": threads,
        "points_per_side": points_per_side if prompt == "sam-amg" else None,
        "limit": limit,
        "n_boot": n_boot,
        "seed": seed,
        "data": str(Path(data).resolve()),
        "skipped": skipped,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "per_image.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "dice": repr(r["dice"]), "iou": repr(r["iou"]),
                     "sam_score": "" if r["sam_score"] is None else repr(r["sam_score"]),
                     "seconds": f"{r['seconds']:.3f}"} for r in rows)
    plot_dice_histogram({c: [r["dice"] for r in rows if r["label"] == c] for c in CLASSES}, out / "dice.png",
                        f"{sam}, {prompt} prompt, on {Path(data).name} (n={len(rows)})")
    (out / "report.json").write_text(json.dumps(rep, indent=2, allow_nan=False) + "\n")
    return rep


def summary_text(rep: dict[str, Any]) -> str:
    ci = rep["dice_ci"]
    ci_txt = f" (95% CI {ci[0]:.3f} to {ci[1]:.3f})" if ci else ""
    classes = "; ".join(f"{c} {v['dice_mean']:.3f} (n={v['n']})" for c, v in rep["per_class"].items() if v["n"])
    lines = [
        f"{rep['sam']}, {rep['prompt']} prompt, on {rep['n']} lesion images",
        f"Dice mean {rep['dice_mean']:.3f}{ci_txt}, median {rep['dice_median']:.3f}; IoU mean {rep['iou_mean']:.3f}",
        f"Dice by class: {classes}",
        f"no lesion found: {rep['failures']}; skipped files: {len(rep['skipped'])}; "
        f"{rep['seconds_per_image']:.2f} s/image on {rep['threads']} CPU thread(s)",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    if args.prompt == "auto":
        return run_auto(args)
    if not args.sam:
        print("error: --sam is required with --prompt box, point or sam-amg", file=sys.stderr)
        return 2
    try:
        rep = evaluate_segmentation(args.sam, args.prompt, args.data, args.out, args.limit, args.checkpoint,
                                    args.points_per_side, args.n_boot, args.seed, args.threads)
    except SegEvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_text(rep))
    print(f"wrote {args.out / 'report.json'}, per_image.csv, dice.png")
    return 0


def run_auto(args: argparse.Namespace) -> int:
    from models.files import WeightsError
    from training.segmentation.localiser import evaluate_served, served_markdown
    if args.sam:
        print("error: --prompt auto uses the served localiser's SAM: leave --sam out", file=sys.stderr)
        return 2
    try:
        report = evaluate_served(args.data, args.out, args.modality, args.weights, args.limit, sys.stderr.isatty())
    except (ValueError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (args.out / "report.md").write_text(served_markdown(report))
    print(served_markdown(report))
    print(f"wrote {args.out / 'report.json'}, report.md, per_image.csv, dice.png, scores.png")
    return 0
