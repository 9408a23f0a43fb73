"""The app's web build (an Expo Router single-page export, baseUrl "/app") served at /app; `/` redirects there.

Files that exist inside `Settings.app_dir` are served as they are: content-hashed ones (`_expo/static/`,
`assets/`) cached for a year as immutable, everything else (index.html first) revalidated on every use.
A path without a file extension that names no file is a client route: it gets index.html and the
router in the page takes over. A missing file with an extension is a 404 like any other. None of these
routes is in the OpenAPI: they are not the API."""
from __future__ import annotations

import mimetypes
from pathlib import Path, PurePosixPath

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from server.errors import ApiError
from server.settings import Settings

BASE = "/app"
NOT_BUILT = "the web app is not built: run `make serve` (it builds mobile/ first) or `make app`"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
HASHED_DIRS = ("_expo/static/", "assets/")
NOSNIFF = {"X-Content-Type-Options": "nosniff"}

# Explicit types for what a web export holds, so the answer does not depend on the machine's mime.types.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".map": "application/json", ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm", ".txt": "text/plain; charset=utf-8",
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp",
    ".svg": "image/svg+xml", ".ico": "image/x-icon",
    ".ttf": "font/ttf", ".otf": "font/otf", ".woff": "font/woff", ".woff2": "font/woff2",
}


def content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _inside(root: Path, relative: str) -> Path | None:
    """The resolved file `relative` names under `root`, or None when it leaves `root` (.., absolute, links)."""
    try:
        candidate = (root / relative).resolve()  # an absolute `relative` replaces root: refused below
    except (OSError, ValueError):  # a NUL byte, a name too long
        return None
    return candidate if candidate == root or root in candidate.parents else None


def _file(request: Request, path: Path, cache: str) -> Response:
    response = FileResponse(path, media_type=content_type(path), headers={"Cache-Control": cache, **NOSNIFF},
                            stat_result=path.stat())  # sets ETag and Last-Modified now, to compare
    etag = response.headers.get("etag")
    match = request.headers.get("if-none-match")
    if etag and match and etag in (tag.strip() for tag in match.split(",")):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache, **NOSNIFF})
    return response


def install(app: FastAPI, settings: Settings) -> None:
    router = APIRouter(include_in_schema=False)

    @router.api_route("/", methods=["GET", "HEAD"])
    def root(request: Request) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}{BASE}/", status_code=307)

    @router.api_route(BASE, methods=["GET", "HEAD"])
    def web_app_index(request: Request) -> Response:
        return web_app(request, "")

    @router.api_route(BASE + "/{path:path}", methods=["GET", "HEAD"])
    def web_app(request: Request, path: str) -> Response:
        root_dir = Path(settings.app_dir).resolve()
        index = root_dir / "index.html"
        if not index.is_file():
            raise ApiError(503, "app_not_built", NOT_BUILT, NOSNIFF)
        target = _inside(root_dir, path)
        if target is None:
            raise ApiError(404, "not_found", f"no such file in the web app: {path}", NOSNIFF)
        if target.is_file():
            relative = target.relative_to(root_dir).as_posix()
            return _file(request, target, IMMUTABLE if relative.startswith(HASHED_DIRS) else REVALIDATE)
        if not PurePosixPath(path).suffix:  # a client route (/app/history/abc): the page's router shows it
            return _file(request, index, REVALIDATE)
        raise ApiError(404, "not_found", f"no such file in the web app: {path}", NOSNIFF)

    app.include_router(router)
