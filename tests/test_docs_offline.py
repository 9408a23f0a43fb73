"""Issue 27: /docs and /redoc load nothing from outside the server (hospital networks are closed)."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest

EXTERNAL = re.compile(r"https?://[^\s\"'<>)]+", re.IGNORECASE)
ASSET_TYPES = {"script": ("text/javascript", "application/javascript"), "stylesheet": ("text/css",),
               "icon": ("image/png", "image/x-icon", "image/vnd.microsoft.icon")}


class References(HTMLParser):
    """Every src/href of the page, with what kind of asset it is."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href", "spec-url"):
            if attrs.get(name) is not None:
                rel = (attrs.get("rel") or "").lower()
                kind = "script" if tag == "script" else "stylesheet" if "stylesheet" in rel else \
                       "icon" if "icon" in rel else tag
                self.refs.append((kind, attrs[name]))


def _references(html: str) -> list[tuple[str, str]]:
    parser = References()
    parser.feed(html)
    return parser.refs


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_references_nothing_outside_the_server(api, page):
    res = api.get(page)
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    html = res.text
    refs = _references(html)
    assert any(kind == "script" for kind, _ in refs), refs
    for kind, url in refs:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), (kind, url)
    assert not EXTERNAL.findall(html), EXTERNAL.findall(html)  # nor in inline scripts (e.g. a CDN or validator)
    if page == "/docs":
        assert '"validatorUrl": null' in html  # Swagger UI's badge would fetch an image from validator.swagger.io


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_referenced_asset_is_served_here(api, page):
    refs = _references(api.get(page).text)
    kinds = {kind for kind, _ in refs}
    assert {"script", "icon"} <= kinds and (page == "/redoc" or "stylesheet" in kinds), refs
    for kind, url in refs:
        res = api.get(url)
        assert res.status_code == 200, url
        if kind in ASSET_TYPES:
            assert res.headers["content-type"].split(";")[0].strip() in ASSET_TYPES[kind], (url, res.headers)
            assert len(res.content) > (100_000 if kind != "icon" else 50), url  # the real bundle, not a stub
        if kind == "stylesheet":  # a stylesheet's own url(...) must stay on the server too
            external = [u for u in re.findall(r"url\(\s*['\"]?([^'\")]+)", res.text)
                        if urlsplit(u).scheme not in ("", "data")]
            assert not external, external
    js = {url for kind, url in refs if kind == "script"}
    assert any(url.endswith("/swagger-ui-bundle.js" if page == "/docs" else "/redoc.offline.js") for url in js)


def test_swagger_oauth2_redirect_is_served_here(api):
    res = api.get("/docs/oauth2-redirect")
    assert res.status_code == 200 and "oauth2" in res.text
    assert all(url.startswith("/") for _, url in _references(res.text))


def test_the_project_icon_replaces_fastapis(api):
    for page in ("/docs", "/redoc"):
        icons = [url for kind, url in _references(api.get(page).text) if kind == "icon"]
        assert icons == ["/static-docs/branet-icon.png"], icons
        assert api.get(icons[0]).content.startswith(b"\x89PNG\r\n\x1a\n")


def test_the_redoc_bundle_no_longer_names_its_cdn_logo(api):
    body = api.get("/static-docs/redoc.offline.js").text
    assert "cdn.redoc.ly" not in body and "/static-docs/branet-icon.png" in body
