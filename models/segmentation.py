"""Prompted and automatic lesion segmentation with one SAM model, shared by serving and evaluation.

`SamSegmenter` splits SAM into its two costs: `encode` (the image encoder, once per image, cacheable)
and `predict` (prompt encoder + mask decoder, milliseconds). Prompts come in the API's shape:
`{"box": [x0, y0, x1, y1]}`, `{"points": [[x, y, 1|0], ...]}`, `{"mask": "<PNG base64>"}` or `{}`
(automatic: the modality's lesion localiser where one is served, else the paper's automatic mask generator;
`{"auto": "localiser"}` or `{"auto": "sam-amg"}` chooses). A drawn mask is sent to SAM as its bounding box: the box-trained LiteMedSAM then
outlines the lesion the user circled.
"""
from __future__ import annotations

import base64
import binascii
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.utils.amg import mask_to_rle_pytorch

from models.encoder_runtime import CompiledModel, choose, load_decoder, load_encoder
from models.guarded_image import ImageRejected, open_checked
from models.preprocessing import box_of_mask
from models.sam import LoadedSam

PromptKind = Literal["box", "points", "mask", "auto"]
AutoMode = Literal["localiser", "sam-amg"]

# The paper's automatic-mask-generator parameters (BraNet, Module 3).
AMG_DEFAULTS = dict(points_per_side=32, points_per_batch=64, pred_iou_thresh=0.88,
                    stability_score_thresh=0.95, box_nms_thresh=0.7)
# Automatic lesion pick: a lesion is neither a speck nor the whole field of view, and does not run
# into the image border (that is skin, chest wall or the scanner's frame). Among such masks the one
# SAM is surest of (predicted IoU x stability) wins; if every mask touches the border, the surest
# mask under the size cap is taken.
AUTO_MIN_AREA = 0.002
AUTO_MAX_AREA = 0.5
AUTO_BORDER_PX = 2


class PromptError(ValueError):
    """The prompt does not fit the image (outside it, empty, wrong size): the caller's mistake."""


class NoLesionFound(ValueError):
    """SAM returned nothing usable for this prompt, or the localiser found no lesion: then `score` (its best
    candidate's, else the highest lesion probability anywhere) is under `threshold`."""

    def __init__(self, message: str, score: float | None = None, threshold: float | None = None):
        super().__init__(message)
        self.score, self.threshold = score, threshold


class Prompt(BaseModel):
    """One of box, points or mask; none of them means automatic (`auto`, or `{}`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"box": [120, 80, 260, 190]}, {"points": [[190, 135, 1], [40, 40, 0]]}, {}, {"auto": "sam-amg"}]})

    box: list[float] | None = Field(None, min_length=4, max_length=4,
                                    description="x0, y0, x1, y1 in image pixels (x1 > x0, y1 > y0)")
    points: list[list[float]] | None = Field(None, min_length=1, max_length=64,
                                             description="[x, y, label]: label 1 = lesion, 0 = background")
    mask: str | None = Field(None, description="PNG (base64) of the image's size; non-zero = lesion",
                             max_length=16_000_000)
    auto: AutoMode | None = Field(
        None, description="automatic mode, only without box, points or mask: `localiser` (the modality's lesion "
                          "localiser on the box route's SAM embedding, about a second on a CPU; 422 where the "
                          "modality has none) or `sam-amg` (the paper's automatic mask generator, 32x32 grid: "
                          "about 210 s per image on a 2-core CPU, meant for GPU deployments). Omitted (`{}`): "
                          "the localiser where the modality has one, else sam-amg")
    _drawn: np.ndarray | None = PrivateAttr(None)  # the mask already decoded (decode_mask_png), off the model's thread

    def with_drawn(self, mask: np.ndarray) -> "Prompt":
        """This mask prompt carrying its decoded mask, so `predict` does not decode it again."""
        prompt = self.model_copy()
        prompt._drawn = mask
        return prompt

    @property
    def drawn(self) -> np.ndarray | None:
        return self._drawn

    @model_validator(mode="after")
    def _one_kind(self) -> "Prompt":
        given = [k for k in ("box", "points", "mask") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of box, points or mask, not {' and '.join(given)}")
        if given and self.auto is not None:
            raise ValueError(f"auto is the automatic mode: give it without {given[0]}")
        for p in self.points or []:
            if len(p) != 3 or p[2] not in (0, 1):
                raise ValueError(f"each point is [x, y, 1|0], got {p}")
        return self

    @property
    def kind(self) -> PromptKind:
        for k in ("box", "points", "mask"):
            if getattr(self, k) is not None:
                return k  # type: ignore[return-value]
        return "auto"


@dataclass
class Embedding:
    """What SAM's image encoder computed for one image, enough to answer any prompt on it."""

    model: str
    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    # the encoder's intermediate feature maps, (1, C, h, w) by stage name, for a SAM probe that reads them
    stages: dict[str, torch.Tensor] = field(default_factory=dict)
    runtime: str = "torch"  # what ran the image encoder (models.encoder_runtime), and at what precision
    precision: str = "f32"

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in (self.features, *self.stages.values()))


