"""SAM image embeddings of every record, computed once and memory-mapped (BRANET_CACHE/sam-embeddings).

The image encoder is most of a SAM's cost (about 2 s an image on one thread here). `finetune-sam`
trains decoders on these embeddings and `sam-probe` averages them around each lesion. `SamViews`
(training.rois.sources), which outlines every lesion from its drawn box, fills this cache in the same
encoder pass (`EmbeddingWriter`), so the served weights encode each image once. A cache file is kept
per list of records, and each file names its images: another list (the localiser's images, a site of
two) copies the rows of images some file already holds and encodes only the others.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.common.cache import cache_root
from training.datasets.roi_table import RoiRecord

SHAPE = (256, 64, 64)  # LiteMedSAM's and MobileSAM's image embedding, stored fp16


def encoder_identity(sam_name: str) -> str:
    """What makes an image's embedding what it is, the image aside: the SAM, its checkpoint, the runtime."""
    from models.encoder_runtime import identity
    from models.sam import SAM_MODELS
    return json.dumps([sam_name, SAM_MODELS[sam_name].sha256, identity(sam_name)])


def cache_path(records: list[RoiRecord], sam_name: str) -> Path | None:
    """Where these records' embeddings by packaged SAM `sam_name` are cached; None for other SAMs (a
    fine-tuned decoder's name: its encoder is its base's)."""
    from models.sam import SAM_MODELS
    if sam_name not in SAM_MODELS:
        return None
    key = hashlib.sha256(encoder_identity(sam_name).encode())
    for r in records:
        key.update(f"{r.image_path}\n".encode())
    return cache_root() / "sam-embeddings" / f"{key.hexdigest()[:20]}.npy"


class EmbeddingWriter:
    """Fills one cache file, image by image in record order; it appears only once every image is in."""

    def __init__(self, path: Path, images: list[str], encoder: str):
        """`images`: the records' image paths, in order; `encoder`: `encoder_identity` of the SAM."""
        self.path, self.images, self.encoder, self.n = path, images, encoder, len(images)
        self.tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")  # another process may be writing the same cache
        self.original: list[list[int]] = []
        self.inputs: list[list[int]] = []

    def __enter__(self) -> EmbeddingWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.out = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float16, shape=(self.n, *SHAPE))
        return self

    def add(self, embedding) -> None:
        """One models.segmentation.Embedding, the next record's."""
        self.out[len(self.original)] = embedding.features[0].to(torch.float16).cpu().numpy()
        self.original.append(list(embedding.original_size))
        self.inputs.append(list(embedding.input_size))

    def __exit__(self, exc_type, *_) -> None:
        self.out.flush()
        del self.out
        if exc_type is not None or len(self.original) != self.n:
            self.tmp.unlink(missing_ok=True)
            return
        self.path.with_suffix(".json").write_text(json.dumps({"original": self.original, "input": self.inputs,
                                                              "encoder": self.encoder, "images": self.images}))
        self.tmp.replace(self.path)


def writer_for(records: list[RoiRecord], sam_name: str) -> EmbeddingWriter | None:
    """A writer for these records' embeddings by `sam_name`, or None if they are cached already or
    `sam_name` is not a packaged SAM."""
    path = cache_path(records, sam_name)
    if path is None or is_cached(path):
        return None
    return EmbeddingWriter(path, [str(r.image_path) for r in records], encoder_identity(sam_name))


def is_cached(path: Path) -> bool:
    return path.is_file() and path.with_suffix(".json").is_file()


def cached_rows(folder: Path, encoder: str) -> dict[str, tuple[np.ndarray, tuple[int, int], tuple[int, int]]]:
    """Every image some complete cache file in `folder` holds for `encoder` (`encoder_identity`): its
    embedding (memory-mapped), original and input size, by image path."""
    held = {}
    for index in sorted(folder.glob("*.json")):
        try:
            meta = json.loads(index.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # another process's file half-way through a write, or a foreign one: not a source
        if meta.get("encoder") != encoder or not is_cached(index.with_suffix(".npy")):
            continue  # files from before images were named, or from another encoder
        features = np.load(index.with_suffix(".npy"), mmap_mode="r")
        for k, image in enumerate(meta["images"]):
            held.setdefault(image, (features[k], tuple(meta["original"][k]), tuple(meta["input"][k])))
    return held


class Embeddings:
    """Packaged SAM `sam_name`'s image embeddings (fp16, 256x64x64) of every record, computed once if
    not cached yet, memory-mapped."""

    def __init__(self, records: list[RoiRecord], sam_name: str, progress: bool = True):
        self.path = cache_path(records, sam_name)
        if self.path is None:
            raise ValueError(f"no cached embeddings for {sam_name!r}: only packaged SAMs' encoders are cached")
        self.records, self.sam_name, self.progress = records, sam_name, progress
        if not is_cached(self.path):
            self._compute()
        self.features = np.load(self.path, mmap_mode="r")
        sizes = json.loads(self.path.with_suffix(".json").read_text())
        self.original_size = [tuple(s) for s in sizes["original"]]
        self.input_size = [tuple(s) for s in sizes["input"]]

    def _compute(self) -> None:
        from PIL import Image

        from models.sam import load_sam
        from models.segmentation import Embedding, SamSegmenter
        encoder = encoder_identity(self.sam_name)
        held = cached_rows(self.path.parent, encoder)
        segmenter = None
        with EmbeddingWriter(self.path, [str(r.image_path) for r in self.records], encoder) as writer:
            for r in tqdm(self.records, desc=f"{self.sam_name} embeddings", disable=not self.progress):
                if str(r.image_path) in held:
                    features, original, inputs = held[str(r.image_path)]
                    writer.add(Embedding(self.sam_name, torch.from_numpy(np.array(features))[None], original, inputs))
                    continue
                segmenter = segmenter or SamSegmenter(load_sam(self.sam_name))
                with Image.open(r.image_path) as im:
                    writer.add(segmenter.encode(np.asarray(im.convert("RGB"))))

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.features[i], dtype=np.float32))[None]
