"""Where the classifier's crop (and lesion mask) comes from: the expert, a user's box, SAM, or the localiser.

- `expert`: the dataset's own annotation (mask bounding box; the mask itself, or the ellipse inside
  the box where a set only gives circles, e.g. mini-MIAS).
- `box`: that box with each side jittered by up to +-5% of its size (fixed seed per lesion), as a
  user would draw it; the mask channel is the drawn box, filled.
- `sam`: that jittered box sent through the server's SAM route for the modality (LiteMedSAM for box
  prompts) and cropped as the server crops: around the SAM mask's box, with the SAM mask.
- `auto`: nobody draws: the served lesion localiser's best box, outlined by that SAM, as the server answers
  `{}` (training.rois.auto_views). A lesion whose image gets "no lesion found" has no auto crop: its
  crop is left blank (all zeros) and `AutoViews.found()` says so; `evaluate-auto-roi` scores found lesions only.
Crops are `models.preprocessing.classifier_input`, the function the server calls.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from models.encoder_runtime import EXPORTED
from models.manifest import WEIGHTS_DIR, sha256_file
from models.preprocessing import INPUT_SIZE, ROI_MARGIN, classifier_input, jitter_box
from models.probe_head import IOU_TOKEN, REGIONS, STAGES, encoder_only
from models.sam_probe import probe_input
from training.common.cache import cache_root
from training.datasets.roi_table import RoiRecord
from training.rois.crops import load_gray, save_atomic

if TYPE_CHECKING:
    from training.rois.auto_views import AutoViews

ROI_SOURCES = ("expert", "box", "sam", "auto")
PROBE_SPEC = (ROI_MARGIN, REGIONS, IOU_TOKEN, STAGES)  # the served SAM probe's margin, regions, token, stages
SAM_FOR_BOXES = "litemedsam"  # the server's default box route (server/settings.py DEFAULT_ROUTE)


def lesion_rng(record: RoiRecord, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}|{record.lesion_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def expert_mask(record: RoiRecord, shape: tuple[int, int]) -> np.ndarray:
    if record.mask_paths:
        union = np.zeros(shape, bool)
        for path in record.mask_paths.split(";"):
            with Image.open(path) as m:
                union |= np.asarray(m.convert("L")) > 0
        return union
    x0, y0, x1, y1 = record.box
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1


def drawn_box(record: RoiRecord, shape: tuple[int, int], seed: int) -> tuple[float, float, float, float]:
    return jitter_box(record.box, shape[1], shape[0], lesion_rng(record, seed))


def box_mask(box, shape: tuple[int, int]) -> np.ndarray:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    mask = np.zeros(shape, bool)
    mask[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)] = True
    return mask


def outline_from_box(segmenter, embedding, box, shape: tuple[int, int]
                     ) -> tuple[tuple[float, ...], np.ndarray, float]:
    """SAM's box, mask and score from a drawn box, as the server's box route outlines it; where SAM finds
    nothing (the server would answer 422) training falls back to the drawn box itself."""
    from models.segmentation import NoLesionFound, Prompt
    try:
        seg = segmenter.predict(embedding, Prompt(box=list(box)))
        return seg.box, seg.mask, seg.score
    except NoLesionFound:
        return box, box_mask(box, shape), 0.0


def lesion_view(record: RoiRecord, i: int, source: str, shape: tuple[int, int], seed: int,
                sam: "SamViews | AutoViews | None") -> tuple[tuple[float, ...], np.ndarray]:
    """Where the ROI source puts lesion `i` (record `record`) in an image of `shape`: its box and mask.
    `sam`: the sam or auto source's views of the records (auto: NotFound where no lesion was found)."""
    if source == "expert":
        return record.box, expert_mask(record, shape)
    if source == "box":
        box = drawn_box(record, shape, seed)
        return box, box_mask(box, shape)
    return sam.view(i, shape)


