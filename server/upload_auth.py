"""Bearer authentication for the upload routes before a byte of their body is read.

FastAPI reads (spools) a multipart body before a route's dependencies run, so the route's own
`current_user` would check the token only after up to 10 MB arrived. This ASGI middleware checks the
same token (server.auth.current_identity) from the headers alone and answers 401 at once, closing the
connection, for POST /v1/images and POST /v1/analyses: nobody without an account can make the server
read an upload. The route's dependency still runs (and still decides) for requests that pass."""
from __future__ import annotations

import json

from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from starlette.types import ASGIApp, Receive, Scope, Send

from server.auth import current_identity
from server.errors import ApiError

UPLOAD_ROUTES = {"/v1/images", "/v1/analyses", "/v1/admin/models"}
ADMIN_ROUTES = {"/v1/admin/models"}  # a model upload: only an admin may make the server read it


class UploadAuth:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") not in UPLOAD_ROUTES:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, token = get_authorization_scheme_param(header)
        credentials = (HTTPAuthorizationCredentials(scheme=scheme, credentials=token)
                       if header and scheme.lower() == "bearer" and token else None)
        try:
            # In the thread pool: with Firebase sign-in the check asks Firebase Authentication (check_revoked).
            identity = await run_in_threadpool(current_identity, credentials, scope["app"].state.users)
            if scope["path"].rstrip("/") in ADMIN_ROUTES and not identity.user.is_admin:
                raise ApiError(403, "forbidden", "model management needs an admin")
        except ApiError as err:
            body = json.dumps({"error": {"code": err.code, "message": err.message}}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
            await send({"type": "http.response.start", "status": err.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