@dataclass
class Segmentation:
    mask: np.ndarray  # HxW bool
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the mask
    score: float  # SAM's predicted IoU
    model: str
    prompt: PromptKind
    runtime: str = "torch"  # what ran the image encoder, and at what precision (models.encoder_runtime)
    precision: str = "f32"
    auto_mode: AutoMode | None = None  # how an automatic result was found; None for a drawn prompt
    # localiser mode: the candidates scoring at least the threshold, best first (the first is outlined),
    # the best candidate's score and the threshold
    candidates: list | None = None  # of models.localiser.Candidate
    lesion_score: float | None = None
    lesion_threshold: float | None = None


def decode_mask_png(data: str, width: int, height: int) -> np.ndarray:
    """A drawn ROI: a base64 PNG of exactly the image's size (checked from its header before anything is
    decoded, so its cost is bounded by the image's own size), non-zero = lesion."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise PromptError("prompt mask is not a base64 PNG: the text is not valid base64") from None
    try:
        image, _ = open_checked(raw, width * height, "prompt mask", formats=("png",), size=(width, height))
    except ImageRejected as err:
        if err.code == "unsupported_media_type":
            raise PromptError("prompt mask is not a base64 PNG (of the image's size)") from None
        raise PromptError(err.message) from None
    mask = np.asarray(image.convert("L")) > 0
    if not mask.any():
        raise PromptError("prompt mask is empty: draw over the lesion")
    return mask


def check_box(box: list[float], width: int, height: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise PromptError(f"box {box} is not a non-empty box inside the {width}x{height} image")
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def check_points(points: list[list[float]], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    for x, y, _ in points:
        if not (0 <= x < width and 0 <= y < height):
            raise PromptError(f"point ({x}, {y}) is outside the {width}x{height} image")
    if not any(label == 1 for _, _, label in points):
        raise PromptError("points need at least one positive (label 1) point on the lesion")
    arr = np.asarray(points, dtype=np.float32)
    return arr[:, :2], arr[:, 2].astype(np.int64)


def mask_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major counts starting with background)."""
    return mask_to_rle_pytorch(torch.from_numpy(mask[None]))[0]


def _pick_lesion(records: list[dict], width: int, height: int) -> dict | None:
    area = float(width * height)
    sized = [r for r in records if AUTO_MIN_AREA <= r["area"] / area <= AUTO_MAX_AREA]

    def inside(r: dict) -> bool:
        x, y, w, h = r["bbox"]
        b = AUTO_BORDER_PX
        return x >= b and y >= b and x + w <= width - b and y + h <= height - b

    pool = [r for r in sized if inside(r)] or sized
    return max(pool, key=lambda r: r["predicted_iou"] * r["stability_score"], default=None)


def encoder_stages(encoder: torch.nn.Module, names: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    """The named stages of a TinyViT image encoder (LiteMedSAM's, MobileSAM's): `layer0` .. `layer3`,
    its `layers` in order; ValueError for a name it does not have."""
    layers = getattr(encoder, "layers", None)
    found = {f"layer{k}": m for k, m in enumerate(layers)} if isinstance(layers, torch.nn.ModuleList) else {}
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"{type(encoder).__name__} has no stage {', '.join(missing)} "
                         f"(it has: {', '.join(found) or 'none'})")
    return {n: found[n] for n in names}


def _catch(into: dict[str, torch.Tensor], name: str):
    def hook(_module, _inputs, out: torch.Tensor) -> None:
        if out.ndim == 3:  # TinyViT's attention stages give (1, h*w, C) tokens on a square grid
            side = int(round(out.shape[1] ** 0.5))
            out = out.transpose(1, 2).reshape(out.shape[0], -1, side, side)
        into[name] = out.detach()
    return hook


