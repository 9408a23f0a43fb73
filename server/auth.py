"""Bearer auth as a FastAPI dependency: an API token (`bn_...`, from `branet users add`) or a sign-in
session token (`bns_...`, from POST /v1/auth/sessions). The user store behind it is an interface (UserStore)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.errors import ApiError
from server.store import User, UserStore, now

SESSION_PREFIX = "bns_"

bearer = HTTPBearer(auto_error=False, description="an API token from `branet users add NAME`, or a session "
                                                  "token from `POST /v1/auth/sessions`")


@dataclass(frozen=True)
class Identity:
    user: User
    auth: Literal["session", "token", "firebase"]
    token: str
    expires_at: str | None = None  # sessions and Firebase ID tokens


def user_store(request: Request) -> UserStore:
    return request.app.state.users


def current_identity(credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                     users: UserStore = Depends(user_store)) -> Identity:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)", challenge)
    token = credentials.credentials
    firebase = getattr(users, "identity_for_bearer", None)  # BRANET_AUTH=firebase: server.firebase.FirebaseUsers
    if firebase is not None:
        return firebase(token)
    if token.startswith(SESSION_PREFIX):
        session = users.session_for_token(token)
        if session is not None and session.expires_at <= now():
            users.end_session(token)
            raise ApiError(401, "unauthorized", "session expired", challenge)
        if session is not None:
            return Identity(session.user, "session", token, session.expires_at)
    else:
        user = users.user_for_token(token)
        if user is not None:
            return Identity(user, "token", token)
    raise ApiError(401, "unauthorized", "unknown or revoked token", challenge)


def current_user(identity: Identity = Depends(current_identity)) -> User:
    return identity.user
