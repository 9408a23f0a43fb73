"""`make install`'s step for models.encoder_runtime: export the SAM encoders and decoders to ONNX, check
them against PyTorch on real BUSI images under every runtime, and record what passed.

    python -m models.encoder_export [--out DIR] [--force] [litemedsam mobilesam]

Each packaged TinyViT SAM (`EXPORTED`) is exported from its sha256-verified checkpoint: the image encoder
with every output a SAM probe reads (`AllOutputs`), and the prompt encoder + mask decoder (`PromptDecoder`).
Each file is checked on each runtime against PyTorch (the encoder's outputs and its box masks; the
decoder's masks and logits for box, point and points + box prompts) on three BUSI images from
BRANET_DATA (a deterministic synthetic image when the data is missing, and the record says so), and
`encoders.json` records the files' sha256, the checkpoint's, the versions and the figures. A file is in
place only once checked.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from models.encoder_runtime import (CPU_PREFERENCE, DECODER_INPUTS, DECODER_OUTPUTS, ENCODERS_DIR, EXPORTED, OFFERED,
                                    OPSET, OUTPUTS, RECORD, CompiledModel, read_record, versions)
from models.files import sha256_file
from models.sam import SAM_MODELS, LoadedSam, load_sam
from models.segmentation import Prompt, SamSegmenter

# The install-time equivalence check, per precision: every output close to PyTorch's, and the box
# masks SAM's decoder draws from the runtime's embedding agree with PyTorch's.
F32_MAX_REL = 1e-4  # largest |difference| / largest |PyTorch value| of an output; measured <= 6e-6
MIN_COSINE = {"f32": 0.99999, "bf16": 0.999}
MIN_DICE = 0.99
CHECK_IMAGES = ("benign/benign (1).png", "benign/benign (4).png", "malignant/malignant (1).png")


# export
class AllOutputs(torch.nn.Module):
    """A TinyViT image encoder returning the neck and every stage, as (1, C, h, w) maps (TinyViT's
    attention stages give (1, h*w, C) tokens on a square grid: the same reshape as the stage hooks)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor):
        e = self.encoder
        x = e.patch_embed(x)
        stages = []
        for layer in e.layers:
            x = layer(x)
            stages.append(_grid(x))
        b, _, c = x.size()
        neck = e.neck(x.view(b, 64, 64, c).permute(0, 3, 1, 2))
        return (neck, *stages)


def _grid(out: torch.Tensor) -> torch.Tensor:
    if out.ndim == 3:
        side = math.isqrt(int(out.shape[1]))  # a constant at the exported fixed input size
        out = out.transpose(1, 2).reshape(int(out.shape[0]), -1, side, side)
    return out


def export(sam: LoadedSam, path: Path) -> None:
    """`sam`'s image encoder as ONNX (opset 17) at its fixed input size, outputs OUTPUTS."""
    size = sam.model.image_encoder.img_size
    wrapper = AllOutputs(sam.model.image_encoder).eval()
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about len() are harmless at a fixed size
        torch.onnx.export(wrapper, (x,), str(path), opset_version=OPSET, dynamo=False,
                          input_names=["image"], output_names=list(OUTPUTS))




