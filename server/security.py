"""Security headers on every answer, and who may read /metrics.

- `X-Content-Type-Options: nosniff` and `X-Frame-Options: DENY` everywhere.
- `Cache-Control: no-store` on every /v1 answer but /v1/config: they carry patient data (images, masks,
  results, history) or tokens, which no browser or shared cache may keep. A route's own stricter value
  (`private, no-store`) is kept.
- A Content-Security-Policy per path: the JSON API (and /metrics, /openapi.json) is never a page,
  so `default-src 'none'`; the pages (/docs, /redoc, the app at /app) load everything from this
  server only, with the inline scripts and styles Swagger UI's and Expo's HTML hold, data:/blob:
  images (masks and heat maps are data: URIs) and ReDoc's blob: worker.

/metrics (`BRANET_METRICS`): `loopback` (default) answers only clients on 127.0.0.1 / ::1 (behind a
reverse proxy every client has the proxy's address: use `token` there), `token` needs an admin's bearer
token, `open` answers anyone."""
from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from server.auth import bearer, current_identity, user_store
from server.errors import ApiError
from server.store import UserStore

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
            "object-src 'none'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'")
PAGES = ("/docs", "/redoc", "/app", "/static-docs/")
NO_STORE_EXCEPT = ("/v1/config",)
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def csp_for(path: str, page_csp: str = PAGE_CSP) -> str:
    return page_csp if path.startswith(PAGES) else API_CSP


def page_csp(connect_src: tuple[str, ...] = ()) -> str:
    """The pages' policy, with more origins the app may call (Firebase Authentication's, with Firebase sign-in)."""
    return PAGE_CSP.replace("connect-src 'self'", " ".join(("connect-src 'self'",) + connect_src))


def patient_data(path: str) -> bool:
    return path.startswith("/v1/") and path not in NO_STORE_EXCEPT


class SecurityHeaders:
    """ASGI middleware (outermost, so the 413s and 500s other middlewares write get them too)."""

    def __init__(self, app, connect_src: tuple[str, ...] = ()):
        self.app = app
        self.page_csp = page_csp(connect_src)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        fixed = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                 (b"content-security-policy", csp_for(path, self.page_csp).encode())]
        no_store = patient_data(path)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in fixed}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                if no_store:
                    cache = [v for k, v in headers if k.lower() == b"cache-control"]
                    if not cache or b"no-store" not in cache[0]:
                        headers = [(k, v) for k, v in headers if k.lower() != b"cache-control"]
                        headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers + fixed}
            await send(message)
        await self.app(scope, receive, send_with_headers)


def metrics_access(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                   users: UserStore = Depends(user_store)) -> None:
    """A dependency of /metrics: refuses (403 JSON; 401 for a missing token in `token` mode) per BRANET_METRICS."""
    mode = request.app.state.metrics_mode
    if mode == "open":
        return
    if mode == "loopback":
        host = request.client.host if request.client else ""
        if host not in LOOPBACK:
            raise ApiError(403, "forbidden", "metrics are served to this machine only (BRANET_METRICS=loopback)")
        return
    identity = current_identity(credentials, users)  # 401 without a valid token
    if not identity.user.is_admin:
        raise ApiError(403, "forbidden", "metrics need an admin's token (BRANET_METRICS=token)")
