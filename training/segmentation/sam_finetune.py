"""`finetune-sam`: LiteMedSAM's mask decoder fine-tuned on expert lesion masks, cross-fitted. A study, measured
and not served (the served box route is LiteMedSAM as released).

Box-prompted LiteMedSAM reaches Dice 0.91 on BUSI but smooths malignant outlines (RESEARCH.md: the
solidity of its masks separates benign from malignant with AUC 0.75, the expert masks' with 0.98).
This command fine-tunes the prompt-conditioned mask decoder (4M parameters) on the expert masks so
that the served SAM keeps irregular outlines, and measures whether it does, honestly:

- The image encoder stays frozen: each image is encoded once (training.rois.sam_embeddings), and only the
  decoder trains, from the expert box jittered anew at every step (±JITTER of each side).
- Cross-fitted: the folds are the classifier's (`train-classifier` splits, near-duplicate groups kept
  together). Fold k's decoder never saw fold k's masks and outlines fold k's lesions from the fixed
  jittered box the `sam` ROI source uses. Those out-of-fold masks (`OUT/oof_masks.npz`) are what
  `train-classifier --sam-masks` trains and is scored on: every lesion gets the mask a decoder that
  never saw it would draw, as at serving time.
- The final decoder trains on every lesion (`OUT/decoder.safetensors`); `export --sam-decoder` ships it.
- `OUT/report.json` + `report.md` + `outline.png`: Dice against the expert masks, zero-shot vs
  fine-tuned, and outline fidelity (solidity, its AUC for malignancy, correlation with the expert's).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.datasets.roi_table import RoiRecord
from training.rois.prepare import prepared
from training.rois.sam_embeddings import Embeddings
from training.rois.sources import box_mask, drawn_box, expert_mask
from training.segmentation.evaluate_segmentation import dice_iou
from training.segmentation.outline import solidity

JITTER = 0.08  # training boxes: a bit looser than the ±5% the evaluation box uses, so serving boxes are inside the range
BASE_SAM = "litemedsam"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rois", type=Path, required=True, help="prepared ROI table folder or dataset folder")
    p.add_argument("--modality", choices=("us", "dm"), default="us")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="split seed: the classifier's (train-classifier --seed)")
    p.add_argument("--limit", type=int, help="first N lesions per class (smoke tests)")
    p.add_argument("--no-final", action="store_true", help="cross-fit only, no decoder on all lesions")
    p.add_argument("--only-folds", type=int, nargs="+", metavar="K",
                   help="train only these folds (0-based; -1 = the final decoder), e.g. in parallel processes")
    p.add_argument("--threads", type=int)


# ------------------------------------------------------------------------------------ decoder training

def frame_box(box, original_size: tuple[int, int], input_size: tuple[int, int]) -> torch.Tensor:
    """A box in image pixels, in the 256-px frame of the encoder input (SamPredictor's transform)."""
    (h, w), (h2, w2) = original_size, input_size
    x0, y0, x1, y1 = box
    return torch.tensor([[x0 * w2 / w, y0 * h2 / h, x1 * w2 / w, y1 * h2 / h]], dtype=torch.float32)


def frame_mask(mask: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The expert mask in the decoder's 256x256 low-res frame: resized like the image, padded bottom-right."""
    t = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=input_size, mode="bilinear",
                      align_corners=False)
    t = F.pad(t, (0, 256 - input_size[1], 0, 256 - input_size[0]))
    return (t[0, 0] >= 0.5).numpy()


def decode(sam, embedding: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder for one image and one box: (1, 1, 256, 256) logits and the IoU guess."""
    sparse, dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
    return sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                            multimask_output=False)


def segmentation_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid()
    inter, total = (prob * target).sum(), prob.sum() + target.sum()
    dice = 1 - (2 * inter + 1) / (total + 1)
    hard = logits > 0
    iou = ((hard & (target > 0)).sum() / ((hard | (target > 0)).sum()).clamp(min=1)).float()
    return F.binary_cross_entropy_with_logits(logits, target) + dice + F.mse_loss(iou_pred.float().view(()), iou)


def train_decoder(records: list[RoiRecord], idx: np.ndarray, emb: Embeddings, targets: np.ndarray,
                  args: argparse.Namespace, desc: str):
    """A fresh LiteMedSAM whose mask decoder is fine-tuned on `idx` (the rest frozen); returns it in eval mode."""
    from models.preprocessing import jitter_box
    from models.sam import load_sam
    sam = load_sam(BASE_SAM).model
    sam.image_encoder.requires_grad_(False)
    sam.prompt_encoder.requires_grad_(False)
    sam.mask_decoder.train()
    opt = torch.optim.AdamW(sam.mask_decoder.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * int(np.ceil(len(idx) / args.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = np.random.default_rng(args.seed)
    for _ in tqdm(range(args.epochs), desc=desc):
        order = rng.permutation(idx)
        for start in range(0, len(order), args.batch_size):
            opt.zero_grad()
            batch = order[start:start + args.batch_size]
            for i in batch:
                (h, w), inp = emb.original_size[i], emb.input_size[i]
                box = frame_box(jitter_box(records[i].box, w, h, rng, JITTER), (h, w), inp)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
                    logits, iou_pred = decode(sam, emb[i], box)
                target = torch.from_numpy(targets[i].astype(np.float32))[None, None]
                (segmentation_loss(logits.float(), iou_pred, target) / len(batch)).backward()
            opt.step()
            sched.step()
    return sam.eval()


@torch.no_grad()
def outline(sam, emb: Embeddings, i: int, box) -> tuple[np.ndarray, float]:
    """The decoder's mask (image size) and predicted IoU for one box, as the server computes it."""
    (h, w), inp = emb.original_size[i], emb.input_size[i]
    logits, iou = decode(sam, emb[i], frame_box(box, (h, w), inp))
    mask = sam.postprocess_masks(logits, inp, (h, w))[0, 0] > 0
    return mask.numpy(), float(iou.view(()))


# ------------------------------------------------------------------------------------ outline fidelity

def fidelity(name: str, masks: list[np.ndarray], truths: list[np.ndarray], targets: np.ndarray,
             expert_solidity: np.ndarray) -> dict:
    from training.common.metrics import bootstrap_auc_ci, roc_auc
    d = np.array([dice_iou(m, t)[0] for m, t in zip(masks, truths)])
    s = np.array([solidity(m) for m in masks])
    ok = ~np.isnan(s)
    return {"masks": name, "dice_mean": float(d.mean()), "dice_median": float(np.median(d)),
            "dice_benign": float(d[targets == 0].mean()), "dice_malignant": float(d[targets == 1].mean()),
            "solidity_benign": float(np.nanmean(s[targets == 0])), "solidity_malignant": float(np.nanmean(s[targets == 1])),
            "solidity_auc": roc_auc(targets[ok], 1 - s[ok]), "solidity_auc_ci": bootstrap_auc_ci(targets[ok], 1 - s[ok]),
            "solidity_corr_expert": float(np.corrcoef(s[ok], expert_solidity[ok])[0, 1]),
            "dice": d.tolist(), "solidity": s.tolist()}


# ------------------------------------------------------------------------------------------ the command

def save_decoder(sam, path: Path) -> str:
    from models.manifest import sha256_file
    from safetensors.torch import save_file
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in sam.mask_decoder.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
    return sha256_file(path)


def cross_fit_fold(k: int, train_idx: np.ndarray, test_idx: np.ndarray, records: list[RoiRecord],
                   emb: Embeddings, targets: np.ndarray, args: argparse.Namespace) -> Path:
    """Fold k's decoder trained without fold k; its masks of fold k's lesions from the evaluation boxes."""
    path = args.out / f"fold{k}" / "masks.npz"
    if path.is_file():
        return path
    sam = train_decoder(records, train_idx, emb, targets, args, f"fold {k + 1}/{args.folds}")
    out = {"index": test_idx}
    for i in test_idx:
        h, w = emb.original_size[i]
        mask, score = outline(sam, emb, i, drawn_box(records[i], (h, w), 0))
        out[f"m{i}"], out[f"s{i}"] = np.packbits(mask), np.float32(score)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **out)
    tmp.replace(path)
    return path


def assemble(records: list[RoiRecord], emb: Embeddings, fold_files: list[Path], truths: list[np.ndarray],
             out: Path) -> list[np.ndarray]:
    """Every lesion's out-of-fold mask in `training.rois.sources.SamViews`'s file format."""
    from models.preprocessing import box_of_mask
    masks: list[np.ndarray | None] = [None] * len(records)
    data: dict[str, np.ndarray] = {}
    boxes, scores = np.zeros((len(records), 4), np.float32), np.zeros(len(records), np.float32)
    for f in fold_files:
        z = np.load(f)
        for i in z["index"]:
            h, w = emb.original_size[i]
            mask = np.unpackbits(z[f"m{i}"], count=h * w).reshape(h, w).astype(bool)
            drawn = drawn_box(records[i], (h, w), 0)
            if not mask.any():  # as SamViews: the server would answer 422; training falls back to the drawn box
                mask = box_mask(drawn, (h, w))
            masks[i], data[f"m{i}"] = mask, np.packbits(mask)
            boxes[i], scores[i] = box_of_mask(mask), z[f"s{i}"]
    data |= {"boxes": boxes, "scores": scores, "dice": np.array([dice_iou(m, t)[0] for m, t in zip(masks, truths)], np.float32),
             "lesion_ids": np.array([r.lesion_id for r in records])}
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **data)
    tmp.replace(out)
    return masks


