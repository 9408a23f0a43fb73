"""/v1/admin: deploy, activate and roll back model versions in the running server; the audit log.

Admins only (403 for everyone else). Validation and swaps are server.model_manager's; these routes run them
in the thread pool (they load networks and wait for the inference thread)."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from server.auth import current_user
from server.errors import COMMON_ERRORS, ApiError, ErrorResponse
from server.model_manager import ModelManager, ModelRefused, NothingToRollBack, NotFound
from server.model_registry import ROLES
from server.schemas import ActivationOut, AuditOut, ModelVersionOut
from server.store import READ_ONLY_ERRNOS, User

FORBIDDEN = {403: {"model": ErrorResponse, "description": "`forbidden`: not an admin"}}
router = APIRouter(prefix="/v1/admin", tags=["admin"], responses={**COMMON_ERRORS, **FORBIDDEN})
REFUSED = {422: {"model": ErrorResponse, "description": "`model_refused`: the check named in the message (and the "
                                                        "`X-Model-Check` header) failed: manifest, role, files, "
                                                        "sha256, architecture, input_spec, load, smoke or gate; "
                                                        "nothing was stored or served"}}
NOT_FOUND = {404: {"model": ErrorResponse, "description": "no such version or role"}}
READ_ONLY = {503: {"model": ErrorResponse, "description": "`models_read_only`: this server's models folder is "
                                                        "read-only (a replica's): use the server that writes it"}}


def admin(user: User = Depends(current_user)) -> User:
    if not user.is_admin:
        raise ApiError(403, "forbidden", "model management needs an admin")
    return user


def manager(request: Request) -> ModelManager:
    return request.app.state.models


@contextmanager
def answers(models: ModelManager) -> Iterator[None]:
    """The model manager's refusals as the API's errors; a replica's read-only models folder (deploy/k8s) as a
    503 that names the server to use."""
    try:
        yield
    except ModelRefused as err:
        raise refused(err) from None
    except NotFound as err:
        raise ApiError(404, "not_found", str(err)) from None
    except NothingToRollBack as err:
        raise ApiError(409, "nothing_to_roll_back", str(err)) from None
    except OSError as err:
        if err.errno not in READ_ONLY_ERRNOS:
            raise
        raise ApiError(503, "models_read_only", f"the models folder {models.registry.root} is read-only on this "
                                                "server: deploy, activate and roll back on the one that writes it "
                                                "(deploy/k8s: branet-admin)") from None


def refused(err: ModelRefused) -> ApiError:
    return ApiError(422, "model_refused", f"check {err.check!r} failed: {err.message}", {"X-Model-Check": err.check})


@router.post("/models", status_code=201, response_model=ModelVersionOut, responses={**REFUSED, **READ_ONLY},
             summary="Deploy a model version (validated; not served until activated)")
async def deploy(role: Literal["classifier-us", "classifier-dm", "localiser-us", "localiser-dm"] = Form(description="the role it serves"),
                 manifest: UploadFile = File(description="manifest.json as `python -m training export` writes it, "
                                                         "holding the role's entry"),
                 files: list[UploadFile] = File(description="every file the entry names: the classifier, its SAM "
                                                           "probe, SAM decoders (a localiser: its one file)"),
                 gate_data: str | None = Form(None, description="a validation folder on the server (relative: under "
                                                                "BRANET_DATA): the new version's AUC there may not "
                                                                "be below the active one's by more than gate_margin"),
                 gate_margin: float | None = Form(None, ge=0, le=1, description="default BRANET_GATE_MARGIN"),
                 gate_roi_source: Literal["sam", "box", "expert"] = Form("sam", description="as `evaluate`"),
                 user: User = Depends(admin), models: ModelManager = Depends(manager)) -> dict:
    with answers(models):
        staging = models.registry.new_staging()
    try:
        for upload in files:
            name = (upload.filename or "").rsplit("/", 1)[-1]
            if not name or name.startswith(".") or name in ("manifest.json", "version.json"):
                raise ModelRefused("files", f"file name {upload.filename!r} is not a weight file's name")
            with open(staging / name, "wb") as out:
                await run_in_threadpool(shutil.copyfileobj, upload.file, out, 1 << 20)
        manifest_bytes = await manifest.read()
    except ModelRefused as err:
        models.registry.discard(staging)
        models.registry.append_audit({"action": "refuse", "actor": user.name, "role": role, "check": err.check,
                                      "message": err.message})
        raise refused(err) from None
    except BaseException:
        models.registry.discard(staging)
        raise
    with answers(models):  # deploy removes the staging folder itself unless it becomes the version
        version = await run_in_threadpool(models.deploy, staging, manifest_bytes, role, user.name, gate_data,
                                          gate_margin, gate_roi_source)
    listed = {v["id"]: v for v in models.listing()[role]}
    return listed[version.id]


@router.post("/models/{version_id}/activate", response_model=ActivationOut,
             responses={**REFUSED, **NOT_FOUND, **READ_ONLY},
             summary="Serve this version in its role, now (no restart; requests in flight finish on the old one)")
async def activate(version_id: str, user: User = Depends(admin), models: ModelManager = Depends(manager)) -> dict:
    with answers(models):
        return await run_in_threadpool(models.activate, version_id, user.name)


@router.post("/models/{role}/rollback", response_model=ActivationOut,
             responses={**REFUSED, **NOT_FOUND, **READ_ONLY, 409: {"model": ErrorResponse,
                                                                   "description": "`nothing_to_roll_back`"}},
             summary="Serve the role's previously active version again")
async def rollback(role: str, user: User = Depends(admin), models: ModelManager = Depends(manager)) -> dict:
    with answers(models):
        return await run_in_threadpool(models.rollback, role, user.name)


@router.get("/audit", response_model=AuditOut, summary="The append-only log of uploads, refusals, activations "
                                                       "and rollbacks (oldest first)")
def audit(limit: int = Query(1000, ge=1, le=100_000, description="the latest this many events"),
          _: User = Depends(admin), models: ModelManager = Depends(manager)) -> dict:
    return {"events": models.registry.audit(limit)}


__all__ = ["router", "ROLES"]
