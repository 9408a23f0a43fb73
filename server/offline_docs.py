"""/docs (Swagger UI) and /redoc (ReDoc) with every asset served by this server: nothing from a CDN.

Hospital networks are often closed, so the pages FastAPI builds by default (scripts from jsDelivr, a
favicon and Google Fonts from the internet) show nothing there. The app is created with docs_url=None
and redoc_url=None and these routes follow FastAPI's "self-hosting JavaScript and CSS for docs" recipe:
the Swagger UI and ReDoc bundles come from the pinned `fastapi-offline` package, the favicon from
server/static/. Swagger UI's online validator badge (an image from validator.swagger.io) is switched off."""
from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/static-docs"
# One prefix, looked up in order: the project's icon (server/static/), then fastapi-offline's bundles
# (fastapi_offline/static/: swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js).
PACKAGES = [("server", "static"), ("fastapi_offline", "static")]
FAVICON = "branet-icon.png"
# ReDoc's sidebar always draws its maker's logo from a CDN (seen in a real browser with the internet
# cut off): the bundle is served with that one address pointing at our own icon instead.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_JS = "redoc.offline.js"


@lru_cache(maxsize=1)
def redoc_bundle() -> bytes:
    source = files("fastapi_offline").joinpath("static", "redoc.standalone.js").read_text(encoding="utf-8")
    return source.replace(REDOC_LOGO, f"{STATIC_URL}/{FAVICON}").encode()


def install(app: FastAPI) -> None:
    """Call on an app created with docs_url=None, redoc_url=None."""
    @app.get(f"{STATIC_URL}/{REDOC_JS}", include_in_schema=False)
    def redoc_js() -> Response:
        return Response(redoc_bundle(), media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    app.mount(STATIC_URL, StaticFiles(packages=PACKAGES), name="docs-assets")
    swagger_parameters = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect}",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/{FAVICON}",
            swagger_ui_parameters=swagger_parameters)

    @app.get(oauth2_redirect, include_in_schema=False)
    def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_URL}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{STATIC_URL}/{FAVICON}", with_google_fonts=False)