def run(args: argparse.Namespace) -> int:
    from training.common.provenance import git_commit
    from training.rois.sources import SamViews
    from training.rois.splits import folds_of, select
    if args.threads:
        torch.set_num_threads(args.threads)
    from training.common.device import bf16_native
    args.amp = bf16_native(torch.device("cpu"))  # emulated bf16 (an AVX2-only CPU) is far slower than float32
    records = select(prepared(args.rois), args.modality, args.limit)
    if len({r.target for r in records}) < 2:
        print(f"error: {args.rois} holds no benign and malignant {args.modality} lesions", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    emb = Embeddings(records, BASE_SAM)
    targets = np.stack([frame_mask(expert_mask(r, emb.original_size[i]), emb.input_size[i])
                        for i, r in enumerate(records)])
    folds = folds_of(records, args.folds, args.seed)
    only = set(args.only_folds) if args.only_folds else set(range(args.folds)) | ({-1} if not args.no_final else set())
    files = [cross_fit_fold(k, tr, te, records, emb, targets, args) for k, (tr, te) in enumerate(folds) if k in only]
    if -1 in only and not (args.out / "decoder.safetensors").is_file():
        sam = train_decoder(records, np.arange(len(records)), emb, targets, args, "final decoder")
        sha = save_decoder(sam, args.out / "decoder.safetensors")
        (args.out / "decoder.json").write_text(json.dumps({
            "base": BASE_SAM, "sha256": sha, "modality": args.modality, "lesions": len(records),
            "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "jitter": JITTER, "split_seed": args.seed,
            "git_commit": git_commit(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=2))
    if args.only_folds:
        return 0
    truths = [expert_mask(r, size) for r, size in zip(records, emb.original_size)]
    masks = assemble(records, emb, files, truths, args.out / "oof_masks.npz")
    y = np.array([r.target for r in records])
    expert_sol = np.array([solidity(t) for t in truths])
    zero = SamViews(records)
    zero_masks = [zero.view(i, m.shape)[1] for i, m in enumerate(masks)]
    rows = [fidelity("expert", truths, truths, y, expert_sol),
            fidelity(f"{BASE_SAM} zero-shot", zero_masks, truths, y, expert_sol),
            fidelity(f"{BASE_SAM} fine-tuned (out-of-fold)", masks, truths, y, expert_sol)]
    report = {"modality": args.modality, "lesions": len(records), "folds": args.folds, "split_seed": args.seed,
              "epochs": args.epochs, "lr": args.lr, "jitter": JITTER, "minutes": (time.time() - started) / 60,
              "prompt": "expert box, each side jittered by up to 5% (seed 0), as the `sam` ROI source",
              "rows": rows}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    (args.out / "report.md").write_text(report_markdown(report))
    plot_fidelity(report, y, args.out / "outline.png")
    print(report_markdown(report))
    return 0


def report_markdown(report: dict) -> str:
    lines = [f"# LiteMedSAM decoder fine-tuned on {report['modality'].upper()} expert masks "
             f"({report['lesions']} lesions, {report['folds']}-fold cross-fit)", "",
             f"Prompt: {report['prompt']}. Every fine-tuned mask is out-of-fold.", "",
             "| masks | Dice mean (median) | Dice benign / malignant | solidity benign / malignant "
             "| solidity AUC [95% CI] | solidity corr. with expert |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        ci = r["solidity_auc_ci"] or [float("nan")] * 2
        lines.append(f"| {r['masks']} | {r['dice_mean']:.3f} ({r['dice_median']:.3f}) | {r['dice_benign']:.3f} / "
                     f"{r['dice_malignant']:.3f} | {r['solidity_benign']:.3f} / {r['solidity_malignant']:.3f} | "
                     f"{r['solidity_auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {r['solidity_corr_expert']:.2f} |")
    return "\n".join(lines) + "\n\n![outline fidelity](outline.png)\n"


def plot_fidelity(report: dict, y: np.ndarray, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = report["rows"]
    fig, axes = plt.subplots(1, len(rows) + 1, figsize=(4 * (len(rows) + 1), 3.4))
    bins = np.linspace(0.5, 1.0, 26)
    for ax, r in zip(axes, rows):
        s = np.array(r["solidity"])
        for label, colour, name in ((0, "tab:blue", "benign"), (1, "tab:red", "malignant")):
            ax.hist(s[y == label], bins=bins, alpha=0.6, color=colour, label=name, density=True)
        ax.set_title(f"{r['masks']}\nsolidity AUC {r['solidity_auc']:.3f}", fontsize=9)
        ax.set_xlabel("solidity of the mask")
    axes[0].legend()
    for r in rows[1:]:
        axes[-1].hist(r["dice"], bins=np.linspace(0, 1, 41), alpha=0.6, label=r["masks"])
    axes[-1].set_title("Dice vs expert", fontsize=9)
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
