"""The models the server runs and the one queue they run on.

All model work (SAM encoder and decoder, classifier, Grad-CAM) runs on a single inference thread, in
arrival order: on a CPU torch already uses every core for one image, so running two at once only makes
both slower. At most `queue_size` jobs wait; beyond that a request is answered 503 with Retry-After
at once instead of timing out later.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import numpy as np
import torch

from models.gradcam import logits_and_cam
from models.localiser import Localiser
from models.manifest import (LocaliserEntry, ModelEntry, WeightsError, load_classifier, load_localiser, load_sam_probe,
                             read_manifest)
from models.preprocessing import classifier_input, normalize, to_gray
from models.sam import LoadedSam, load_sam
from models.probe_head import SamProbe, encoder_only, fuse
from models.sam_probe import probe_input
from models.segmentation import AutoMode, Embedding, NoLesionFound, Prompt, PromptError, SamSegmenter, Segmentation
from server.embedding_cache import EmbeddingCache
from server.errors import ApiError
from server.settings import Settings

SERVED = {"us": "classifier-us", "dm": "classifier-dm"}
LOCALISERS = {"us": "localiser-us", "dm": "localiser-dm"}  # optional roles: a modality without one keeps sam-amg
LOADED_VERSIONS = 6  # classifier versions kept loaded (two roles: the active, the previous and one more each)
T = TypeVar("T")


@dataclass
class Classification:
    label: str
    p_malignant: float
    threshold: float
    roi: np.ndarray  # 128x128 uint8, exactly what the classifier saw
    cam: np.ndarray  # 128x128 in [0, 1]
    entry: ModelEntry
    version: str = ""  # the classifier's version id in the models folder
    sam: LoadedSam | None = None  # the SAM that outlined the lesion, in the same Served
    localiser: LocaliserEntry | None = None  # the localiser that placed the box (auto_mode localiser)
    localiser_version: str = ""


def probe_stages(classifiers: dict[str, tuple[torch.nn.Module, ModelEntry]], sam: str) -> tuple[str, ...]:
    """The encoder stages the probes on `sam`'s embedding read; every embedding of it keeps them, so
    the route's cached embedding serves the probe too."""
    specs = [e.sam_probe for _, e in classifiers.values() if e.sam_probe and e.sam_probe.sam == sam]
    return tuple(sorted({s for spec in specs for s in encoder_only(spec.stages)}))


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


@dataclass(frozen=True)
class Served:
    """Everything one analysis reads, swapped whole (server.model_manager): a job takes `engine.served` once
    and finishes on it, so a request in flight never mixes two versions."""

    classifiers: dict[str, tuple[torch.nn.Module, ModelEntry]]
    probes: dict[str, SamProbe]
    segmenters: dict[str, SamSegmenter]
    routes: dict[str, dict[str, str]]
    versions: dict[str, str] = field(default_factory=dict)  # modality -> the classifier's version id
    sam_keys: dict[str, tuple] = field(default_factory=dict)  # SAM name -> what its embeddings depend on
    # modality -> its lesion localiser (models.localiser) and manifest entry, and the localiser's version id
    localisers: dict[str, tuple[Localiser, LocaliserEntry]] = field(default_factory=dict)
    localiser_versions: dict[str, str] = field(default_factory=dict)

    def role_versions(self) -> dict[str, str]:
        """Per role (classifier-us, localiser-us, ...) the version id served."""
        return {**{SERVED[m]: v for m, v in self.versions.items()},
                **{LOCALISERS[m]: v for m, v in self.localiser_versions.items()}}


