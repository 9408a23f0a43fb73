"""/v1/images: upload once (the SAM embedding is computed then), prompt many times."""
from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile

from server import pipeline
from server.auth import current_user
from server.deps import own_image, services
from server.errors import COMMON_ERRORS, ErrorResponse
from server.pipeline import Services
from server.schemas import ImageOut, Modality, SegmentationOut, SegmentRequest
from server.store import ImageRecord, User

router = APIRouter(prefix="/v1/images", tags=["images"], responses=COMMON_ERRORS)


@router.post("", status_code=201, response_model=ImageOut, summary="Upload a PNG/JPEG (at most 10 MB)",
             responses={413: {"model": ErrorResponse, "description": "file too large"},
                        415: {"model": ErrorResponse, "description": "not a PNG or JPEG"},
                        503: {"model": ErrorResponse, "description": "queue full, see Retry-After"}})
async def upload_image(file: UploadFile = File(description="PNG or JPEG, at most 10 MB"),
                       modality: Modality = Form(description="us (ultrasound) or dm (mammography)"),
                       user: User = Depends(current_user), svc: Services = Depends(services)) -> ImageOut:
    data = await pipeline.read_upload(file, svc.settings)
    record = await pipeline.upload(svc, user, data, modality)
    return ImageOut(image_id=record.id, width=record.width, height=record.height, sha256=record.sha256,
                    modality=modality)


@router.post("/{image_id}/segment", response_model=SegmentationOut, summary="Outline the lesion from a prompt",
             responses={404: {"model": ErrorResponse, "description": "no such image (of this user)"},
                        503: {"model": ErrorResponse, "description": "queue full, see Retry-After"}})
async def segment_image(request: SegmentRequest | None = None, record: ImageRecord = Depends(own_image),
                        svc: Services = Depends(services)) -> dict:
    prompt = (request or SegmentRequest()).prompt
    return await pipeline.segment(svc, record, prompt)
