"""Sign-in for people (the app): sessions from a user name and password, who am I, and the public config.

Failed sign-ins are slowed and then locked per account name and per client address (server.login_limiter);
a wrong name and a wrong password answer alike, in the same time (an unknown name is checked against a
dummy hash)."""
from __future__ import annotations

import asyncio
import datetime as dt
from typing import get_args

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from server import passwords
from server.auth import Identity, current_identity, user_store
from server.deps import services
from server.errors import COMMON_ERRORS, ApiError, ErrorResponse
from server.firebase import browser_auth_emulator
from server.login_limiter import LoginLimiter
from server.pipeline import Services
from server.schemas import ConfigOut, MeOut, Modality, SessionOut, SignInRequest
from server.store import User, UserStore
from server.uploads import MAGIC

router = APIRouter()

INVALID = "wrong user name or password"
FIREBASE_SIGN_IN = ("this server signs in with Firebase Authentication (GET /v1/config): sign in with the Firebase "
                    "SDK and send its ID token as the bearer")
SIGN_IN_ERRORS = {
    400: {"model": ErrorResponse, "description": "`firebase_sign_in`: the server signs in with Firebase"},
    401: {"model": ErrorResponse, "description": f"`invalid_credentials`: {INVALID} (the same for both)"},
    422: {"model": ErrorResponse, "description": "invalid request"},
    429: {"model": ErrorResponse, "description": "`too_many_attempts`: too many failed sign-ins for this name or "
                                                 "from this address; wait Retry-After seconds",
          "headers": {"Retry-After": {"description": "seconds until sign-in is allowed again",
                                      "schema": {"type": "integer"}}}},
}


def role(user: User) -> str:
    return "admin" if user.is_admin else "clinician"


def limiter(request: Request) -> LoginLimiter:
    return request.app.state.login_limiter


@router.post("/v1/auth/sessions", status_code=201, response_model=SessionOut, tags=["auth"],
             responses=SIGN_IN_ERRORS, summary="Sign in with a user name and password: a session token")
async def sign_in(body: SignInRequest, request: Request, users: UserStore = Depends(user_store),
                  limits: LoginLimiter = Depends(limiter), svc: Services = Depends(services)) -> dict:
    if svc.settings.auth == "firebase":
        raise ApiError(400, "firebase_sign_in", FIREBASE_SIGN_IN)
    account = f"name:{body.username}"
    address = f"address:{request.client.host if request.client else 'unknown'}"
    wait = limits.retry_after((account, address))
    if wait is not None:
        raise ApiError(429, "too_many_attempts", f"too many failed sign-ins; try again in {wait} s",
                       {"Retry-After": str(wait)})
    # Counted before the (slow) check, so that parallel guesses cannot overrun the limit; taken back on success.
    attempt = limits.fail((account, address))
    found = users.password_of(body.username)
    password_hash = found[1] if found else None
    if not await run_in_threadpool(passwords.verify, password_hash, body.password):
        await asyncio.sleep(limits.delay((account, address)))
        raise ApiError(401, "invalid_credentials", INVALID)
    limits.clear(account)
    limits.withdraw(address, attempt)
    user = found[0]
    if passwords.needs_rehash(password_hash):
        users.rehash_password(user, await run_in_threadpool(passwords.hash_password, body.password))
    token, expires_at = users.add_session(user, dt.timedelta(hours=svc.settings.session_hours))
    return {"token": token, "expires_at": expires_at, "user": {"name": user.name, "role": role(user)}}


@router.delete("/v1/auth/sessions/current", status_code=204, response_class=Response, tags=["auth"],
               summary="Sign out: the session token stops working at once",
               responses={**COMMON_ERRORS, 400: {"model": ErrorResponse,
                                                  "description": "`not_a_session`: the bearer is an API token"}})
def sign_out(identity: Identity = Depends(current_identity), users: UserStore = Depends(user_store)) -> Response:
    if identity.auth == "firebase":
        raise ApiError(400, "not_a_session", "the bearer is a Firebase ID token: sign out in the app (Firebase "
                                             "SDK signOut); this server keeps no session")
    if identity.auth != "session":
        raise ApiError(400, "not_a_session", "the bearer is an API token, not a session: nothing to sign out of")
    users.end_session(identity.token)
    return Response(status_code=204)


@router.get("/v1/me", response_model=MeOut, tags=["auth"], responses={401: COMMON_ERRORS[401]},
            summary="Who the bearer is, and until when")
def me(identity: Identity = Depends(current_identity)) -> dict:
    return {"name": identity.user.name, "role": role(identity.user), "auth": identity.auth,
            "expires_at": identity.expires_at}


@router.get("/v1/config", response_model=ConfigOut, tags=["auth"],
            summary="What the app needs before signing in: auth kind, upload limits, version (no token needed)")
def config(request: Request, svc: Services = Depends(services)) -> dict:
    settings = svc.settings
    web = None
    if settings.auth == "firebase":
        project = settings.firebase_project_id
        web = {"project_id": project, "api_key": settings.firebase_api_key,
               "auth_domain": settings.firebase_auth_domain or f"{project}.firebaseapp.com",
               "auth_emulator": browser_auth_emulator(settings)}
    return {"auth": settings.auth, "firebase": web, "max_upload_mb": settings.max_upload_mb, "max_upload_bytes": settings.max_upload_bytes,
            "accepted_types": [f"image/{kind}" for kind in MAGIC.values()], "modalities": list(get_args(Modality)),
            "min_side": settings.min_side, "version": request.app.version}
