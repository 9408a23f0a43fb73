"""`train-localiser`: the automatic lesion finder (models.localiser) on the box route's SAM embeddings.

In: a prepared folder (`prepare`): every image of one modality with its experts' masks (US: BUSI with
its normal images, BUS-BRA) or lesion circles (DM: mini-MIAS). Each image goes through LiteMedSAM's
image encoder once (cached, training.rois.sam_embeddings); the target is the share of each 16-pixel
cell of SAM's 64 x 64 grid that the experts' masks cover.

Out (OUT/): `localiser.safetensors` (fp16) and `entry.json` (the manifest's LocaliserEntry fields, for
`export --localiser`), report.json / report.md, and PNG plots (Dice per image, scores on lesion vs
normal images, training loss).

Protocol, nothing tuned on a test fold:
- `cv`: group-aware 5-fold CV on `--cv-source` (BUSI: lesion and normal images, patients and near
  duplicates never straddle folds). Each fold trains on its other folds plus every `--cv-extra` image
  (default: the other sites, as the served fit; test folds stay BUSI only). Each fold's "lesion found"
  threshold is fitted on the other folds' out-of-fold scores (cross-fitted), by the served rule: the
  largest threshold that still finds `--find-rate` of the lesion images.
- `held out SITE`: fitted on `--cv-source` alone, scored on SITE (BUS-BRA), which it never saw: the
  estimate for a hospital the project never sees. Its threshold is the CV's (all out-of-fold scores),
  or, where the CV's folds train on SITE too (`--cv-extra`), a second CV's on `--cv-source` alone.
- `served`: fitted on every `--sources` site, threshold from the CV's pooled out-of-fold scores.
Training (`Recipe`): the recipe is the same for every fit; `--flip` mirrors half of each batch.
Per image: the best candidate's box goes to LiteMedSAM as a drawn box would; Dice and IoU of that
outline against the experts' mask (a lesion not found scores 0), detected = IoU >= 0.5, "found" on a
normal image is a false positive; the drawn-box Dice (the experts' box) is the ceiling beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.localiser import DILATIONS, GRID, RANK_BY, WIDTH, Localiser, LocaliserNet, upsampled, valid_cells
from training.datasets.roi_table import RoiRecord

SAM = "litemedsam"  # the box route's SAM for both modalities (server.settings DEFAULT_ROUTE, manifest input.sam)
FIND_RATE = 0.97  # the served threshold still finds this share of the training sites' lesion images


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rois", type=Path, required=True, help="prepared folder (rois.csv) or a dataset folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--modality", choices=("us", "dm"), default="us")
    p.add_argument("--sources", nargs="+", help="sites the served localiser is fitted on (default: all of the modality)")
    p.add_argument("--cv-source", help="the site cross-validated and held-out runs train on (default: the first site)")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--width", type=int, default=WIDTH, help="the head's channels (the served net: models.localiser.WIDTH)")
    p.add_argument("--dilations", type=int, nargs="+", default=list(DILATIONS), help="one dilated 3x3 conv each")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="mirror half of each batch left-right (embedding and target, within the image's columns)")
    p.add_argument("--cv-extra", nargs="*", default=None,
                   help="sites added to every CV fold's training images, never to a test fold (default: the other "
                        "--sources, as the served fit has them; none given: --cv-source alone). The held-out "
                        "row's fit stays on --cv-source alone")
    p.add_argument("--rank-by", choices=("peak", "mass"), default=RANK_BY,
                   help="candidate order: the region's highest probability or its summed probability")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--find-rate", type=float, default=FIND_RATE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="12 images per site and label, 2 folds, 2 epochs (tests)")


@dataclass
class LesionImage:
    """One image with every lesion the experts marked on it (none: a normal image)."""

    path: str
    source: str
    group: str
    label: str  # normal, benign or malignant (the worst of its lesions)
    lesions: list[RoiRecord]

    @property
    def normal(self) -> bool:
        return not self.lesions


def lesion_images(records: list[RoiRecord], modality: str) -> list[LesionImage]:
    """The records of `modality` joined by image, in table order."""
    images: dict[str, LesionImage] = {}
    for r in records:
        if r.modality != modality:
            continue
        image = images.setdefault(r.image_path, LesionImage(r.image_path, r.source, r.group, "normal", []))
        if r.label != "normal" and r.box is not None:
            image.lesions.append(r)
            if image.label != "malignant":
                image.label = r.label
    return list(images.values())


def truth_mask(image: LesionImage, shape: tuple[int, int]) -> np.ndarray:
    """The union of the experts' masks; a lesion without a mask file (MIAS: a circle) is the disk in its box."""
    from PIL import Image
    union = np.zeros(shape, bool)
    for r in image.lesions:
        if r.mask_paths:
            for path in r.mask_paths.split(";"):
                with Image.open(path) as m:
                    mask = np.asarray(m.convert("L")) > 0
                if mask.shape != shape:
                    raise ValueError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, image {shape[1]}x{shape[0]}")
                union |= mask
        else:
            x0, y0, x1, y1 = r.box
            yy, xx = np.ogrid[:shape[0], :shape[1]]
            cx, cy, rad = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2
            union |= (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= rad ** 2
    return union


def cell_target(mask: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """(32, 32) share of each head cell the mask covers, in SAM's frame (resized, padded bottom-right)."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    m = F.interpolate(m, size=tuple(input_size), mode="area")
    side = max(input_size)
    m = F.pad(m, (0, side - input_size[1], 0, side - input_size[0]))
    return F.adaptive_avg_pool2d(m, GRID)[0, 0].numpy()


def valid_map(input_size: tuple[int, int], grid: int = GRID) -> np.ndarray:
    rows, cols = valid_cells(input_size, grid)
    valid = np.zeros((grid, grid), bool)
    valid[:rows, :cols] = True
    return valid


@dataclass
class Encoded:
    """The images' SAM embeddings (memory-mapped fp16), grid targets and truth masks' shapes."""

    images: list[LesionImage]
    features: np.ndarray  # (N, 256, 64, 64) float16
    input_size: list[tuple[int, int]]
    original_size: list[tuple[int, int]]
    targets: np.ndarray  # (N, 32, 32) float32
    valid: np.ndarray  # (N, 32, 32) bool


def encode(images: list[LesionImage], progress: bool) -> Encoded:
    """Embeddings per site (cached under the site's image list, as every other step caches them)."""
    from training.rois.sam_embeddings import Embeddings
    features, inputs, originals = [], [], []
    for source in dict.fromkeys(im.source for im in images):
        site = [im for im in images if im.source == source]
        emb = Embeddings([site_record(im) for im in site], SAM, progress)
        features.append(emb.features)
        inputs += emb.input_size
        originals += emb.original_size
    feats = features[0] if len(features) == 1 else np.concatenate(features)
    order = [im for s in dict.fromkeys(im.source for im in images) for im in images if im.source == s]
    targets = np.stack([cell_target(truth_mask(im, originals[k]), inputs[k])
                        for k, im in enumerate(tqdm(order, desc="targets", disable=not progress))])
    valid = np.stack([valid_map(s) for s in inputs])
    return Encoded(order, feats, inputs, originals, targets.astype(np.float32), valid)


def site_record(image: LesionImage) -> RoiRecord:
    """The record an embedding cache is keyed by: the image's first row (its path is the key)."""
    return image.lesions[0] if image.lesions else RoiRecord(image.path, "us", "normal", image.source, image.group)


def pooled(data: Encoded, progress: bool) -> torch.Tensor:
    """Every image's embedding pooled to the head's grid, (N, 256, 32, 32): computed once for all fits."""
    out = []
    for start in tqdm(range(0, len(data.images), 32), desc="pooling", disable=not progress):
        out.append(LocaliserNet.reduce(torch.from_numpy(np.asarray(data.features[start:start + 32], dtype=np.float32))))
    return torch.cat(out)


@dataclass(frozen=True)
class Recipe:
    """How a head is built and trained: the same for every fold, the held-out fit and the served fit."""

    epochs: int = 16
    width: int = WIDTH
    dilations: tuple[int, ...] = DILATIONS
    flip: bool = True

    def net(self) -> LocaliserNet:
        return LocaliserNet(width=self.width, dilations=self.dilations)


def mirror_index(cols: int, grid: int = GRID) -> torch.Tensor:
    """Column order that mirrors the first `cols` columns (the image; SAM pads on the right) in place."""
    order = torch.arange(grid)
    order[:cols] = order[:cols].flip(0)
    return order


def mirrored(x: torch.Tensor, t: torch.Tensor, cols: np.ndarray, rng: np.random.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Half of a batch mirrored left-right: a lesion's look does not depend on its side, and BUSI is small.
    (A mirrored embedding is not exactly the embedding of the mirrored image: an augmentation, no more.)"""
    x, t = x.clone(), t.clone()
    for j in np.flatnonzero(rng.random(len(cols)) < 0.5):
        order = mirror_index(int(cols[j]), x.shape[-1])
        x[j], t[j] = x[j][..., order], t[j][..., order]
    return x, t


def fit(data: Encoded, reduced: torch.Tensor, index: np.ndarray, recipe: Recipe, seed: int, progress: bool,
        desc: str = "fit") -> tuple[LocaliserNet, list[float]]:
    """LocaliserNet on `index`'s images (`reduced`: `pooled(data)`): cell-wise BCE plus soft Dice on lesion
    images, AdamW, one cycle. Returns the net and the loss per epoch."""
    torch.manual_seed(seed)
    net, epochs = recipe.net(), recipe.epochs
    rng = np.random.default_rng(seed)
    cols = np.array([valid_cells(s)[1] for s in data.input_size])
    batch = 16
    steps = epochs * int(np.ceil(len(index) / batch))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    targets, valid = torch.from_numpy(data.targets), torch.from_numpy(data.valid).float()
    losses = []
    net.train()
    for _ in tqdm(range(epochs), desc=desc, disable=not progress):
        total = 0.0
        order = index[rng.permutation(len(index))]
        for start in range(0, len(order), batch):
            at = torch.from_numpy(order[start:start + batch])
            x, t, v = reduced[at], targets[at], valid[at]
            if recipe.flip:
                x, t = mirrored(x, t, cols[at.numpy()], rng)
            logits = net.head(x)[:, 0]
            bce = (F.binary_cross_entropy_with_logits(logits, t, reduction="none") * v).sum() / v.sum()
            p = torch.sigmoid(logits) * v
            has = t.flatten(1).sum(1) > 0
            dice = (2 * (p * t).flatten(1).sum(1) + 1) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1)
            loss = bce + ((1 - dice[has]).mean() if has.any() else 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(at)
        losses.append(total / len(order))
    return net.eval(), losses


def peak_scores(net: LocaliserNet, reduced: torch.Tensor, data: Encoded, index: np.ndarray) -> np.ndarray:
    """Each image's best candidate score as served: the highest upsampled probability inside the image."""
    scores = []
    with torch.no_grad():
        for i in index:
            prob = upsampled(torch.sigmoid(net.head(reduced[i:i + 1])))
            rows, cols = valid_cells(data.input_size[i], prob.shape[0])
            scores.append(float(prob[:rows, :cols].max()))
    return np.array(scores)


def fit_threshold(scores: np.ndarray, lesion: np.ndarray, find_rate: float) -> float:
    """The largest threshold that still finds `find_rate` of the lesion images (their peak >= it)."""
    peaks = np.sort(scores[lesion])
    return float(peaks[int(np.floor((1 - find_rate) * len(peaks)))]) if len(peaks) else 0.5


def dice_iou(pred: np.ndarray | None, truth: np.ndarray) -> tuple[float, float]:
    if pred is None or not truth.any():
        return 0.0, 0.0
    inter = float(np.logical_and(pred, truth).sum())
    total = float(pred.sum() + truth.sum())
    union = float(np.logical_or(pred, truth).sum())
    return 2 * inter / total, inter / union


def score_images(localiser: Localiser, data: Encoded, index: np.ndarray, segmenter, progress: bool,
                 desc: str = "outlines") -> list[dict]:
    """Per image: what the served automatic route answers from its embedding, against the experts."""
    from models.preprocessing import box_of_mask
    from models.segmentation import Embedding, Prompt
    rows = []
    for i in tqdm(index, desc=desc, disable=not progress):
        image = data.images[i]
        features = torch.from_numpy(np.asarray(data.features[i], dtype=np.float32))[None]
        emb = Embedding(segmenter.name, features, tuple(data.original_size[i]), tuple(data.input_size[i]),
                        runtime=segmenter.runtime, precision=segmenter.precision)
        started = time.perf_counter()
        located = localiser.locate(features, emb.input_size, emb.original_size)
        found = located.found
        mask = localiser.outline(found[0], lambda box: segmenter.predict(emb, Prompt(box=box)).mask) \
            if found else None
        seconds = time.perf_counter() - started
        row = {"image": image.path, "site": image.source, "group": image.group, "label": image.label,
               "score": round(located.peak, 4), "found": bool(found), "candidates": len(found),
               "seconds": round(seconds, 4)}
        if not image.normal:
            truth = truth_mask(image, emb.original_size)
            dice, iou = dice_iou(mask, truth)
            drawn = segmenter.predict(emb, Prompt(box=list(box_of_mask(truth)))).mask
            row.update(dice=round(dice, 4), iou=round(iou, 4), detected=iou >= 0.5,
                       drawn_box_dice=round(dice_iou(drawn, truth)[0], 4))
        rows.append(row)
    return rows


def mean_ci(values: np.ndarray, groups: list[str], seed: int = 0, n_boot: int = 1000) -> list[float] | None:
    """95% percentile bootstrap CI of the mean, resampling whole groups (patients, near duplicates)."""
    from training.common.metrics import resample_weights
    if len(values) < 2:
        return None
    w = resample_weights(len(values), n_boot, np.random.default_rng(seed), groups)
    means = (w @ values) / w.sum(1)
    return [round(float(v), 4) for v in np.quantile(means, [0.025, 0.975])]


def summarise(rows: list[dict], threshold: float | list[float]) -> dict:
    """One protocol's figures on one site: Dice, detection, false positives on normal images, time."""
    lesions = [r for r in rows if r["label"] != "normal"]
    normals = [r for r in rows if r["label"] == "normal"]
    out: dict = {"images": len(rows), "lesion_images": len(lesions), "normal_images": len(normals),
                 "threshold": threshold}
    if lesions:
        dice = np.array([r["dice"] for r in lesions])
        out.update(dice=round(float(dice.mean()), 4), dice_ci=mean_ci(dice, [r["group"] for r in lesions]),
                   found=round(float(np.mean([r["found"] for r in lesions])), 4),
                   detected=round(float(np.mean([r["detected"] for r in lesions])), 4),
                   drawn_box_dice=round(float(np.mean([r["drawn_box_dice"] for r in lesions])), 4))
    if normals:
        out["false_positive_rate"] = round(float(np.mean([r["found"] for r in normals])), 4)
    seconds = np.array([r["seconds"] for r in rows])
    out["seconds_p50"], out["seconds_p95"] = (round(float(np.quantile(seconds, q)), 4) for q in (0.5, 0.95))
    return out


def quick_subset(images: list[LesionImage], per: int = 12) -> list[LesionImage]:
    """The first `per` images of each label (benign, malignant, normal) of each site."""
    keep = []
    for site in dict.fromkeys(im.source for im in images):
        for label in ("benign", "malignant", "normal"):
            keep += [im for im in images if im.source == site and im.label == label][:per]
    return [im for im in images if im in keep]


def cross_validate(data: Encoded, reduced: torch.Tensor, index: np.ndarray, folds: int, recipe: Recipe,
                   find_rate: float, seed: int, segmenter, progress: bool, extra: np.ndarray | None = None,
                   rank_by: str = RANK_BY) -> tuple[list[dict], list[float], float, list[list[float]]]:
    """Group-aware CV on `index`: per-image rows scored by each fold's net at its cross-fitted threshold
    (fitted on the other folds' out-of-fold scores), those thresholds, the threshold of all out-of-fold
    scores (for nets fitted on all of `index`), and each fold's loss curve. `extra` (another site's images)
    joins every fold's training images, never a test fold."""
    lesion = np.array([not im.normal for im in data.images])
    splits = folds_over(data, index, folds, seed)
    oof, nets, curves = out_of_fold(data, reduced, index, splits, recipe, seed, progress, extra)
    rows, thresholds = [], []
    for k, (_, test) in enumerate(splits):
        others = np.concatenate([index[t] for j, (_, t) in enumerate(splits) if j != k])
        threshold = fit_threshold(oof[others], lesion[others], find_rate)
        thresholds.append(round(threshold, 4))
        rows += score_images(Localiser(nets[k], SAM, threshold, rank_by=rank_by), data, index[test], segmenter,
                             progress, f"fold {k + 1} outlines")
    return rows, thresholds, fit_threshold(oof[index], lesion[index], find_rate), curves


def folds_over(data: Encoded, index: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group-aware folds of `index`'s images (positions into `index`)."""
    from training.rois.splits import folds_of
    return folds_of([site_record(data.images[i]) for i in index], folds, seed)


def out_of_fold(data: Encoded, reduced: torch.Tensor, index: np.ndarray, splits: list, recipe: Recipe, seed: int,
                progress: bool, extra: np.ndarray | None = None, desc: str = "fold"
                ) -> tuple[np.ndarray, list[LocaliserNet], list[list[float]]]:
    """Each fold's net (fitted on the other folds plus `extra`), its loss curve, and every image of `index`
    scored by the net of its own fold (a vector over all images, zero elsewhere)."""
    extra = np.array([], int) if extra is None else extra
    oof = np.zeros(len(data.images))
    nets, curves = [], []
    for k, (train, test) in enumerate(splits):
        net, losses = fit(data, reduced, np.concatenate([index[train], extra]), recipe, seed + k, progress,
                          f"{desc} {k + 1}/{len(splits)}")
        oof[index[test]] = peak_scores(net, reduced, data, index[test])
        nets.append(net)
        curves.append(losses)
    return oof, nets, curves


def held_out_threshold(data: Encoded, reduced: torch.Tensor, index: np.ndarray, folds: int, recipe: Recipe,
                       find_rate: float, seed: int, progress: bool) -> float:
    """The threshold for a fit on `index` alone scored on another site: from the out-of-fold scores of
    folds that train on `index` alone too (the CV's folds may train on that other site: its threshold
    would then come from nets that saw the held-out images)."""
    lesion = np.array([not im.normal for im in data.images])
    oof, _, _ = out_of_fold(data, reduced, index, folds_over(data, index, folds, seed), recipe, seed, progress,
                            desc="alone, fold")
    return fit_threshold(oof[index], lesion[index], find_rate)


def run(args: argparse.Namespace) -> int:
    from models.manifest import save_classifier
    from models.sam import load_sam
    from models.segmentation import SamSegmenter
    from training.common.provenance import git_commit
    from training.rois.prepare import prepared
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = sys.stderr.isatty()
    started = time.perf_counter()
    images = lesion_images(prepared(args.rois), args.modality)
    sites = list(dict.fromkeys(im.source for im in images))
    sources = args.sources or sites
    cv_source = args.cv_source or ("busi" if "busi" in sources else sources[0])
    missing = [s for s in [*sources, cv_source] if s not in sites]
    if missing:
        print(f"error: {args.rois} has no {args.modality} images of {', '.join(missing)} "
              f"(it has: {', '.join(sites) or 'none'})", file=sys.stderr)
        return 2
    images = [im for im in images if im.source in sources]
    if args.quick:
        images = quick_subset(images)
    folds, epochs = (2, 2) if args.quick else (args.folds, args.epochs)
    recipe = Recipe(epochs, args.width, tuple(args.dilations), args.flip)
    data = encode(images, progress)
    site = np.array([im.source for im in data.images])
    segmenter = SamSegmenter(load_sam(SAM))
    cv = np.flatnonzero(site == cv_source)
    if args.cv_extra is None:  # the CV folds train on what the served fit trains on, less the test fold
        args.cv_extra = [s for s in sources if s != cv_source]
    extra = np.flatnonzero(np.isin(site, [s for s in args.cv_extra if s != cv_source]))

    reduced = pooled(data, progress)
    rows, thresholds, cv_threshold, curves = cross_validate(data, reduced, cv, folds, recipe, args.find_rate,
                                                            args.seed, segmenter, progress, extra, args.rank_by)
    for r in rows:
        r["protocol"] = "cv"
    report: dict = {"modality": args.modality, "sam": SAM, "cv_source": cv_source, "sources": sources,
                    "find_rate": args.find_rate, "epochs": epochs, "folds": folds, "recipe": recipe_of(recipe, args),
                    "cv": {cv_source: summarise(rows, thresholds)}, "held_out": {}}
    held = [s for s in sources if s != cv_source]
    if held:
        threshold = held_out_threshold(data, reduced, cv, folds, recipe, args.find_rate, args.seed, progress) \
            if len(extra) else cv_threshold
        report["held_out_threshold_from"] = f"out-of-fold scores of a {cv_source}-only CV" if len(extra) else \
            f"out-of-fold scores of the {cv_source} CV"
        net, _ = fit(data, reduced, cv, recipe, args.seed, progress, f"{cv_source} only")
        for s in held:
            scored = score_images(Localiser(net, SAM, threshold, rank_by=args.rank_by), data, np.flatnonzero(site == s),
                                  segmenter, progress, f"{s} held out")
            for r in scored:
                r["protocol"] = f"trained on {cv_source}"
            report["held_out"][s] = summarise(scored, round(threshold, 4))
            rows += scored
    served, losses = fit(data, reduced, np.arange(len(data.images)), recipe, args.seed, progress, "served")
    curves.append(losses)

    args.out.mkdir(parents=True, exist_ok=True)
    name = f"localiser-{args.modality}"
    sha = save_classifier(served, args.out / f"{name}.safetensors")
    report["seconds"] = round(time.perf_counter() - started, 1)
    entry = {"name": name, "file": f"{name}.safetensors", "sha256": sha, "modality": args.modality, "sam": SAM,
             "threshold": round(cv_threshold, 4),
             "training": {**recipe_of(recipe, args), "seed": args.seed, "find_rate": args.find_rate, "cv_source": cv_source,
                          "threshold_from": f"out-of-fold scores of the {cv_source} CV", "seconds": report["seconds"]},
             "data": {s: int((site == s).sum()) for s in sources},
             "metrics": {"cv": report["cv"], "held_out": report["held_out"]},
             "git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (args.out / "entry.json").write_text(json.dumps(entry, indent=2) + "\n")
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    write_rows(rows, args.out / "per_image.csv")
    plots(rows, curves, cv_threshold, args.out)
    print(markdown(report))
    return 0


def recipe_of(recipe: Recipe, args: argparse.Namespace) -> dict:
    """The recipe as the entry and report record it; the server builds and ranks by the entry's width,
    dilations and rank_by (models.manifest.load_localiser)."""
    return {"epochs": recipe.epochs, "width": recipe.width, "dilations": list(recipe.dilations), "flip": recipe.flip,
            "cv_extra": list(args.cv_extra), "rank_by": args.rank_by}


def write_rows(rows: list[dict], path: Path) -> None:
    import csv
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


HEADER = ["| {first} | lesion images | Dice [95% CI] | detected (IoU>=0.5) | found | drawn-box Dice | "
          "false positives on normal images | locate + outline s (p50 / p95) |", "|---|---|---|---|---|---|---|---|"]


def table_row(name: str, m: dict) -> str:
    ci = m.get("dice_ci") or ["-", "-"]
    fp = m.get("false_positive_rate")
    return (f"| {name} | {m['lesion_images']} | {m.get('dice', '-')} [{ci[0]}, {ci[1]}] | {m.get('detected', '-')} "
            f"| {m.get('found', '-')} | {m.get('drawn_box_dice', '-')} | "
            f"{'-' if fp is None else f'{fp} of ' + str(m['normal_images'])} | {m['seconds_p50']} / {m['seconds_p95']} |")


def markdown(report: dict) -> str:
    out = [f"# Automatic lesion finding ({report['modality'].upper()}): LocaliserNet on {report['sam']}'s embedding",
           "", HEADER[0].format(first="protocol"), HEADER[1]]
    out += [table_row(f"{s}, {report['folds']}-fold CV", m) for s, m in report["cv"].items()]
    out += [table_row(f"{s}, trained on {report['cv_source']} only", m) for s, m in report["held_out"].items()]
    out += ["", f"A missed lesion scores Dice 0. Threshold: the largest that still finds {report['find_rate']:.0%} "
            "of the training images' lesions on out-of-fold scores (per CV fold: the other folds'); "
            f"{report['epochs']} epochs; {report['seconds']} s in all. The time column is the localiser and "
            "LiteMedSAM's decoder on a cached embedding (the encoder's cost comes on top, bench/auto.py)."]
    if report["held_out"]:
        out[-1] += f" The held-out rows' threshold: {report['held_out_threshold_from']}."
    return "\n".join(out) + "\n"


def plots(rows: list[dict], curves: list[list[float]], threshold: float, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from training.common.plots import plot_dice_histogram
    protocols = list(dict.fromkeys(f"{r['site']} ({r['protocol']})" for r in rows))
    plot_dice_histogram({p: [r["dice"] for r in rows if f"{r['site']} ({r['protocol']})" == p and "dice" in r]
                         for p in protocols}, out / "dice.png", "Automatic outline vs experts (missed = 0)")
    fig = Figure(figsize=(9, 3.6))
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    edges = np.linspace(0, 1, 26)
    for k, p in enumerate(protocols):
        for label, style in (("lesion", "-"), ("normal", ":")):
            v = [r["score"] for r in rows if f"{r['site']} ({r['protocol']})" == p
                 and (r["label"] == "normal") == (label == "normal")]
            if v:
                ax.hist(v, bins=edges, histtype="step", ls=style, color=f"C{k}", label=f"{p}, {label} (n={len(v)})")
    ax.axvline(threshold, color="k", lw=1)
    ax.set(xlabel="best candidate's score", ylabel="images", title="Scores; line: served threshold")
    ax.legend(fontsize=6)
    for k, c in enumerate(curves):
        bx.plot(range(1, len(c) + 1), c, label="served" if k == len(curves) - 1 else f"fold {k + 1}")
    bx.set(xlabel="epoch", ylabel="loss", title="Training loss")
    bx.legend(fontsize=6)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(out / "scores.png", dpi=120)


def evaluate_served(data_dir: Path, out: Path, modality: str, weights: Path, limit: int | None,
                    progress: bool) -> dict:
    """`evaluate-segmentation --prompt auto`: the served localiser of `modality` on every image of a
    dataset folder (any layout `prepare` reads, one or several sites), per site: Dice (missed = 0),
    detection, false positives on normal images, seconds per image, and the drawn-box Dice beside."""
    from models.manifest import load_localiser, read_manifest
    from models.sam import load_sam
    from models.segmentation import SamSegmenter
    from training.rois.prepare import prepared
    role = f"localiser-{modality}"
    entries = read_manifest(weights).localisers
    if role not in entries:
        raise ValueError(f"{weights} serves no {role} (it has: {', '.join(entries) or 'none'})")
    localiser = load_localiser(entries[role], weights)
    images = lesion_images(prepared(data_dir, log=lambda *_: None), modality)
    if limit:
        images = quick_subset(images, limit)
    if not images:
        raise ValueError(f"no {modality} image under {data_dir}")
    encoded = encode(images, progress)
    segmenter = SamSegmenter(load_sam(localiser.sam))
    rows = score_images(localiser, encoded, np.arange(len(encoded.images)), segmenter, progress)
    for r in rows:
        r["protocol"] = "served"
    report = {"prompt": "auto", "localiser": entries[role].name, "localiser_sha256": entries[role].sha256,
              "data": str(Path(data_dir).resolve()), "threshold": localiser.threshold,
              "training_sites": sorted(entries[role].data),
              "per_site": {s: summarise([r for r in rows if r["site"] == s], localiser.threshold)
                           for s in dict.fromkeys(r["site"] for r in rows)}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_rows(rows, out / "per_image.csv")
    plots(rows, [], localiser.threshold, out)
    return report


def served_markdown(report: dict) -> str:
    lines = [f"{report['localiser']} (threshold {report['threshold']:.3f}) on {report['data']}; "
             f"trained on {', '.join(report['training_sites'])}", "", HEADER[0].format(first="site"), HEADER[1]]
    lines += [table_row(site, m) for site, m in report["per_site"].items()]
    return "\n".join(lines) + "\n"
