"""The models the server runs and the one queue they run on.

All model work (SAM encoder and decoder, classifier, Grad-CAM) runs on a single inference thread, in
arrival order: on a CPU torch already uses every core for one image, so running two at once only makes
both slower. At most `queue_size` jobs wait; beyond that a request is answered 503 with Retry-After
at once instead of timing out later.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import numpy as np
import torch

from models.gradcam import grad_cam
from models.manifest import ModelEntry, WeightsError, load_classifier, load_sam_probe, read_manifest
from models.preprocessing import classifier_input, normalize, to_gray
from models.sam import load_sam
from models.sam_probe import SamProbe, encoder_only, fuse, probe_input
from models.segmentation import Embedding, Prompt, SamSegmenter, Segmentation
from server.embedding_cache import EmbeddingCache
from server.errors import ApiError
from server.settings import Settings

SERVED = {"us": "classifier-us", "dm": "classifier-dm"}
T = TypeVar("T")


@dataclass
class Classification:
    label: str
    p_malignant: float
    threshold: float
    roi: np.ndarray  # 128x128 uint8, exactly what the classifier saw
    cam: np.ndarray  # 128x128 in [0, 1]
    entry: ModelEntry


@dataclass
class Timer:
    """Per-stage wall times in ms, in the order the stages ran."""

    ms: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.ms[name] = round(self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000, 2)


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.device = torch.device("cuda" if settings.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if settings.device == "auto" else settings.device))
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.classifiers: dict[str, tuple[torch.nn.Module, ModelEntry]] = {}
        self.probes: dict[str, SamProbe] = {}
        self.segmenters: dict[str, SamSegmenter] = {}
        self.routes: dict[str, dict[str, str]] = {}
        self.cache = EmbeddingCache(int(settings.cache_mb * 1024 * 1024))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.pending = 0
        self.seconds_per_job = 1.0  # running mean, for Retry-After

    # loading
    def load(self) -> None:
        """Every served classifier and every routed SAM, verified; WeightsError names what is wrong."""
        read_manifest(self.settings.weights)
        for modality, name in SERVED.items():
            self.classifiers[modality] = load_classifier(name, self.settings.weights, self.device)
            probe = load_sam_probe(self.classifiers[modality][1], self.settings.weights, self.device)
            if probe is not None:
                self.probes[modality] = probe
        self.routes = self.settings.routes({m: e.input.sam for m, (_, e) in self.classifiers.items()})
        amg = {"points_per_side": self.settings.amg_points_per_side}
        for name in sorted(self.sam_names()):
            sam = load_sam(name, self.settings.sam_checkpoints.get(name), self.device, self.settings.sam_sha256.get(name),
                           weights_dir=self.settings.weights)
            try:
                self.segmenters[name] = SamSegmenter(sam, amg, self.probe_stages(name), self.settings.encoder_runtime,
                                                     self.settings.encoder_precision)
            except ValueError as err:
                raise WeightsError(f"a SAM probe reads {name}'s encoder: {err}") from err

    def probe_stages(self, sam: str) -> tuple[str, ...]:
        """The encoder stages the probes on `sam`'s embedding read; every embedding of it keeps them, so
        the route's cached embedding serves the probe too."""
        specs = [e.sam_probe for _, e in self.classifiers.values() if e.sam_probe and e.sam_probe.sam == sam]
        return tuple(sorted({s for spec in specs for s in encoder_only(spec.stages)}))

    def sam_names(self) -> set[str]:
        probes = {e.sam_probe.sam for _, e in self.classifiers.values() if e.sam_probe}
        return {name for route in self.routes.values() for name in route.values()} | probes

    @property
    def ready(self) -> bool:
        return set(self.classifiers) == set(SERVED) and bool(self.routes) and set(self.segmenters) == self.sam_names()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # the queue
    async def run(self, fn: Callable[..., T], *args) -> T:
        if self.pending >= self.settings.queue_size:
            retry = max(1, round(self.pending * self.seconds_per_job))
            raise ApiError(503, "busy", f"{self.pending} analyses are queued; retry in about {retry} s",
                           {"Retry-After": str(retry)})
        self.pending += 1
        start = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self.pending -= 1
            self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (time.perf_counter() - start)

    # the work (called on the inference thread)
    def route(self, modality: str, kind: str) -> SamSegmenter:
        return self.segmenters[self.routes[modality][kind]]

    def embedding(self, sha256: str, rgb: np.ndarray, segmenter: SamSegmenter, timer: Timer) -> Embedding:
        cached = self.cache.get(sha256, segmenter.name)
        if cached is not None:
            timer.ms.setdefault("encode", 0.0)
            return cached
        embedding = timer.stage("encode", lambda: segmenter.encode(rgb))
        self.cache.put(sha256, embedding)
        return embedding

    def segment(self, sha256: str, rgb: np.ndarray, modality: str, prompt: Prompt, timer: Timer) -> Segmentation:
        segmenter = self.route(modality, prompt.kind)
        if prompt.kind == "auto":
            return timer.stage("auto_segment", lambda: segmenter.automatic(rgb))
        embedding = self.embedding(sha256, rgb, segmenter, timer)
        return timer.stage("decode", lambda: segmenter.predict(embedding, prompt))

    def classify(self, rgb: np.ndarray, modality: str, seg: Segmentation, timer: Timer,
                 sha256: str | None = None) -> Classification:
        """The crop training used (models.preprocessing.classifier_input), around SAM's mask; with a SAM
        probe, its logit from the image's embedding (cached under `sha256`, shared with the route's SAM)."""
        model, entry = self.classifiers[modality]
        spec = entry.input
        inputs = timer.stage("crop", lambda: classifier_input(
            to_gray(rgb), seg.box, seg.mask if spec.channels == 2 else None, spec.size, spec.roi_margin,
            spec.intensity))
        roi = inputs[0]
        x = normalize(inputs[None]).to(self.device)

        def logits() -> torch.Tensor:
            with torch.inference_mode():
                return model(x)
        out = timer.stage("classify", logits)
        if modality in self.probes:
            out = self.with_probe(out, rgb, modality, seg, timer, sha256)
        p = float(torch.softmax(out / entry.temperature, dim=1)[0, 1])
        cam = timer.stage("gradcam", lambda: grad_cam(model, x.clone())[0].cpu().numpy())
        label = entry.classes[1] if p >= entry.threshold else entry.classes[0]
        return Classification(label, p, entry.threshold, roi, cam, entry)

    def with_probe(self, logits: torch.Tensor, rgb: np.ndarray, modality: str, seg: Segmentation, timer: Timer,
                   sha256: str | None) -> torch.Tensor:
        entry = self.classifiers[modality][1]
        spec = entry.sam_probe
        segmenter = self.segmenters[spec.sam]
        embedding = (self.embedding(sha256, rgb, segmenter, timer) if sha256
                     else timer.stage("encode", lambda: segmenter.encode(rgb)))

        def probe_logit() -> torch.Tensor:
            f = probe_input(segmenter, embedding, seg.mask, seg.box, entry.input.roi_margin, spec.regions,
                            spec.iou_token, spec.stages)
            with torch.inference_mode():
                return self.probes[modality](f[None].to(self.device))
        return fuse(logits, timer.stage("sam_probe", probe_logit), spec.alpha)
