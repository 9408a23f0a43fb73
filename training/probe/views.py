"""The SAM probe's features of every lesion in one view, from a fresh pass through SAM's image encoder.

A view says how each image is changed before it is encoded (`change`: burned-in marks, a scanner shift,
or nothing) and where the lesion is in it: for a changed image SAM outlines it again from the drawn
box, as the server would; for the clean image the ROI source's own box and mask (`source`). The pass
is the slow part of `sam-probe`, so it runs in worker processes with one torch thread each: on this
2-core CPU two of them take about 11 min for BUSI's 647 images, one process on two threads took 14-18
min. The caller caches the features (training.probe.sam_probe.view_features).
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from models.probe_head import Region, Stage, encoder_only, probe_size
from models.sam_probe import probe_input
from training.datasets.roi_table import RoiRecord
from training.rois.sources import SamViews, drawn_box, lesion_view, outline_from_box

MIN_PER_WORKER = 32  # fewer images than this per worker: starting the workers costs more than it saves


@dataclass(frozen=True)
class View:
    name: str
    change: Callable[[RoiRecord, np.ndarray], np.ndarray] | None = None  # picklable: workers receive it
    source: str | None = None  # None: SAM outlines the changed image from the drawn box
    sam: SamViews | None = None  # the `sam` source's masks


@dataclass(frozen=True)
class Job:
    records: list[RoiRecord]
    view: View
    sam_name: str
    margin: float
    regions: tuple[Region, ...]
    seed: int
    iou_token: bool
    stages: tuple[Stage, ...]


def lesion_row(job: Job, segmenter, i: int) -> np.ndarray:
    """Probe features of lesion `i` in the job's view."""
    from PIL import Image
    r, view = job.records[i], job.view
    rgb = np.asarray(Image.open(r.image_path).convert("RGB"))
    shape = rgb.shape[:2]
    emb = segmenter.encode(view.change(r, rgb) if view.change else rgb)
    if view.source is None:
        box, mask, _ = outline_from_box(segmenter, emb, drawn_box(r, shape, job.seed), shape)
    else:
        box, mask = lesion_view(r, i, view.source, shape, job.seed, view.sam)
    return probe_input(segmenter, emb, mask, box, job.margin, job.regions, job.iou_token, job.stages).numpy()


def segmenter_for(job: Job):
    from models.sam import load_sam
    from models.segmentation import SamSegmenter
    return SamSegmenter(load_sam(job.sam_name), stages=encoder_only(job.stages))


_worker: dict = {}


def _start_worker(job: Job) -> None:
    torch.set_num_threads(1)
    _worker.update(job=job, segmenter=segmenter_for(job))


def _worker_row(i: int) -> tuple[int, np.ndarray]:
    return i, lesion_row(_worker["job"], _worker["segmenter"], i)


def default_workers(n: int) -> int:
    """One worker per torch thread this process may use (`--threads 1` where jobs share the cores)."""
    return max(1, min(os.cpu_count() or 1, torch.get_num_threads(), n // MIN_PER_WORKER))


def view_rows(job: Job, progress: bool = True, workers: int | None = None) -> np.ndarray:
    """(N, probe_size) float32: every lesion's features in the job's view, over `workers` processes
    (default: one per core, each with at least MIN_PER_WORKER images; 1 runs here)."""
    from tqdm import tqdm
    n = len(job.records)
    workers = default_workers(n) if workers is None else workers
    out = np.zeros((n, probe_size(job.regions, job.iou_token, job.stages)), np.float32)
    bar = tqdm(total=n, desc=f"{job.view.name} images", disable=not progress)
    if workers <= 1:
        segmenter = segmenter_for(job)
        for i in range(n):
            out[i] = lesion_row(job, segmenter, i)
            bar.update()
    else:  # spawned, not forked: a forked child inherits the parent's torch thread pool state
        with ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _start_worker, (job,)) as pool:
            for done in as_completed([pool.submit(_worker_row, i) for i in range(n)]):
                i, row = done.result()
                out[i] = row
                bar.update()
    bar.close()
    return out
