"""The `auto` ROI source: where the server's `{}` prompt puts each lesion, without anyone drawing a box.

Per lesion, as `server.engine.Engine.locate` does: the served lesion localiser (`localiser-<modality>` of a
weights folder's manifest, models.localiser) on LiteMedSAM's image embedding of the lesion's image (the
embedding cache the `sam` source fills in its own encoder pass, training.rois.sam_embeddings: no second
encoder loop), its best candidate outlined by the box route's SAM (`Localiser.outline`). The crop is then
the server's (models.preprocessing.classifier_input around the outline's box, with the outline).

An image whose best score is under the manifest threshold, or whose best box SAM outlines as nothing, is
"no lesion found" on the server (422): its lesions have no auto crop here either (`found` False), never
another crop in its place. Per lesion also: `hit`, the outline's IoU with that lesion's expert mask >= 0.5
(train-localiser's "detected"), and the box IoU with the expert box.

Results are cached per lesion (like SamViews), so a subset of the lesions (those found, one site) reuses
them without the embeddings. The cached embedding is stored fp16, the server's is not: a candidate box can
move by a pixel where a score sits on the region level (tests/test_auto_roi.py measures the agreement).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.manifest import WEIGHTS_DIR
from training.common.cache import cache_root
from training.datasets.roi_table import RoiRecord

HIT_IOU = 0.5  # train-localiser's "detected": the outline's IoU with the experts' mask


class NotFound(ValueError):
    """The lesion's image got "no lesion found": there is no auto crop to give."""


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def localiser_entry(weights_dir: Path, modality: str):
    """The weights folder's manifest entry for the localiser of `modality`; ValueError if it serves none."""
    from models.manifest import read_manifest
    role = f"localiser-{modality}"
    entries = read_manifest(weights_dir).localisers
    if role not in entries:
        raise ValueError(f"{Path(weights_dir) / 'manifest.json'} serves no {role} (it has: "
                         f"{', '.join(entries) or 'no localiser'}): the auto ROI source needs one")
    return entries[role]


