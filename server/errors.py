"""Every error is JSON `{"error": {"code", "message"}}` with a status that says whose fault it is."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.body_limit import BodyTooLarge
from server.store import StorageError

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         413: "too_large", 415: "unsupported_media_type", 422: "invalid", 500: "internal", 503: "busy",
         507: "insufficient_storage"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 extra: dict[str, float] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
        self.extra = {k: v for k, v in (extra or {}).items() if v is not None}


class ErrorBody(BaseModel):
    code: str
    message: str
    score: float | None = Field(None, description="`no_lesion_found` from the lesion localiser: its best score "
                                                  "(omitted otherwise)")
    threshold: float | None = Field(None, description="`no_lesion_found` from the lesion localiser: the score a "
                                                      "lesion needs (omitted otherwise)")


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   extra: dict[str, float] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **(extra or {})}}, status_code=status,
                        headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def prompt_only(errors: list[dict]) -> bool:
    """Every error is inside the body's `prompt` (a JSON request's prompt of the wrong shape): `invalid_prompt`,
    as for a multipart request's prompt."""
    locs = [tuple(p for p in e.get("loc", ()) if p != "body") for e in errors]
    return bool(locs) and all(loc[:1] == ("prompt",) for loc in locs)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers, exc.extra)

    @app.exception_handler(StorageError)  # disk full: 507, read-only disk: 503; nothing was stored
    async def _storage(_: Request, exc: StorageError) -> JSONResponse:
        return error_response(exc.status, exc.code, str(exc), {"Retry-After": "60"})

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_prompt" if prompt_only(exc.errors()) else "invalid_request",
                              _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, BodyTooLarge):  # FastAPI wraps errors raised while parsing a form
            return error_response(413, "too_large", "the request is larger than the upload limit")
        if exc.status_code == 400:  # FastAPI's "error parsing the body": the request is malformed, say so as 422
            return error_response(422, "invalid_request", f"malformed request body: {exc.detail}")
        return error_response(exc.status_code, CODES.get(exc.status_code, "error"), str(exc.detail),
                              getattr(exc, "headers", None))


# The routes that outline a lesion (segment, analyses) say what their 422s mean.
PROMPT_ERRORS = {422: {"model": ErrorResponse, "description": (
    "invalid request (`invalid_request`); a prompt that does not fit the image (`invalid_prompt`, also "
    "`{\"auto\": \"localiser\"}` on a modality without a localiser); `no_lesion_found`: automatic mode found "
    "no lesion (from the localiser with its best `score` and the `threshold` it needed: draw a box if you see "
    "one). Nothing is stored")}}

# Documented on every /v1 route so the OpenAPI lists what can go wrong.
COMMON_ERRORS = {401: {"model": ErrorResponse, "description": "missing or unknown token (`unauthorized`); with "
                                                               "Firebase sign-in `token_expired` (get a fresh ID "
                                                               "token), `token_revoked` (sign in again) or "
                                                               "`invalid_token`"},
                 403: {"model": ErrorResponse, "description": "`user_disabled`: with Firebase sign-in, the account "
                                                              "is disabled"},
                 422: {"model": ErrorResponse, "description": "invalid request"}}