class _RuntimePredictor(SamPredictor):
    """SamPredictor whose image encoder and mask decoder run on a compiled runtime: `set_image`'s own
    preprocessing (ResizeLongestSide, CHW, `Sam.preprocess`), then the compiled encoder; `stages` keeps
    the wanted stage maps of the last image; `predict`'s own prompt transform, then the compiled prompt
    encoder + mask decoder (models.encoder_runtime.PromptDecoder) and Sam.postprocess_masks. With neither
    it is SamPredictor itself."""

    def __init__(self, sam_model, encoder: CompiledModel | None = None, stages: tuple[str, ...] = (),
                 decoder: CompiledModel | None = None):
        super().__init__(sam_model)
        self.encoder, self.wanted, self.stages, self.decoder = encoder, stages, {}, decoder

    @torch.no_grad()
    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True,
                      return_logits=False):
        one_prompt = all(t is None or t.shape[0] == 1 for t in (point_coords, boxes))
        if self.decoder is None or mask_input is not None or not one_prompt:
            return super().predict_torch(point_coords, point_labels, boxes, mask_input, multimask_output, return_logits)
        coords, labels = [], []
        if point_coords is not None:
            coords.append(point_coords.float())
            labels.append(point_labels.float())
        if boxes is not None:
            coords.append(boxes.reshape(1, 2, 2).float())
            labels.append(torch.tensor([[2.0, 3.0]]))
        else:  # as PromptEncoder._embed_points pads points without a box
            coords.append(torch.zeros(1, 1, 2))
            labels.append(-torch.ones(1, 1))
        out = self.decoder(self.features, torch.cat(coords, dim=1).to(self.features.device),
                           torch.cat(labels, dim=1).to(self.features.device))
        tokens = slice(1, None) if multimask_output else slice(0, 1)  # as MaskDecoder.forward
        low_res, iou = out["low_res_masks"][:, tokens], out["iou_predictions"][:, tokens]
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        return (masks if return_logits else masks > self.model.mask_threshold), iou, low_res

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size) -> None:
        if self.encoder is None:
            return super().set_torch_image(transformed_image, original_image_size)
        assert (transformed_image.ndim == 4 and transformed_image.shape[1] == 3
                and max(*transformed_image.shape[2:]) == self.model.image_encoder.img_size)
        self.reset_image()
        self.original_size = original_image_size
        self.input_size = tuple(transformed_image.shape[-2:])
        outs = self.encoder(self.model.preprocess(transformed_image))
        self.features = outs["neck"]
        self.stages = {name: outs[name] for name in self.wanted}
        self.is_image_set = True