class AutoViews:
    """The served localiser's outline of every record's image (or its absence), computed once per lesion."""

    def __init__(self, records: list[RoiRecord], sam_name: str = "litemedsam", weights_dir: Path | None = None,
                 progress: bool = True):
        """`sam_name`: the box route's SAM that outlines the best box (the classifier's `input.sam`, as the
        server routes boxes); the embedding is the localiser's own SAM's (manifest `sam`)."""
        from models.encoder_runtime import identity
        from models.sam import sam_identity
        if not records:
            raise ValueError("no lesions to locate")
        modalities = {r.modality for r in records}
        if len(modalities) > 1:
            raise ValueError(f"the auto ROI source takes one modality at a time, not {', '.join(sorted(modalities))}")
        self.records, self.sam_name, self.progress = records, sam_name, progress
        self.weights_dir = Path(weights_dir or WEIGHTS_DIR)
        self.modality = records[0].modality
        self.entry = entry = localiser_entry(self.weights_dir, self.modality)
        # the localiser's file and settings, the outlining SAM, the encoder's runtime: what each outline depends on
        self._ident = json.dumps(["auto", entry.sha256, entry.threshold, entry.level, entry.limit, entry.sam,
                                  sam_name, sam_identity(sam_name, self.weights_dir), identity(entry.sam)])
        self._data: list[dict] | None = None

    @property
    def identity(self) -> str:
        return self._ident

    def subset(self, records: list[RoiRecord]) -> "AutoViews":
        return AutoViews(records, self.sam_name, self.weights_dir, self.progress)

    def _lesion_path(self, r: RoiRecord) -> Path:
        key = hashlib.sha256(f"{self._ident}|{r.image_path}|{r.box}|{r.mask_paths}".encode()).hexdigest()[:24]
        return cache_root() / "auto-lesions" / key[:2] / f"{key}.npz"

    def _compute(self) -> list[dict]:
        paths = [self._lesion_path(r) for r in self.records]
        todo = [i for i, p in enumerate(paths) if not p.is_file()]
        if todo:
            self._locate(todo, paths)
        return [dict(np.load(p)) for p in paths]

    def _locate(self, todo: list[int], paths: list[Path]) -> None:
        from models.manifest import load_localiser
        from models.sam import load_sam
        from models.segmentation import Embedding, NoLesionFound, Prompt, PromptError, SamSegmenter
        from training.rois.sam_embeddings import Embeddings
        from training.rois.sources import expert_mask
        localiser = load_localiser(self.entry, self.weights_dir)  # verified against its sha256
        # Embeddings are cached per list of records: the whole list is the one the sam source's encoder pass
        # filled; a few new lesions get a list (and an encoder pass) of their own.
        todo_records = [self.records[i] for i in todo]
        embeddings = Embeddings(self.records if len(todo) == len(self.records) else todo_records, self.entry.sam,
                                self.progress)
        segmenter = SamSegmenter(load_sam(self.sam_name, weights_dir=self.weights_dir))
        for k, i in enumerate(tqdm(todo, desc="auto outlines", disable=not self.progress)):
            r = self.records[i]
            shape = tuple(embeddings.original_size[k])
            emb = Embedding(segmenter.name, embeddings[k], shape, tuple(embeddings.input_size[k]),
                            runtime=segmenter.runtime, precision=segmenter.precision)
            located = localiser.locate(emb.features, emb.input_size, emb.original_size)
            found = located.found
            best = found[0].score if found else (located.candidates[0].score if located.candidates else located.peak)
            lesion = {"found": np.bool_(False), "score": np.float32(best), "candidates": np.int16(len(found)),
                      "box": np.zeros(4, np.float32), "mask": np.zeros(0, np.uint8),
                      "iou": np.float32(0), "box_iou": np.float32(0), "hit": np.bool_(False)}
            if found:
                outlines: list = []

                def predict(box: list[float]) -> np.ndarray:
                    # as Engine.outline: an empty outline is "no lesion found", not an error
                    try:
                        outlines.append(segmenter.predict(emb, Prompt(box=[float(v) for v in box])))
                    except (NoLesionFound, PromptError):
                        return np.zeros(shape, bool)
                    return outlines[-1].mask
                mask = localiser.outline(found[0], predict)
                if mask.any():
                    seg = next(o for o in outlines if o.mask is mask)
                    truth = expert_mask(r, shape)
                    iou = float((mask & truth).sum() / max(1, (mask | truth).sum()))
                    lesion.update(found=np.bool_(True), box=np.asarray(seg.box, np.float32), mask=np.packbits(mask),
                                  iou=np.float32(iou), box_iou=np.float32(box_iou(seg.box, r.box)),
                                  hit=np.bool_(iou >= HIT_IOU))
            path = paths[i]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **lesion)
            tmp.replace(path)

    @property
    def data(self) -> list[dict]:
        if self._data is None:
            self._data = self._compute()
        return self._data

    def found(self) -> np.ndarray:
        return np.array([bool(d["found"]) for d in self.data])

    def hit(self) -> np.ndarray:
        return np.array([bool(d["hit"]) for d in self.data])

    def column(self, name: str) -> np.ndarray:
        """One per-lesion figure: score (best candidate's, or the peak), candidates, iou, box_iou."""
        return np.array([d[name].item() for d in self.data])

    def view(self, i: int, shape: tuple[int, int]) -> tuple[tuple[float, ...], np.ndarray]:
        """Lesion `i`'s auto box and outline; NotFound where its image got "no lesion found"."""
        d = self.data[i]
        if not d["found"]:
            r = self.records[i]
            raise NotFound(f"{r.lesion_id}: no lesion found automatically in {r.image_path} "
                           f"(score {float(d['score']):.3f})")
        mask = np.unpackbits(d["mask"], count=shape[0] * shape[1]).reshape(shape).astype(bool)
        return tuple(float(v) for v in d["box"]), mask
