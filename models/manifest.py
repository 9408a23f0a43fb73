"""Weight manifest (models/weights/manifest.json) and verified loading.

Loading never falls back to a random network: a missing file, a sha256 mismatch or a shape
mismatch raises WeightsError naming the file and what is wrong.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file

from models.classifier import build_classifier
from models.files import WeightsError, sha256_file, verified_file
from models.localiser import FIRST_DILATIONS, RANK_BY, WIDTH, Localiser, LocaliserNet
from models.probe_head import Region, SamProbe, Stage, probe_size

WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST_NAME = "manifest.json"


class InputSpec(BaseModel):
    channels: int = 1  # 1: gray ROI; 2: gray ROI + lesion mask cropped the same way
    roi_source: str = "expert"  # what placed the crop in training: expert mask, drawn box, or SAM
    sam: str | None = None  # roi_source sam: the SAM model whose masks it was trained on (serve box prompts with it)
    size: int = 128
    mean: float = 0.5
    std: float = 0.5
    roi_margin: float = 0.10
    intensity: str = "raw"  # models.preprocessing.Intensity: the gray levels' standardisation before the crop
    crop: str = "square around lesion box + margin, slid inside the image, reflection-padded if smaller"


class SamProbeSpec(BaseModel):
    """A logistic regression on SAM's embedding of the lesion (models.sam_probe), added to the classifier."""

    file: str  # SamProbe's state, float32 safetensors
    sha256: str
    sam: str  # the SAM whose image encoder makes the features (the box route's, models.sam.SAM_MODELS)
    alpha: float  # served logit difference = classifier's + alpha x probe's
    C: float = 0.05  # the regression's inverse L2 strength, fixed beforehand
    mark_augment: bool = False  # also fitted on the lesions with measurement marks burned in
    scanner_augment: bool = False  # also fitted on the lesions as another scanner or setting shows them
    # the embedding's means over these regions, in this order; entries written before there was a
    # choice averaged over the mask and the crop
    regions: tuple[Region, ...] = ("mask", "crop")
    iou_token: bool = False  # then the mask decoder's IoU token for SAM's mask box follows the regions
    # the image encoder's stages averaged over the regions, in this order (models.sam_probe.Stage); entries
    # written before there was a choice read the image embedding only
    stages: tuple[Stage, ...] = ("neck",)


class ModelEntry(BaseModel):
    name: str
    file: str
    sha256: str
    architecture: str
    modality: str
    input: InputSpec = Field(default_factory=InputSpec)
    classes: list[str] = ["benign", "malignant"]
    temperature: float = 1.0
    threshold: float = 0.5
    regime: str = "real"
    members: int = 1  # >1: mean logits of that many ResNet18s (models.classifier.LogitMean)
    sam_probe: SamProbeSpec | None = None
    training: dict[str, Any] = {}
    data: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    git_commit: str = "unknown"
    created: str = ""


class SamDecoderEntry(BaseModel):
    """A SAM-family model whose mask decoder was fine-tuned here (`finetune-sam`); the rest is `base`'s."""

    name: str
    base: str  # a models.sam.SAM_MODELS name: image and prompt encoders, verified by their own sha256
    file: str  # the mask decoder's state, fp16 safetensors
    sha256: str
    modality: str
    training: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    git_commit: str = "unknown"
    created: str = ""


class LocaliserEntry(BaseModel):
    """An automatic lesion finder for one modality (models.localiser), on its SAM's image embedding."""

    name: str
    file: str  # LocaliserNet's state, fp16 safetensors
    sha256: str
    modality: str
    sam: str  # the SAM whose image embedding it reads: the modality's box route (models.sam.SAM_MODELS)
    threshold: float  # "lesion found" needs a candidate scoring at least this
    level: float = 0.5  # cells at or above this share of the image's highest probability form the candidates
    limit: int = 3  # candidates returned at most
    training: dict[str, Any] = {}
    data: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    git_commit: str = "unknown"
    created: str = ""


