"""Upload -> stored image -> SAM mask -> ROI -> calibrated classification -> stored analysis.

Route handlers call these; each step that fails raises ApiError before anything is stored, and an
analysis is stored only once every part of it exists. With a request key (the client's Idempotency-Key)
a store that finds the key already used raises DuplicateRequest with the first request's row, and
nothing of this request is kept: the route answers with that row.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from models.segmentation import NoLesionFound, Prompt, PromptError, Segmentation, decode_mask_png, mask_rle
from server import render
from server.engine import Engine, Timer
from server.errors import ApiError
from server.metrics import observe_stages
from server.schemas import NOTICE
from server.settings import Settings
from server.store import HistoryStore, ImageRecord, User, now
from server.uploads import DecodedImage, decode, load_png

CHUNK = 1024 * 1024


@dataclass
class Services:
    settings: Settings
    engine: Engine
    history: HistoryStore
    images: "ImageMemory"


class ImageMemory:
    """The last few decoded images by id: a re-prompt does not decode the PNG again. `read` gives a record's
    bytes from the history store (a file, or an object in Cloud Storage), None when they are gone."""

    def __init__(self, read: Callable[[ImageRecord], bytes | None], size: int = 32):
        self.read, self.size = read, size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # used from the threadpool

    def get(self, record: ImageRecord) -> np.ndarray:
        with self._lock:
            rgb = self._items.get(record.id)
            if rgb is not None:
                self._items.move_to_end(record.id)
                return rgb
        data = self.read(record)
        if data is None:
            raise FileNotFoundError(f"the bytes of image {record.id} are gone")
        rgb = load_png(data)
        self.put(record.id, rgb)
        return rgb

    def put(self, image_id: str, rgb: np.ndarray) -> None:
        with self._lock:
            self._items[image_id] = rgb
            while len(self._items) > self.size:
                self._items.popitem(last=False)


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    """The file's bytes, refused with 413 as soon as they pass the limit."""
    chunks, total = [], 0
    while chunk := await upload.read(CHUNK):
        total += len(chunk)
        if total > settings.max_upload_bytes:
            raise ApiError(413, "too_large", f"the file is larger than {settings.max_upload_mb:g} MB")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_prompt(raw: str | None) -> Prompt:
    if raw is None or not raw.strip():
        return Prompt()
    try:
        return Prompt.model_validate_json(raw)
    except ValueError as err:
        raise ApiError(422, "invalid_prompt", f"prompt is not valid: {first_error(err)}") from err


def first_error(err: ValueError) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where + ': ' if where else ''}{first.get('msg')}"
    return str(err)


def cache_key(user_id: str, sha256: str) -> str:
    """The embedding cache's key for an image: the same bytes uploaded by two users are two entries, so
    a cached answer (encode 0 ms, a faster reply) only ever tells a user about their own uploads."""
    return f"{user_id}:{sha256}"


@dataclass
class Source:
    """The image an analysis runs on: already stored (`record`), or just uploaded and stored only on success."""

    cache_key: str  # of its SAM embeddings: per user (cache_key), so no one's timing reveals another's uploads
    modality: str
    rgb: np.ndarray
    record: ImageRecord | None = None
    decoded: DecodedImage | None = None


async def decode_upload(services: Services, data: bytes, timer: Timer) -> DecodedImage:
    # Decoding and rendering queue with the models: on a CPU, running them beside an inference would
    # only take cores from it (bench/README.md).
    return await services.engine.run(timer.stage, "decode_upload", lambda: decode(data, services.settings))


async def store_image(services: Services, user: User, decoded: DecodedImage, modality: str, timer: Timer,
                      request_key: str | None = None) -> ImageRecord:
    record = await run_in_threadpool(timer.stage, "store", lambda: services.history.add_image(
        user, decoded.sha256, modality, decoded.width, decoded.height, decoded.png, request_key))
    services.images.put(record.id, decoded.rgb)
    return record


async def upload(services: Services, user: User, data: bytes, modality: str,
                 request_key: str | None = None) -> ImageRecord:
    """Decode, compute the box route's embedding (so the first prompt is fast), then store."""
    timer = Timer()
    decoded = await decode_upload(services, data, timer)
    if services.settings.embed_on_upload:
        engine = services.engine
        await engine.run(engine.embedding, cache_key(user.id, decoded.sha256), decoded.rgb, engine.route(modality, "box"), timer)
    return await store_image(services, user, decoded, modality, timer, request_key)


async def stored_source(services: Services, record: ImageRecord) -> Source:
    rgb = await services.engine.run(services.images.get, record)
    return Source(cache_key(record.user_id, record.sha256), record.modality, rgb, record=record)


def _segment(services: Services, source: Source, prompt: Prompt, timer: Timer) -> Segmentation:
    try:
        return services.engine.segment(source.cache_key, source.rgb, source.modality, prompt, timer)
    except PromptError as err:
        raise ApiError(422, "invalid_prompt", str(err)) from err
    except NoLesionFound as err:
        raise ApiError(422, "no_lesion_found", str(err), extra={"score": err.score, "threshold": err.threshold}) from err


async def drawn(prompt: Prompt, source: Source) -> Prompt:
    """A mask prompt with its mask decoded here, in the thread pool, not on the one inference thread (its
    header is checked against the image's size first, so one prompt costs at most one image's decode)."""
    if prompt.kind != "mask":
        return prompt
    height, width = source.rgb.shape[:2]
    try:
        mask = await run_in_threadpool(decode_mask_png, prompt.mask, width, height)
    except PromptError as err:
        raise ApiError(422, "invalid_prompt", str(err)) from None
    return prompt.with_drawn(mask)


