"""/v1/images: upload once (the SAM embedding is computed then), prompt many times."""
from __future__ import annotations

import io

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from PIL import Image

from server import pipeline
from server.auth import current_user
from server.deps import idempotency_key, own_image, services
from server.engine import Timer
from server.errors import COMMON_ERRORS, PROMPT_ERRORS, ApiError, ErrorResponse
from server.pipeline import Services
from server.schemas import ImageOut, Modality, SegmentationOut, SegmentRequest
from server.store import DuplicateRequest, ImageRecord, User

router = APIRouter(prefix="/v1/images", tags=["images"], responses=COMMON_ERRORS)
NOT_FOUND = {404: {"model": ErrorResponse, "description": "no such image (of this user)"}}
# The stored image is the user's own data: never kept by a shared cache, never read as anything but a PNG.
PRIVATE_PNG = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}


def _image_out(record: ImageRecord) -> ImageOut:
    return ImageOut(image_id=record.id, width=record.width, height=record.height, sha256=record.sha256,
                    modality=record.modality)


@router.post("", status_code=201, response_model=ImageOut, summary="Upload a PNG/JPEG (at most 10 MB)",
             responses={201: {"description": "stored (the image is new)"},
                        200: {"model": ImageOut, "description": "a repeat of an Idempotency-Key this user already "
                                                               "used here: the first upload's image, nothing new"},
                        413: {"model": ErrorResponse, "description": "file too large"},
                        415: {"model": ErrorResponse, "description": "not a PNG or JPEG"},
                        503: {"model": ErrorResponse, "description": "queue full (busy) or the disk read-only or "
                                                                    "failing (storage_unavailable); see Retry-After"},
                        507: {"model": ErrorResponse, "description": "the server's disk is full: nothing was stored"}})
async def upload_image(response: Response, file: UploadFile = File(description="PNG or JPEG, at most 10 MB"),
                       modality: Modality = Form(description="us (ultrasound) or dm (mammography)"),
                       key: str | None = Depends(idempotency_key),
                       user: User = Depends(current_user), svc: Services = Depends(services)) -> ImageOut:
    if key is not None and (stored := svc.history.image_for_key(user, key)) is not None:
        response.status_code = 200  # a retry: nothing is decoded, encoded or stored again
        return _image_out(stored)
    data = await pipeline.read_upload(file, svc.settings)
    try:
        record = await pipeline.upload(svc, user, data, modality, key)
    except DuplicateRequest as first:  # a concurrent repeat stored it while this one was working
        response.status_code = 200
        return _image_out(first.existing)
    return _image_out(record)


@router.post("/{image_id}/segment", response_model=SegmentationOut, summary="Outline the lesion from a prompt",
             responses={200: {"description": "the outline; the Server-Timing header has each stage and the total"},
                        404: {"model": ErrorResponse, "description": "no such image (of this user)"}, **PROMPT_ERRORS,
                        503: {"model": ErrorResponse, "description": "queue full, see Retry-After"}})
async def segment_image(response: Response, request: SegmentRequest | None = None,
                        record: ImageRecord = Depends(own_image), svc: Services = Depends(services)) -> dict:
    prompt = (request or SegmentRequest()).prompt
    timer = Timer()
    out = await pipeline.segment(svc, record, prompt, timer)
    response.headers["Server-Timing"] = pipeline.server_timing(timer.ms)
    return out


@router.get("/{image_id}/image.png", response_class=Response, responses={
    **NOT_FOUND, 200: {"content": {"image/png": {}}, "description": "the stored image, 8-bit gray"}},
    summary="Your stored image as a grayscale PNG (as the classifier reads it)")
def get_image_png(record: ImageRecord = Depends(own_image), svc: Services = Depends(services)) -> Response:
    data = svc.history.image_png(record)
    if data is None:
        raise ApiError(404, "not_found", f"the file of image {record.id} is gone")
    with Image.open(io.BytesIO(data)) as stored:
        gray = stored.convert("L")
    buf = io.BytesIO()
    gray.save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png", headers=PRIVATE_PNG)
