"""FastAPI dependencies shared by the routers."""
from __future__ import annotations

from fastapi import Depends, Request

from server.auth import current_user
from server.errors import ApiError
from server.pipeline import Services
from server.store import ImageRecord, User


def services(request: Request) -> Services:
    return request.app.state.services


def own_image(image_id: str, user: User = Depends(current_user), svc: Services = Depends(services)) -> ImageRecord:
    record = svc.history.get_image(user, image_id)
    if record is None:  # another user's image is as unknown as a missing one: ids do not leak
        raise ApiError(404, "not_found", f"no image {image_id}")
    return record