SAM_STAGES = ("encode", "locate", "decode", "auto_segment")


def segmentation_out(seg: Segmentation, timings: dict[str, float]) -> dict:
    out = {"mask_png": render.b64(render.mask_png(seg.mask)), "mask_rle": mask_rle(seg.mask),
           "box": list(seg.box), "score": round(seg.score, 4), "sam_model": seg.model, "prompt": seg.prompt,
           "encoder_runtime": seg.runtime, "encoder_precision": seg.precision,
           "timings_ms": {k: v for k, v in timings.items() if k in SAM_STAGES}, "auto_mode": seg.auto_mode}
    if seg.candidates is not None:
        out["candidates"] = [{"box": list(c.box), "score": round(c.score, 4)} for c in seg.candidates]
    if seg.lesion_threshold is not None:
        out["lesion_score"], out["lesion_threshold"] = round(seg.lesion_score, 4), round(seg.lesion_threshold, 4)
    return out


async def segment(services: Services, record: ImageRecord, prompt: Prompt, timer: Timer) -> dict:
    """SAM's outline of a stored image; `timer` gets each stage and the total from reading the image to the
    rendered mask (the Server-Timing header: a re-prompt on a cached embedding is a decoder pass and a PNG)."""
    start = time.perf_counter()
    source = await stored_source(services, record)
    seg = await services.engine.run(_segment, services, source, await drawn(prompt, source), timer)
    observe_stages(timer.ms)
    out = segmentation_out(seg, timer.ms)
    timer.ms["total"] = round((time.perf_counter() - start) * 1000, 2)
    return out


def server_timing(ms: dict[str, float]) -> str:
    """The W3C Server-Timing header: every stage of this request and its total."""
    return ", ".join(f"{stage};dur={value}" for stage, value in ms.items())


async def analyze(services: Services, user: User, source: Source, prompt: Prompt, timer: Timer,
                  request_key: str | None = None) -> dict:
    """Segment + classify; the result (and a new image) is stored only once all of it exists."""
    start = time.perf_counter() - sum(timer.ms.values()) / 1000  # upload stages already ran
    engine = services.engine
    prompt = await drawn(prompt, source)

    def job():
        seg = _segment(services, source, prompt, timer)
        return seg, engine.classify(source.rgb, source.modality, seg, timer, source.cache_key)
    seg, result = await engine.run(job)
    # Both from the Served the job ran on (a model swap may have happened since): the result names them.
    sam, entry = result.sam, result.entry

    def pictures() -> dict:
        return {"segmentation": segmentation_out(seg, timer.ms),
                "roi_png": render.b64(render.png_bytes(result.roi)),
                "heatmap_png": render.b64(render.heatmap_png(result.roi, result.cam))}
    pngs = await engine.run(timer.stage, "render", pictures)
    history = services.history
    # A store that writes an analysis and its new image in one atomic write (Firestore) gets both at the end;
    # else the image is stored first and removed again if the analysis cannot be.
    together = source.record is None and hasattr(history, "add_analysis_with_image")
    if together:
        decoded = source.decoded
        record = history.new_image(user, decoded.sha256, source.modality, decoded.width, decoded.height)
    else:
        record = source.record or await store_image(services, user, source.decoded, source.modality, timer)
    timer.ms["total"] = round((time.perf_counter() - start) * 1000, 2)
    body = {
        "id": uuid.uuid4().hex, "image_id": record.id, "created": now(), "modality": record.modality,
        "label": result.label, "p_malignant": round(result.p_malignant, 4), "threshold": round(result.threshold, 4),
        **pngs,
        "models": {"classifier": {"name": entry.name, "sha256": entry.sha256, "version": entry.sha256[:12],
                                  "id": result.version, "regime": entry.regime, "temperature": entry.temperature},
                   "sam": {"name": sam.name, "sha256": sam.sha256, "version": sam.sha256[:12]},
                   **({"localiser": {"name": result.localiser.name, "sha256": result.localiser.sha256,
                                     "version": result.localiser.sha256[:12], "id": result.localiser_version}}
                      if result.localiser else {})},
        "timings_ms": dict(timer.ms), "notice": NOTICE,
    }
    summary = {k: body[k] for k in ("id", "image_id", "created", "modality", "label", "p_malignant")}
    summary["classifier"] = entry.name
    written = time.perf_counter()
    if together:  # both or neither (DuplicateRequest: neither)
        await run_in_threadpool(history.add_analysis_with_image, user, record, source.decoded.png, summary, body,
                                request_key)
        services.images.put(record.id, source.decoded.rgb)
    else:
        try:
            await run_in_threadpool(history.add_analysis, user, record.id, summary, body, request_key)
        except BaseException:  # DuplicateRequest included: the image uploaded with a lost race goes too
            if source.record is None:
                await run_in_threadpool(history.delete_image, user, record.id)
            raise
    # The stored body cannot contain its own write: the write goes to `timer` only (the Server-Timing header),
    # so that a retry's stored answer and the first answer stay the same bytes.
    timer.ms["history"] = round((time.perf_counter() - written) * 1000, 2)
    timer.ms["total"] = round(timer.ms["total"] + timer.ms["history"], 2)
    observe_stages(timer.ms)
    return body


def overlay(services: Services, result: dict, record: ImageRecord) -> bytes:
    segmentation = result["segmentation"]
    return render.overlay_png(services.images.get(record), render.decode_mask(segmentation["mask_png"]),
                              segmentation["box"])