class SamViews:
    """SAM masks from jittered boxes for every record, computed once and cached (packed bits): per lesion,
    so that another list of the same lesions (one site of two, a held-out site, an evaluation folder)
    reuses them, and as one file per list, which is what `load_inputs` keys its crops by."""

    def __init__(self, records: list[RoiRecord], seed: int = 0, sam_name: str = SAM_FOR_BOXES, progress: bool = True,
                 masks_file: Path | None = None, weights_dir: Path | None = None):
        """`masks_file`: masks computed elsewhere in this class's file format, for exactly these records
        (`finetune-sam`'s out-of-fold masks, where each lesion's mask comes from a decoder that never saw it)."""
        self.records, self.seed, self.sam_name, self.progress = records, seed, sam_name, progress
        self.weights_dir = weights_dir or WEIGHTS_DIR
        self._data: dict[str, np.ndarray] | None = None
        if masks_file is not None:
            self.path = Path(masks_file)
            ids = np.load(self.path)["lesion_ids"] if self.path.is_file() else None
            if ids is None or list(ids) != [r.lesion_id for r in records]:
                raise ValueError(f"{self.path} holds no masks for these {len(records)} lesions "
                                 "(made by finetune-sam on another ROI table?)")
            return
        from models.encoder_runtime import identity
        from models.sam import sam_identity
        # the image encoder's runtime and precision too (issue 28): cached masks come from the path in use
        self._ident = json.dumps([seed, sam_name, sam_identity(sam_name, self.weights_dir), identity(sam_name)])
        key = hashlib.sha256(self._ident.encode())
        for r in records:
            key.update(f"{r.image_path}|{r.box}\n".encode())
        self.path = cache_root() / "sam" / f"{key.hexdigest()[:20]}.npz"

    @property
    def identity(self) -> str:
        """What makes each lesion's mask what it is, the lesion itself aside."""
        return getattr(self, "_ident", None) or f"{self.path}|{sha256_file(self.path)}"

    def subset(self, records: list[RoiRecord]) -> "SamViews":
        """The same SAM's views of some of these lesions (from the per-lesion cache where computed)."""
        if not hasattr(self, "_ident"):
            raise ValueError("masks from a file cover exactly their own lesions")
        return SamViews(records, self.seed, self.sam_name, self.progress, weights_dir=self.weights_dir)

    def _lesion_path(self, r: RoiRecord) -> Path:
        key = hashlib.sha256(f"{self._ident}|{r.image_path}|{r.box}".encode()).hexdigest()[:24]
        return cache_root() / "sam-lesions" / key[:2] / f"{key}.npz"

    def _compute(self) -> dict[str, np.ndarray]:
        from contextlib import nullcontext

        from models.sam import load_sam
        from models.segmentation import SamSegmenter
        from training.rois.sam_embeddings import writer_for
        cached = [self._lesion_path(r).is_file() for r in self.records]
        # the served SAM probe reads the TinyViT stages of this same encoder forward (PROBE_SPEC)
        stages = encoder_only(STAGES) if self.sam_name in EXPORTED else None
        segmenter = None if all(cached) else SamSegmenter(load_sam(self.sam_name, weights_dir=self.weights_dir),
                                                          stages=stages or ())
        # the SAM probe's embeddings come from this same pass, when it encodes every image
        writer = None if any(cached) else writer_for(self.records, self.sam_name)
        lesions = []
        with writer or nullcontext():
            for r, hit in zip(tqdm(self.records, desc=f"{self.sam_name} masks", disable=not self.progress), cached):
                path = self._lesion_path(r)
                if hit:
                    lesions.append(dict(np.load(path)))
                    continue
                rgb = np.asarray(Image.open(r.image_path).convert("RGB"))
                shape = rgb.shape[:2]
                embedding = segmenter.encode(rgb)
                if writer:
                    writer.add(embedding)
                seg_box, mask, score = outline_from_box(segmenter, embedding, drawn_box(r, shape, self.seed), shape)
                truth = expert_mask(r, shape)
                lesion = {"mask": np.packbits(mask), "box": np.asarray(seg_box, np.float32),
                          "score": np.float32(score),
                          "dice": np.float32(2 * (mask & truth).sum() / max(1, mask.sum() + truth.sum()))}
                if stages is not None:
                    lesion["probe"] = probe_input(segmenter, embedding, mask, seg_box, *PROBE_SPEC).numpy()
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
                np.savez(tmp, **lesion)
                tmp.replace(path)
                lesions.append(lesion)
        out: dict[str, np.ndarray] = {f"m{i}": le["mask"] for i, le in enumerate(lesions)}
        out |= {"boxes": np.asarray([le["box"] for le in lesions], np.float32).reshape(-1, 4),
                "scores": np.asarray([le["score"] for le in lesions], np.float32),
                "dice": np.asarray([le["dice"] for le in lesions], np.float32)}
        if lesions and all("probe" in le for le in lesions):  # lesions cached before these were kept lack them
            out["probe"] = np.stack([le["probe"] for le in lesions])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp.npz")  # another process may be computing the same masks
        np.savez_compressed(tmp, **out)
        tmp.replace(self.path)
        return out

    @property
    def data(self) -> dict[str, np.ndarray]:
        if self._data is None:
            self._data = dict(np.load(self.path)) if self.path.is_file() else self._compute()
        return self._data

    def view(self, i: int, shape: tuple[int, int]) -> tuple[tuple[float, ...], np.ndarray]:
        bits = self.data[f"m{i}"]
        mask = np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)
        return tuple(float(v) for v in self.data["boxes"][i]), mask

    def dice(self) -> np.ndarray:
        return self.data["dice"]

    def probe_rows(self, margin: float, regions: tuple, iou_token: bool, stages: tuple) -> np.ndarray | None:
        """(N, probe_size): the served SAM probe's features of every lesion's clean image, from the outline
        pass's own encoder forward; None for another probe (`margin`, `regions`, ...: PROBE_SPEC's order) or
        lesions outlined before these were kept. They save `sam-probe` its clean view's encoder pass."""
        if (margin, tuple(regions), iou_token, tuple(stages)) != PROBE_SPEC or "probe" not in self.data:
            return None
        return self.data["probe"]