class PromptDecoder(torch.nn.Module):
    """SAM's prompt encoder + mask decoder for one image embedding and one prompt, as one graph.

    `point_coords` (1, N, 2) in the encoder's input frame and `point_labels` (1, N): 1 / 0 for positive /
    negative points, 2 / 3 for a box's corners, -1 for the padding point SAM adds when there is no box:
    PromptEncoder's `_embed_points` and `_embed_boxes` in one (a box corner is a point with its own
    learned embedding). No mask prompt. Out: all four mask tokens' low-resolution logits and IoUs; the
    caller picks the single-mask token or the three multimask ones as MaskDecoder.forward does. Unlike
    segment-anything's SamOnnxModel it does not choose a mask by point count (LiteMedSAM's multimask
    tokens were never trained: choosing among them outlines garbage)."""

    def __init__(self, sam_model):
        super().__init__()
        self.prompt_encoder, self.mask_decoder = sam_model.prompt_encoder, sam_model.mask_decoder

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor):
        pe = self.prompt_encoder
        sparse = pe.pe_layer.forward_with_coords(point_coords + 0.5, pe.input_image_size)
        labels = point_labels[..., None]
        sparse = torch.where(labels == -1, pe.not_a_point_embed.weight.expand_as(sparse), sparse)
        for i, embedding in enumerate(pe.point_embeddings):
            sparse = sparse + embedding.weight * (labels == i).to(sparse.dtype)
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *pe.image_embedding_size)
        return self.mask_decoder.predict_masks(image_embeddings, pe.get_dense_pe(), sparse, dense)


