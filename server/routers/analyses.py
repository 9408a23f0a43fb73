"""/v1/analyses: segment + classify, and the user's history of results."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.datastructures import UploadFile

from server import pipeline
from server.auth import current_user
from server.deps import idempotency_key, services
from server.engine import Timer
from server.errors import COMMON_ERRORS, PROMPT_ERRORS, ApiError, ErrorResponse, prompt_only
from server.pipeline import Services
from server.schemas import AnalysisOut, AnalysisPage, AnalysisRequest
from server.store import DuplicateRequest, User

router = APIRouter(prefix="/v1/analyses", tags=["analyses"], responses=COMMON_ERRORS)
NOT_FOUND = {404: {"model": ErrorResponse, "description": "no such analysis (of this user)"}}

MULTIPART_SCHEMA = {
    "type": "object", "required": ["file", "modality"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "PNG or JPEG, at most 10 MB"},
        "modality": {"type": "string", "enum": ["us", "dm"]},
        "prompt": {"type": "string", "description": 'JSON prompt, e.g. {"box": [10, 20, 200, 180]}; empty or {} = '
                                                      'automatic (the lesion localiser, else {"auto": "sam-amg"})'},
    },
}
REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/AnalysisRequest"}},
    "multipart/form-data": {"schema": MULTIPART_SCHEMA}}}}


def document_request_body(app) -> None:
    """The JSON variant of POST /v1/analyses is parsed by hand (one route, two content types), so its
    schema is added to the OpenAPI components here."""
    generate = app.openapi

    def openapi() -> dict:
        schema = generate()
        body = AnalysisRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema["components"]["schemas"]
        for name, definition in body.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault("AnalysisRequest", body)
        return schema
    app.openapi = openapi


async def _from_multipart(request: Request, svc: Services, user: User, timer: Timer):
    form = await request.form(max_files=1, max_fields=8)  # malformed: 422 by errors.install
    file, modality = form.get("file"), form.get("modality")
    if not isinstance(file, UploadFile):
        raise ApiError(422, "invalid_request", "file: a PNG or JPEG file part is required")
    if modality not in ("us", "dm"):
        raise ApiError(422, "invalid_request", f"modality: must be 'us' or 'dm', got {modality!r}")
    prompt_field = form.get("prompt")
    prompt = pipeline.parse_prompt(prompt_field if isinstance(prompt_field, str) else None)
    decoded = await pipeline.decode_upload(svc, await pipeline.read_upload(file, svc.settings), timer)
    return pipeline.Source(pipeline.cache_key(user.id, decoded.sha256), modality, decoded.rgb, decoded=decoded), prompt


async def _from_json(request: Request, svc: Services, user: User):
    try:
        body = AnalysisRequest.model_validate_json(await request.body())
    except ValueError as err:
        errors = err.errors() if callable(getattr(err, "errors", None)) else []
        code = "invalid_prompt" if prompt_only(errors) else "invalid_request"
        raise ApiError(422, code, f"body: {pipeline.first_error(err)}") from err
    record = svc.history.get_image(user, body.image_id)
    if record is None:
        raise ApiError(404, "not_found", f"no image {body.image_id}")
    return await pipeline.stored_source(svc, record), body.prompt


@router.post("", status_code=201, response_model=AnalysisOut, openapi_extra=REQUEST_BODY,
             summary="Segment and classify: an uploaded image_id (JSON) or a file in the same call (multipart)",
             responses={**NOT_FOUND, **PROMPT_ERRORS, 201: {"description": "analysed and stored; the Server-Timing header has every stage "
                                                        "in ms, the final history write (`history`) and the total "
                                                        "with it"},
                        200: {"model": AnalysisOut, "description": "a repeat of an Idempotency-Key this user already "
                                                                  "used here: the stored analysis (same id and "
                                                                  "body), nothing new run or stored"},
                        413: {"model": ErrorResponse, "description": "file too large"},
                        415: {"model": ErrorResponse, "description": "not a PNG/JPEG or not JSON/multipart"},
                        503: {"model": ErrorResponse, "description": "queue full (busy) or the disk read-only or "
                                                                    "failing (storage_unavailable); see Retry-After"},
                        507: {"model": ErrorResponse, "description": "the server's disk is full: nothing was stored"}})
async def create_analysis(request: Request, response: Response, key: str | None = Depends(idempotency_key),
                          user: User = Depends(current_user), svc: Services = Depends(services)) -> dict:
    timer = Timer()
    content_type = request.headers.get("content-type", "")
    multipart = content_type.startswith("multipart/form-data")
    if not multipart and not content_type.startswith("application/json"):
        raise ApiError(415, "unsupported_media_type", "send application/json {image_id, prompt} or multipart/form-data")
    if key is not None and (stored := svc.history.analysis_for_key(user, key)) is not None:
        response.status_code = 200  # a retry: the key identifies the request, nothing is run again
        return stored
    if multipart:
        source, prompt = await _from_multipart(request, svc, user, timer)
    else:
        source, prompt = await _from_json(request, svc, user)
    try:
        result = await pipeline.analyze(svc, user, source, prompt, timer, key)
        # with the final history write and the total after it (the body's `timings_ms` is the stored copy,
        # written before that write could be timed)
        response.headers["Server-Timing"] = pipeline.server_timing(timer.ms)
        return result
    except DuplicateRequest as first:  # a concurrent repeat stored its result first: answer with that one
        response.status_code = 200
        return first.existing


@router.get("", response_model=AnalysisPage, summary="Your analyses, newest first")
def list_analyses(limit: int = Query(20, ge=1, le=100), cursor: str | None = Query(None, pattern=r"^\d{1,18}$"),
                  user: User = Depends(current_user), svc: Services = Depends(services)) -> dict:
    items, next_seq = svc.history.list_analyses(user, limit, int(cursor) if cursor else None)
    return {"items": items, "next_cursor": str(next_seq) if next_seq is not None else None}


def _own(analysis_id: str, user: User, svc: Services) -> dict:
    result = svc.history.get_analysis(user, analysis_id)
    if result is None:
        raise ApiError(404, "not_found", f"no analysis {analysis_id}")
    return result


@router.get("/{analysis_id}", response_model=AnalysisOut, responses=NOT_FOUND, summary="One analysis")
def get_analysis(analysis_id: str, user: User = Depends(current_user), svc: Services = Depends(services)) -> dict:
    return _own(analysis_id, user, svc)


@router.get("/{analysis_id}/overlay.png", response_class=Response, responses={
    **NOT_FOUND, 200: {"content": {"image/png": {}}, "description": "the image with mask outline and box"}},
    summary="The image with the lesion outline (red) and box (yellow)")
def get_overlay(analysis_id: str, user: User = Depends(current_user), svc: Services = Depends(services)) -> Response:
    result = _own(analysis_id, user, svc)
    record = svc.history.get_image(user, result["image_id"])
    try:
        if record is None:
            raise FileNotFoundError(analysis_id)
        return Response(pipeline.overlay(svc, result, record), media_type="image/png")
    except FileNotFoundError:
        raise ApiError(404, "not_found", f"the image of analysis {analysis_id} is gone") from None


@router.delete("/{analysis_id}", status_code=204, response_class=Response, responses=NOT_FOUND,
               summary="Delete an analysis (and its image when no other analysis uses it)")
def delete_analysis(analysis_id: str, user: User = Depends(current_user), svc: Services = Depends(services)) -> Response:
    if not svc.history.delete_analysis(user, analysis_id):
        raise ApiError(404, "not_found", f"no analysis {analysis_id}")
    return Response(status_code=204)
