"""Bearer-token auth as a FastAPI dependency. The user store behind it is an interface (UserStore)."""
from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.errors import ApiError
from server.store import User, UserStore

bearer = HTTPBearer(auto_error=False, description="token from `branet users add NAME`")


def user_store(request: Request) -> UserStore:
    return request.app.state.users


def current_user(credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                 users: UserStore = Depends(user_store)) -> User:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)", challenge)
    user = users.user_for_token(credentials.credentials)
    if user is None:
        raise ApiError(401, "unauthorized", "unknown or revoked token", challenge)
    return user