def export_decoder(sam: LoadedSam, path: Path) -> None:
    """`sam`'s prompt encoder + mask decoder as ONNX (opset 17), any number of prompt points."""
    decoder = PromptDecoder(sam.model).eval()
    side = sam.model.prompt_encoder.image_embedding_size
    example = (torch.zeros(1, sam.model.prompt_encoder.embed_dim, *side), torch.zeros(1, 2, 2),
               torch.tensor([[2.0, 3.0]]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(decoder, example, str(path), opset_version=OPSET, dynamo=False,
                          input_names=list(DECODER_INPUTS), output_names=list(DECODER_OUTPUTS),
                          dynamic_axes={"point_coords": {1: "points"}, "point_labels": {1: "points"}})


# the install step: export, check, record
def check_images(name: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, RGB image, lesion box x0 y0 x1 y1) for the check: BUSI images from BRANET_DATA, else one
    deterministic synthetic image."""
    from PIL import Image
    busi = Path(os.environ.get("BRANET_DATA", "../shared/data")) / "busi" / "Dataset_BUSI_with_GT"
    out = []
    for rel in CHECK_IMAGES:
        image, mask = busi / rel, busi / rel.replace(".png", "_mask.png")
        if image.is_file() and mask.is_file():
            ys, xs = np.nonzero(np.asarray(Image.open(mask).convert("L")) > 0)
            out.append((f"busi/{rel}", np.asarray(Image.open(image).convert("RGB")),
                        np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)))
    if out:
        return out
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:360, :480]
    lesion = ((yy - 170) / 60.0) ** 2 + ((xx - 250) / 90.0) ** 2 <= 1
    gray = np.clip(rng.normal(120, 30, (360, 480)) - 70 * lesion, 0, 255).astype(np.uint8)
    return [("synthetic (BRANET_DATA/busi missing)", np.stack([gray] * 3, axis=-1),
             np.array([160, 110, 341, 231], dtype=np.float32))]


def compare(reference, candidate) -> dict:
    """Over the outputs: the largest absolute difference, the largest relative to the output's largest
    PyTorch value, the smallest cosine; and the box masks' Dice."""
    worst_abs, worst_rel, worst_cos = 0.0, 0.0, 1.0
    for name in OUTPUTS:
        a, b = reference[0][name].double().flatten(), candidate[0][name].double().flatten()
        diff = float((a - b).abs().max())
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / max(float(a.abs().max()), 1e-12))
        worst_cos = min(worst_cos, float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
    m, n = reference[1], candidate[1]
    dice = float(2 * (m & n).sum() / max(1, m.sum() + n.sum()))
    return {"max_abs": worst_abs, "max_rel": worst_rel, "min_cosine": worst_cos, "dice": dice}


def _passes(figures: dict, precision: str) -> bool:
    return (figures["min_cosine"] >= MIN_COSINE[precision] and figures["dice"] >= MIN_DICE
            and (precision != "f32" or figures["max_rel"] <= F32_MAX_REL))


def cpu_has_bf16() -> bool:
    import openvino as ov
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _outputs_and_mask(segmenter, rgb: np.ndarray, box: np.ndarray):
    embedding = segmenter.encode(rgb)
    outs = {"neck": embedding.features, **embedding.stages}
    mask = segmenter.predict(embedding, Prompt(box=[float(v) for v in box])).mask
    return outs, mask


def build_one(name: str, folder: Path) -> dict:
    """Export `name`'s encoder into `folder`, check it under every offered runtime/precision, and
    return its record entry (the file is in place only once checked)."""
    sam = load_sam(name)
    stages = tuple(o for o in OUTPUTS if o != "neck")
    reference = SamSegmenter(sam, stages=stages, runtime="torch")
    candidate = SamSegmenter(sam, stages=stages, runtime="torch")
    images = check_images(name)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = Path(tmp) / f"{name}.onnx"
        export(sam, path)
        refs = [_outputs_and_mask(reference, rgb, box) for _, rgb, box in images]
        checks = {}
        for runtime, precision in sorted(OFFERED):
            if runtime == "torch":
                continue
            if precision == "bf16" and not cpu_has_bf16():
                checks[f"{runtime}-{precision}"] = {"passed": False, "note": "this CPU offers no bf16 (OpenVINO's "
                                                    "OPTIMIZATION_CAPABILITIES): it would run f32"}
                continue
            candidate.encoder = CompiledModel(name, path, runtime, precision)
            per_image = [compare(ref, _outputs_and_mask(candidate, rgb, box)) for ref, (_, rgb, box) in zip(refs, images)]
            figures = {"max_abs": max(f["max_abs"] for f in per_image), "max_rel": max(f["max_rel"] for f in per_image),
                       "min_cosine": min(f["min_cosine"] for f in per_image),
                       "dice": min(f["dice"] for f in per_image)}
            checks[f"{runtime}-{precision}"] = {**figures, "passed": _passes(figures, precision)}
            print(f"{name} {runtime}-{precision}: {checks[f'{runtime}-{precision}']}", file=sys.stderr)
        decoder_path = Path(tmp) / f"{name}-decoder.onnx"
        export_decoder(sam, decoder_path)
        decoder_checks = {}
        for runtime in CPU_PREFERENCE:
            compiled = CompiledModel(f"{name}-decoder", decoder_path, runtime, "f32", None, DECODER_INPUTS, DECODER_OUTPUTS)
            figures = check_decoder(reference, compiled, images)
            decoder_checks[f"{runtime}-f32"] = {**figures, "passed": figures["max_rel"] <= F32_MAX_REL
                                                 and figures["dice"] >= MIN_DICE}
            print(f"{name} mask decoder {runtime}-f32: {decoder_checks[f'{runtime}-f32']}", file=sys.stderr)
        os.replace(path, folder / f"{name}.onnx")
        os.replace(decoder_path, folder / decoder_path.name)
    final = folder / f"{name}.onnx"
    return {"file": final.name, "sha256": sha256_file(final), "checkpoint_sha256": sam.sha256,
            "input_size": sam.model.image_encoder.img_size, "outputs": list(OUTPUTS), "opset": OPSET,
            "versions": versions(), "checked_on": [label for label, _, _ in images],
            "thresholds": {"f32_max_rel": F32_MAX_REL, "min_cosine": MIN_COSINE, "min_dice": MIN_DICE},
            "checks": checks,
            "decoder": {"file": decoder_path.name, "sha256": sha256_file(folder / decoder_path.name),
                        "inputs": list(DECODER_INPUTS), "outputs": list(DECODER_OUTPUTS),
                        "prompts": list(CHECK_PROMPTS), "checks": decoder_checks}}


CHECK_PROMPTS = ("box", "one point (multimask)", "two points + box")


def _check_prompts(box: np.ndarray) -> list[dict]:
    """SamPredictor.predict arguments for CHECK_PROMPTS around a lesion box: a box alone, its centre as
    one positive point (three masks), and the centre plus a negative point above-left of the box with
    the box (points and a box together)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    centre = [(x0 + x1) / 2, (y0 + y1) / 2]
    outside = [max(0.0, x0 - 10), max(0.0, y0 - 10)]
    return [dict(box=np.asarray(box, dtype=np.float32), multimask_output=False),
            dict(point_coords=np.array([centre], dtype=np.float32), point_labels=np.array([1]), multimask_output=True),
            dict(point_coords=np.array([centre, outside], dtype=np.float32), point_labels=np.array([1, 0]),
                 box=np.asarray(box, dtype=np.float32), multimask_output=False)]


def check_decoder(segmenter, decoder: CompiledModel, images) -> dict:
    """`decoder` against `segmenter`'s PyTorch prompt encoder + mask decoder on each image's PyTorch
    embedding and every CHECK_PROMPTS prompt: the largest logit difference (absolute, and relative to
    the largest |logit|), and the smallest Dice between the two masks."""
    worst_abs, worst_rel, worst_dice = 0.0, 0.0, 1.0
    for _, rgb, box in images:
        embedding = segmenter.encode(rgb)
        with segmenter._lock:
            predictor = segmenter._on(embedding)
            for kwargs in _check_prompts(box):
                predictor.decoder = None
                ref, ref_iou, _ = predictor.predict(**kwargs, return_logits=True)
                predictor.decoder = decoder
                got, got_iou, _ = predictor.predict(**kwargs, return_logits=True)
                predictor.decoder = None
                diff = float(np.abs(ref - got).max())
                worst_abs = max(worst_abs, diff, float(np.abs(ref_iou - got_iou).max()))
                worst_rel = max(worst_rel, diff / max(float(np.abs(ref).max()), 1e-12))
                a, b = ref > 0, got > 0
                both_empty = not (a.any() or b.any())  # LiteMedSAM draws nothing for some point prompts
                worst_dice = min(worst_dice, 1.0 if both_empty else float(2 * (a & b).sum() / (a.sum() + b.sum())))
    return {"max_abs": worst_abs, "max_rel": worst_rel, "dice": worst_dice}


def _current(entry: dict | None, name: str, folder: Path) -> bool:
    path, decoder = folder / f"{name}.onnx", folder / f"{name}-decoder.onnx"
    return bool(entry) and path.is_file() and entry.get("sha256") == sha256_file(path) \
        and entry.get("checkpoint_sha256") == SAM_MODELS[name].sha256 and entry.get("versions") == versions() \
        and decoder.is_file() and (entry.get("decoder") or {}).get("sha256") == sha256_file(decoder)


def build(folder: Path = ENCODERS_DIR, names: tuple[str, ...] = EXPORTED, force: bool = False) -> dict:
    """Export and check every encoder not already current in `folder`; write the record."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = read_record(folder)
    for name in names:
        if force or not _current(record.get(name), name, folder):
            record[name] = build_one(name, folder)
            tmp = folder / f"{RECORD}.part"
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            tmp.replace(folder / RECORD)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ENCODERS_DIR)
    parser.add_argument("--force", action="store_true", help="export and check again even if current")
    parser.add_argument("names", nargs="*", default=list(EXPORTED), help=f"any of {', '.join(EXPORTED)}")
    args = parser.parse_args()
    if set(args.names) - set(EXPORTED):
        parser.error(f"only {', '.join(EXPORTED)} are exported")
    record = build(args.out, tuple(args.names), args.force)
    for name in args.names:
        e = record[name]
        print(f"{args.out / e['file']}: checked on {len(e['checked_on'])} image(s) ({e['checked_on'][0]}...): "
              + ", ".join(f"{k} {'ok' if v['passed'] else v.get('note', 'FAILED')}" for k, v in e["checks"].items()))


if __name__ == "__main__":
    main()