class Manifest(BaseModel):
    models: dict[str, ModelEntry] = {}
    sam_decoders: dict[str, SamDecoderEntry] = {}
    localisers: dict[str, LocaliserEntry] = {}  # by role: "localiser-us", "localiser-dm"


def read_manifest(weights_dir: Path = WEIGHTS_DIR) -> Manifest:
    path = Path(weights_dir) / MANIFEST_NAME
    if not path.is_file():
        raise WeightsError(f"weight manifest not found: {path}")
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValueError as e:
        raise WeightsError(f"weight manifest {path} is not valid: {e}") from e


def write_manifest(manifest: Manifest, weights_dir: Path = WEIGHTS_DIR) -> Path:
    path = Path(weights_dir) / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.model_dump(), indent=2) + "\n")
    tmp.replace(path)
    return path


def save_classifier(model: torch.nn.Module, path: Path) -> str:
    """fp16 safetensors; returns its sha256."""
    state = {k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
    return sha256_file(path)


def state_mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why `state` cannot be loaded into `model` (missing, misshapen or unexpected keys), or None."""
    expected = model.state_dict()
    bad = [k for k in expected if k not in state or tuple(state[k].shape) != tuple(expected[k].shape)]
    extra = [k for k in state if k not in expected]
    return f"missing or misshapen {bad[:5]}, unexpected {extra[:5]}" if bad or extra else None


def load_state(module: torch.nn.Module, path: Path, what: str, fits: str = "") -> torch.nn.Module:
    """`module` with the (verified) file's state loaded as float32; WeightsError names the file and what
    does not fit."""
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise WeightsError(f"cannot read {what} {path}: {e}") from e
    mismatch = state_mismatch(module, state)
    if mismatch:
        raise WeightsError(f"{what} {path} does not fit{fits}: {mismatch}")
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return module


def load_sam_probe(entry: ModelEntry, weights_dir: Path = WEIGHTS_DIR, device: str | torch.device = "cpu"):
    """The entry's verified SAM probe (models.sam_probe.SamProbe, eval mode), or None if it has none."""
    spec = entry.sam_probe
    if spec is None:
        return None
    path = verified_file(Path(weights_dir) / spec.file, spec.sha256, "SAM probe file")
    probe = load_state(SamProbe(probe_size(spec.regions, spec.iou_token, spec.stages)), path, "SAM probe file")
    return probe.to(device).eval()


def load_classifier(name: str, weights_dir: Path = WEIGHTS_DIR, device: str | torch.device = "cpu"
                    ) -> tuple[torch.nn.Module, ModelEntry]:
    """Verified load of one classifier from the manifest: float32, eval mode."""
    weights_dir = Path(weights_dir)
    manifest = read_manifest(weights_dir)
    if name not in manifest.models:
        raise WeightsError(f"model {name!r} is not in {weights_dir / MANIFEST_NAME} "
                           f"(it lists: {', '.join(sorted(manifest.models)) or 'nothing'})")
    entry = manifest.models[name]
    path = verified_file(weights_dir / entry.file, entry.sha256, "weight file")
    model = build_classifier(in_channels=entry.input.channels, num_classes=len(entry.classes),
                             members=entry.members)
    model = load_state(model, path, "weight file", f" {entry.architecture}")
    return model.to(device).eval(), entry


def load_localiser(entry: LocaliserEntry, weights_dir: Path = WEIGHTS_DIR,
                   device: str | torch.device = "cpu") -> Localiser:
    """The entry's verified localiser, float32, eval mode."""
    path = verified_file(Path(weights_dir) / entry.file, entry.sha256, "localiser file")
    design = entry.training
    net = LocaliserNet(width=design.get("width", WIDTH),
                       dilations=tuple(design.get("dilations", FIRST_DILATIONS)))  # as trained, not as today's code
    net = load_state(net, path, "localiser file", " LocaliserNet")
    return Localiser(net.to(device), entry.sam, entry.threshold, entry.level, entry.limit,
                     rank_by=design.get("rank_by", RANK_BY))