EMPTY = Served({}, {}, {}, {})


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.device = torch.device("cuda" if settings.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if settings.device == "auto" else settings.device))
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.served: Served = EMPTY
        self.serial = -1  # the models folder's active.json serial that `served` reflects
        self._loaded: dict[tuple[str, str, str], tuple] = {}  # (role, version, folder) -> classifier, entry, probe
        self.cache = EmbeddingCache(int(settings.cache_mb * 1024 * 1024))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.pending = 0
        self.seconds_per_job = 1.0  # running mean, for Retry-After

    # what is served now (read by routes, metrics and benches)
    @property
    def classifiers(self) -> dict[str, tuple[torch.nn.Module, ModelEntry]]:
        return self.served.classifiers

    @property
    def probes(self) -> dict[str, SamProbe]:
        return self.served.probes

    @property
    def segmenters(self) -> dict[str, SamSegmenter]:
        return self.served.segmenters

    @property
    def routes(self) -> dict[str, dict[str, str]]:
        return self.served.routes

    # loading
    def load(self) -> None:
        """The active version of every role in the models folder (the committed weights on a fresh one), and
        every routed SAM, verified; WeightsError names what is wrong."""
        from server.model_registry import ModelRegistry
        read_manifest(self.settings.weights)
        registry = ModelRegistry(self.settings.models_root)
        registry.register_committed(self.settings.weights)
        serial = registry.serial()
        self.served = self.build({role: (v.id, d) for role, (v, d) in registry.active_dirs().items()})
        self.serial = serial

    def build(self, dirs: dict[str, tuple[str, Path]], reuse: Served | None = None, keep: bool = True) -> Served:
        """A Served from each role's (version id, weights folder); SAMs whose embeddings would not change
        are taken from `reuse` (the one served now) instead of being loaded again. `keep`: remember the
        classifiers loaded (False for a candidate still being validated)."""
        classifiers, probes, versions, decoders, bases = {}, {}, {}, {}, {}
        for modality, role in SERVED.items():
            if role not in dirs:
                raise WeightsError(f"no active version of {role} in the models folder")
            version_id, weights = dirs[role]
            key = (role, version_id, str(weights))
            loaded = self._loaded.pop(key, None)
            if loaded is None:
                model, entry = load_classifier(role, weights, self.device)
                loaded = (model, entry, load_sam_probe(entry, weights, self.device))
            # Versions never change once stored (and were verified when loaded): the last few loaded are kept,
            # so swapping back and forth (a rollback) loads nothing.
            if keep:
                self._loaded[key] = loaded
            while len(self._loaded) > LOADED_VERSIONS:
                self._loaded.pop(next(iter(self._loaded)), None)
            classifiers[modality] = loaded[:2]
            if loaded[2] is not None:
                probes[modality] = loaded[2]
            versions[modality] = version_id
            for name, decoder in read_manifest(weights).sam_decoders.items():
                decoders[name] = (weights, decoder.sha256)
                bases[name] = decoder.base
        routes = self.settings.routes({m: e.input.sam for m, (_, e) in classifiers.items()})
        probe_sams = {e.sam_probe.sam for _, e in classifiers.values() if e.sam_probe}
        names = {name for route in routes.values() for name in route.values()} | probe_sams
        amg = {"points_per_side": self.settings.amg_points_per_side}
        segmenters, keys = {}, {}
        for name in sorted(names):
            stages = probe_stages(classifiers, name)
            weights, decoder_sha = decoders.get(name, (self.settings.weights, None))
            keys[name] = (decoder_sha, stages)
            if reuse is not None and reuse.sam_keys.get(name) == keys[name]:
                segmenters[name] = reuse.segmenters[name]
                continue
            sam = load_sam(name, self.settings.sam_checkpoints.get(name), self.device, self.settings.sam_sha256.get(name),
                           weights_dir=weights)
            try:
                segmenters[name] = SamSegmenter(sam, amg, stages, self.settings.encoder_runtime,
                                                self.settings.encoder_precision)
            except ValueError as err:
                raise WeightsError(f"a SAM probe reads {name}'s encoder: {err}") from err
        localisers, localiser_versions = {}, {}
        for modality, role in LOCALISERS.items():
            if role not in dirs:
                continue
            version_id, weights = dirs[role]
            key = (role, version_id, str(weights))
            loaded = self._loaded.pop(key, None)
            if loaded is None:
                entry = read_manifest(weights).localisers.get(role)
                if entry is None:
                    raise WeightsError(f"{weights / 'manifest.json'} has no localiser {role!r}")
                loaded = (load_localiser(entry, weights, self.device), entry)
            entry = loaded[1]
            # The box route's SAM, or a SAM decoder fine-tuned on it (same image encoder, same embedding)
            box_sam = routes[modality]["box"]
            if entry.modality != modality or entry.sam not in (box_sam, bases.get(box_sam)):
                raise WeightsError(f"localiser {role} ({entry.file}) reads {entry.sam}'s embedding of {entry.modality} "
                                   f"images, but {modality}'s box route is {box_sam}: it cannot be served")
            if keep:
                self._loaded[key] = loaded
            localisers[modality] = loaded
            localiser_versions[modality] = version_id
        while len(self._loaded) > LOADED_VERSIONS + len(LOCALISERS):
            self._loaded.pop(next(iter(self._loaded)), None)
        return Served(classifiers, probes, segmenters, routes, versions, keys, localisers, localiser_versions)

    def install(self, served: Served, serial: int | None = None) -> list[str]:
        """Serve `served` from the next job on (called on the inference thread, between jobs: `swap`). The
        embeddings of every SAM whose weights or kept stages changed are dropped; the others stay valid.
        Returns the SAMs whose embeddings were dropped."""
        old, self.served = self.served, served
        if serial is not None:
            self.serial = serial
        dropped = [name for name, key in old.sam_keys.items() if served.sam_keys.get(name) != key]
        for name in dropped:
            self.cache.drop_model(name)
        return dropped

    async def swap(self, served: Served, serial: int | None = None) -> list[str]:
        """`install` on the inference thread, after the jobs queued before it; never refused as busy."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.install, served, serial)

    def on_inference_thread(self, fn: Callable[..., T], *args) -> T:
        """`fn(*args)` on the inference thread after the jobs queued before it, waited for (from another
        thread: the thread pool, the CLI); never refused as busy."""
        return self._executor.submit(fn, *args).result()

    def probe_stages(self, sam: str) -> tuple[str, ...]:
        return probe_stages(self.classifiers, sam)

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

    # the work (called on the inference thread; `served`: what to run, default what is served now)
    def route(self, modality: str, kind: str, served: Served | None = None) -> SamSegmenter:
        served = served or self.served
        return served.segmenters[served.routes[modality][kind]]

    def embedding(self, sha256: str, rgb: np.ndarray, segmenter: SamSegmenter, timer: Timer) -> Embedding:
        cached = self.cache.get(sha256, segmenter.name)
        if cached is not None:
            timer.ms.setdefault("encode", 0.0)
            return cached
        embedding = timer.stage("encode", lambda: segmenter.encode(rgb))
        # Only a served SAM's embedding is kept: a job queued before a swap (an upload's encode) must not put
        # the replaced SAM's embedding back under its name after `install` dropped them.
        if self.served.segmenters.get(segmenter.name) is segmenter:
            self.cache.put(sha256, embedding)
        return embedding

    def auto_mode(self, modality: str, prompt: Prompt, served: Served | None = None) -> AutoMode:
        """What an automatic prompt runs: `{}` the modality's localiser where one is served, else sam-amg;
        PromptError for `{"auto": "localiser"}` on a modality without one."""
        served = served or self.served
        if prompt.auto == "localiser" and modality not in served.localisers:
            raise PromptError(f"no lesion localiser is served for {modality} images: use {{\"auto\": \"sam-amg\"}} "
                              f"or draw a box")
        return prompt.auto or ("localiser" if modality in served.localisers else "sam-amg")

    def segment(self, sha256: str, rgb: np.ndarray, modality: str, prompt: Prompt, timer: Timer,
                served: Served | None = None) -> Segmentation:
        if prompt.kind == "auto" and self.auto_mode(modality, prompt, served) == "localiser":
            return self.locate(sha256, rgb, modality, timer, served)
        segmenter = self.route(modality, prompt.kind, served)
        if prompt.kind == "auto":
            return timer.stage("auto_segment", lambda: segmenter.automatic(rgb))
        embedding = self.embedding(sha256, rgb, segmenter, timer)
        return timer.stage("decode", lambda: segmenter.predict(embedding, prompt))

    def locate(self, sha256: str, rgb: np.ndarray, modality: str, timer: Timer,
               served: Served | None = None) -> Segmentation:
        """The localiser's ranked boxes on the box route's (cached) embedding; its best box outlined by the box
        route's SAM, as a drawn box would be. NoLesionFound (with the score and threshold) when no candidate
        reaches the threshold."""
        served = served or self.served
        localiser, _ = served.localisers[modality]
        segmenter = self.route(modality, "box", served)
        embedding = self.embedding(sha256, rgb, segmenter, timer)
        found = timer.stage("locate", lambda: localiser.locate(embedding.features, embedding.input_size,
                                                               embedding.original_size))
        best = found.candidates[0].score if found.candidates else found.peak
        if not found.found:
            raise NoLesionFound(f"no lesion found automatically (score {best:.2f} < {found.threshold:.2f}): "
                                f"draw a box if you see one", round(best, 4), round(found.threshold, 4))
        candidates = found.found
        seg = timer.stage("decode", lambda: self.outline(localiser, segmenter, embedding, found, candidates[0]))
        seg.prompt, seg.auto_mode, seg.candidates = "auto", "localiser", candidates
        seg.lesion_score, seg.lesion_threshold = candidates[0].score, found.threshold
        return seg

    @staticmethod
    def outline(localiser: Localiser, segmenter: SamSegmenter, embedding: Embedding, found, candidate) -> Segmentation:
        """The box route's outline of `candidate` (`Localiser.outline`: SAM on its box, as a drawn box would be);
        NoLesionFound when SAM outlines nothing."""
        answers: list[Segmentation] = []

        def predict(box: list[float]) -> np.ndarray:
            try:
                answers.append(segmenter.predict(embedding, Prompt(box=[float(v) for v in box])))
            except (NoLesionFound, PromptError):  # an empty mask, or a scaled box that lost its width
                height, width = embedding.original_size
                return np.zeros((height, width), dtype=bool)
            return answers[-1].mask
        mask = localiser.outline(candidate, predict)
        chosen = next((a for a in answers if a.mask is mask), None)
        if chosen is None or not mask.any():
            raise NoLesionFound(f"SAM found no outline in the lesion finder's best region (score {candidate.score:.2f}, "
                                f"box {list(candidate.box)}): draw a box if you see one",
                                round(candidate.score, 4), round(found.threshold, 4))
        return chosen

    def classify(self, rgb: np.ndarray, modality: str, seg: Segmentation, timer: Timer,
                 sha256: str | None = None, served: Served | None = None) -> Classification:
        """The crop training used (models.preprocessing.classifier_input), around SAM's mask; with a SAM
        probe, its logit from the image's embedding (cached under `sha256`, shared with the route's SAM)."""
        served = served or self.served
        model, entry = served.classifiers[modality]
        spec = entry.input
        inputs = timer.stage("crop", lambda: classifier_input(
            to_gray(rgb), seg.box, seg.mask if spec.channels == 2 else None, spec.size, spec.roi_margin,
            spec.intensity))
        roi = inputs[0]
        x = normalize(inputs[None]).to(self.device)
        # The heat map's forward pass gives the logits too: one pass of the ResNet18, not two.
        out, cam = timer.stage("classify", lambda: logits_and_cam(model, x.clone()))
        cam = cam[0].cpu().numpy()
        if modality in served.probes:
            out = self.with_probe(out, rgb, modality, seg, timer, sha256, served)
        p = float(torch.softmax(out / entry.temperature, dim=1)[0, 1])
        label = entry.classes[1] if p >= entry.threshold else entry.classes[0]
        located = seg.auto_mode == "localiser" and modality in served.localisers
        return Classification(label, p, entry.threshold, roi, cam, entry, served.versions.get(modality, ""),
                              served.segmenters[seg.model].sam if seg.model in served.segmenters else None,
                              served.localisers[modality][1] if located else None,
                              served.localiser_versions.get(modality, "") if located else "")

    def with_probe(self, logits: torch.Tensor, rgb: np.ndarray, modality: str, seg: Segmentation, timer: Timer,
                   sha256: str | None, served: Served | None = None) -> torch.Tensor:
        served = served or self.served
        entry = served.classifiers[modality][1]
        spec = entry.sam_probe
        segmenter = served.segmenters[spec.sam]
        embedding = (self.embedding(sha256, rgb, segmenter, timer) if sha256
                     else timer.stage("encode", lambda: segmenter.encode(rgb)))

        def probe_logit() -> torch.Tensor:
            f = probe_input(segmenter, embedding, seg.mask, seg.box, entry.input.roi_margin, spec.regions,
                            spec.iou_token, spec.stages)
            with torch.inference_mode():
                return served.probes[modality](f[None].to(self.device))
        return fuse(logits, timer.stage("sam_probe", probe_logit), spec.alpha)
