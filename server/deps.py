"""FastAPI dependencies shared by the routers."""
from __future__ import annotations

from fastapi import Depends, Header, Request

from server.auth import current_user
from server.errors import ApiError
from server.pipeline import Services
from server.store import ImageRecord, User


def services(request: Request) -> Services:
    return request.app.state.services


IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
IDEMPOTENCY_KEY_DOC = (
    "Optional. A key the client makes for one request (1-128 characters of A-Z a-z 0-9 _ -) and sends again "
    "with every retry of it (after a network failure). The key identifies the request, per user and per "
    "route: a repeat of a key this user already used here answers 200 with what the first request stored "
    "(the same id), does no new work and stores nothing, whatever else the repeat sends. Deleting what "
    "the first request created frees its key.")


def idempotency_key(key: str | None = Header(None, alias="Idempotency-Key", min_length=1, max_length=128,
                                             pattern=IDEMPOTENCY_KEY_PATTERN, description=IDEMPOTENCY_KEY_DOC,
                                             examples=["5f0c3a9e2b7d4c1a8e6f0b3d2c1a9e7f"])) -> str | None:
    """The request's Idempotency-Key header; a malformed one answers 422 naming the header."""
    return key


def own_image(image_id: str, user: User = Depends(current_user), svc: Services = Depends(services)) -> ImageRecord:
    record = svc.history.get_image(user, image_id)
    if record is None:  # another user's image is as unknown as a missing one: ids do not leak
        raise ApiError(404, "not_found", f"no image {image_id}")
    return record