class SamSegmenter:
    """One SAM model: encode images, answer prompts on an embedding, or find a lesion automatically.

    Calls are serialised by a lock: the wrapped `SamPredictor` holds one image's state at a time."""

    def __init__(self, sam: LoadedSam, amg: dict | None = None, stages: tuple[str, ...] = (),
                 runtime: str | None = None, precision: str | None = None):
        """`stages`: the image encoder's intermediate outputs every embedding keeps (`encoder_stages`).
        `runtime`, `precision`: what runs the image encoder (models.encoder_runtime; default: the
        BRANET_ENCODER_RUNTIME / BRANET_ENCODER_PRECISION settings, else the measured default for the
        model's device). WeightsError if the exported encoder is missing or does not match."""
        self.sam = sam
        self.name = sam.name
        self.amg = {**AMG_DEFAULTS, **(amg or {})}
        self._stage_modules = encoder_stages(sam.model.image_encoder, tuple(stages))
        self._lock = threading.Lock()
        self.runtime, self.precision = choose(next(sam.model.parameters()).device, runtime, precision)
        self.predictor = _RuntimePredictor(sam.model, stages=tuple(stages))
        self.encoder = load_encoder(sam, self.runtime, self.precision)
        self.predictor.decoder = load_decoder(sam, self.runtime)

    @property
    def encoder(self) -> CompiledModel | None:
        """The compiled image encoder; None: PyTorch (the runtime `torch`, or a SAM that is not exported)."""
        return self.predictor.encoder

    @encoder.setter
    def encoder(self, encoder: CompiledModel | None) -> None:
        self.predictor.encoder = encoder
        if encoder is None:
            self.runtime, self.precision = "torch", "f32"
        else:
            self.runtime, self.precision = encoder.runtime, encoder.precision

    @property
    def decoder(self) -> CompiledModel | None:
        """The compiled prompt encoder + mask decoder; None: PyTorch."""
        return self.predictor.decoder

    def model_input(self, rgb: np.ndarray) -> np.ndarray:
        if not self.sam.min_max_scale:
            return rgb
        lo, hi = float(rgb.min()), float(rgb.max())
        scaled = (rgb.astype(np.float32) - lo) / max(hi - lo, 1e-8) * 255.0
        return scaled.astype(np.uint8)

    def encode(self, rgb: np.ndarray) -> Embedding:
        caught: dict[str, torch.Tensor] = {}
        with self._lock, ExitStack() as hooks:
            if self.encoder is None:
                for name, module in self._stage_modules.items():
                    hooks.callback(module.register_forward_hook(_catch(caught, name)).remove)
            self.predictor.set_image(self.model_input(rgb), image_format="RGB")
            return Embedding(self.name, self.predictor.features, self.predictor.original_size,
                             self.predictor.input_size, caught if self.encoder is None else self.predictor.stages,
                             self.runtime, self.precision)

    def predict(self, embedding: Embedding, prompt: Prompt) -> Segmentation:
        height, width = embedding.original_size
        box = coords = labels = None
        if prompt.kind == "box":
            box = check_box(prompt.box, width, height)
        elif prompt.kind == "mask":
            mask = prompt.drawn
            if mask is None or mask.shape != (height, width):
                mask = decode_mask_png(prompt.mask, width, height)
            drawn = box_of_mask(mask)
            box = np.asarray(drawn, dtype=np.float32)
        elif prompt.kind == "points":
            coords, labels = check_points(prompt.points, width, height)
        else:
            raise PromptError("automatic segmentation has no prompt: use `automatic`")
        # One point is ambiguous (SAM's multimask output picks among part / whole / more); a box is not.
        multimask = prompt.kind == "points" and len(prompt.points) == 1
        with self._lock:
            masks, scores, _ = self._on(embedding).predict(point_coords=coords, point_labels=labels, box=box,
                                                           multimask_output=multimask)
        return self._segmentation(*self._best(masks, scores), prompt.kind)

    def iou_token(self, embedding: Embedding, box) -> np.ndarray:
        """(256,) float32: the mask decoder's IoU token after it has read the image around a box prompt,
        the summary from which SAM predicts how good its mask is (models.sam_probe reads it)."""
        height, width = embedding.original_size
        box = check_box([float(v) for v in box], width, height)
        caught: list[torch.Tensor] = []
        head = self.sam.model.mask_decoder.iou_prediction_head
        with self._lock:
            predictor = self._on(embedding)
            hook = head.register_forward_hook(lambda _m, inputs, _o: caught.append(inputs[0][0].detach()))
            decoder, predictor.decoder = predictor.decoder, None  # the hook reads PyTorch's decoder
            try:
                predictor.predict(box=box, multimask_output=False)
            finally:
                hook.remove()
                predictor.decoder = decoder
        return caught[0].float().cpu().numpy()

    def _on(self, embedding: Embedding) -> SamPredictor:
        """The predictor holding `embedding` (call under the lock)."""
        if embedding.model != self.name:
            raise ValueError(f"embedding from {embedding.model}, segmenter is {self.name}")
        p = self.predictor
        p.features, p.original_size, p.input_size = embedding.features, embedding.original_size, embedding.input_size
        p.is_image_set = True
        return p

    @staticmethod
    def _best(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, float]:
        """SAM's surest mask, but not one covering more than AUTO_MAX_AREA of the image: for one point
        MobileSAM's surest guess is often the whole field of view (training/results/segmentation)."""
        areas = masks.reshape(len(masks), -1).mean(axis=1)
        allowed = np.flatnonzero(areas <= AUTO_MAX_AREA)
        best = int(allowed[np.argmax(scores[allowed])]) if len(allowed) else int(np.argmax(scores))
        return masks[best], float(scores[best])

    def automatic(self, rgb: np.ndarray) -> Segmentation:
        height, width = rgb.shape[:2]
        with self._lock:
            generator = SamAutomaticMaskGenerator(self.sam.model, output_mode="binary_mask", **self.amg)
            generator.predictor = _RuntimePredictor(self.sam.model, self.encoder)
            records = generator.generate(self.model_input(rgb))
        chosen = _pick_lesion(records, width, height)
        if chosen is None:
            raise NoLesionFound(f"{self.name} found no lesion-sized region automatically: give a box or points")
        seg = self._segmentation(chosen["segmentation"], float(chosen["predicted_iou"]), "auto")
        seg.auto_mode = "sam-amg"
        return seg

    def _segmentation(self, mask: np.ndarray, score: float, kind: PromptKind) -> Segmentation:
        mask = np.asarray(mask, dtype=bool)
        box = box_of_mask(mask)
        if box is None:
            raise NoLesionFound(f"{self.name} returned an empty mask for this {kind} prompt")
        return Segmentation(mask, box, score, self.name, kind, self.runtime, self.precision)