def load_inputs(records: list[RoiRecord], source: str = "expert", channels: int = 1, size: int = INPUT_SIZE,
                margin: float = ROI_MARGIN, seed: int = 0, progress: bool = True, sam_name: str = SAM_FOR_BOXES,
                sam_masks: Path | None = None, weights_dir: Path | None = None,
                mask_of: Literal["source", "expert"] = "source", intensity: str = "raw") -> np.ndarray:
    """Classifier inputs of every record: (N, size, size) uint8 for 1 channel, (N, 2, size, size) with the mask.

    For the `sam` source the masks come from `sam_name` or, given, from the `sam_masks` file (SamViews); for
    `auto` from the localiser of `weights_dir` (default models/weights) outlined by `sam_name` (AutoViews),
    with a blank crop where no lesion was found.
    `mask_of="expert"`: the second channel is the expert mask, cropped in the source's frame (training targets)."""
    if source not in ROI_SOURCES:
        raise ValueError(f"unknown ROI source {source!r}; known: {', '.join(ROI_SOURCES)}")
    if source == "expert" and channels == 1 and intensity == "raw":
        from training.rois.crops import load_rois
        return load_rois(records, size, margin, progress)
    sam = (SamViews(records, seed, sam_name, progress, sam_masks, weights_dir) if source == "sam" else
           auto_views(records, sam_name, weights_dir, progress) if source == "auto" else None)
    key = hashlib.sha256(json.dumps([source, channels, size, margin, seed] + ([mask_of] if mask_of != "source" else [])
                                    + ([intensity] if intensity != "raw" else [])).encode())
    if source == "auto":
        key.update(sam.identity.encode())
    elif sam is not None:
        key.update(str(sam.path).encode() + (sha256_file(sam.path).encode() if sam_masks else b""))
    for r in records:
        key.update(f"{r.image_path}|{r.box}|{r.mask_paths}\n".encode())
    path = cache_root() / "inputs" / f"{key.hexdigest()[:20]}.npy"
    out = np.load(path) if path.is_file() else _crop_all(records, source, channels, size, margin, seed, progress, path,
                                                         sam, mask_of, intensity)
    return out[:, 0] if channels == 1 else out


def auto_views(records: list[RoiRecord], sam_name: str, weights_dir: Path | None, progress: bool) -> "AutoViews":
    from training.rois.auto_views import AutoViews
    return AutoViews(records, sam_name, weights_dir, progress)


def _crop_all(records: list[RoiRecord], source: str, channels: int, size: int, margin: float, seed: int,
              progress: bool, path: Path, sam: "SamViews | AutoViews | None", mask_of: str = "source",
              intensity: str = "raw") -> np.ndarray:
    out = np.zeros((len(records), channels, size, size), np.uint8)
    # auto: a lesion whose image got "no lesion found" keeps a blank crop, never another source's
    found = sam.found() if source == "auto" else np.ones(len(records), bool)
    for i, r in enumerate(tqdm(records, desc=f"{source} crops", disable=not progress, leave=False)):
        if not found[i]:
            continue
        gray = load_gray(r.image_path)
        box, mask = lesion_view(r, i, source, gray.shape, seed, sam)
        if mask_of == "expert":
            mask = expert_mask(r, gray.shape)
        out[i] = classifier_input(gray, box, mask if channels == 2 else None, size, margin, intensity)
    save_atomic(path, out)
    return out
