"""The app's web build at /app: files, cache headers, client-route fallback, no way out of the folder."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from server.web_app import NOT_BUILT

INDEX = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8" />
<meta name="viewport" content="width=device-width, initial-scale=1, shrink-to-fit=no" />
<title>BraNet</title>
<link rel="icon" href="/app/favicon.ico" />
</head>
<body>
<noscript>You need to enable JavaScript to run this app.</noscript>
<div id="root"></div>
<script src="/app/_expo/static/js/web/entry-5f0c3a9e1b2d4c6f8a7b.js" defer></script>
</body>
</html>
"""
BUNDLE = "/app/_expo/static/js/web/entry-5f0c3a9e1b2d4c6f8a7b.js"
ICON = "/app/assets/assets/images/icon.8d2f1b7c4e9a.png"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e5272ade0000000049454e44ae426082")
SECRET = "SECRET = 'outside the web build'\n"


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """<tmp>/mobile/dist laid out as `expo export --platform web` writes it, and a file beside it outside."""
    tmp = tmp_path_factory.mktemp("webapp")
    dist = tmp / "mobile" / "dist"
    (dist / "_expo" / "static" / "js" / "web").mkdir(parents=True)
    (dist / "assets" / "assets" / "images").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / BUNDLE.removeprefix("/app/")).write_text('(()=>{"use strict";document.getElementById("root");})();\n')
    (dist / ICON.removeprefix("/app/")).write_bytes(PNG)
    (dist / "favicon.ico").write_bytes(b"\x00\x00\x01\x00\x01\x00\x01\x01" + bytes(16))
    (tmp / "server").mkdir()
    (tmp / "server" / "app.py").write_text(SECRET)
    (dist / "assets" / "leak.txt").symlink_to(tmp / "server" / "app.py")
    return tmp, dist


@pytest.fixture(scope="module")
def client(layout, tmp_path_factory):
    _, dist = layout
    app = create_app(Settings(home=tmp_path_factory.mktemp("home"), app_dir=dist, create_dev_user=False))
    with TestClient(app) as c:
        yield c


def _nosniff(res):
    assert res.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/app", "/app/"])
def test_index_is_served_and_revalidated(client, layout, path):
    res = client.get(path)
    assert res.status_code == 200 and res.text == INDEX
    assert res.headers["content-type"].startswith("text/html")
    assert res.headers["cache-control"] == "no-cache"
    _nosniff(res)


def test_hashed_bundle_and_asset_are_immutable(client, layout):
    _, dist = layout
    js = client.get(BUNDLE)
    assert js.status_code == 200 and js.content == (dist / BUNDLE.removeprefix("/app/")).read_bytes()
    assert js.headers["content-type"].startswith("text/javascript")
    assert js.headers["cache-control"] == "public, max-age=31536000, immutable"
    _nosniff(js)
    png = client.get(ICON)
    assert png.status_code == 200 and png.content == PNG and png.headers["content-type"] == "image/png"
    assert png.headers["cache-control"] == "public, max-age=31536000, immutable"
    _nosniff(png)


def test_other_files_are_revalidated(client):
    res = client.get("/app/favicon.ico")
    assert res.status_code == 200 and res.headers["content-type"] == "image/x-icon"
    assert res.headers["cache-control"] == "no-cache"


def test_head_answers_headers_only(client):
    res = client.head(BUNDLE)
    assert res.status_code == 200 and res.content == b""
    assert int(res.headers["content-length"]) > 0
    assert res.headers["cache-control"] == "public, max-age=31536000, immutable"


def test_unchanged_index_answers_304(client):
    etag = client.get("/app/").headers["etag"]
    res = client.get("/app/", headers={"If-None-Match": etag})
    assert res.status_code == 304 and res.content == b"" and res.headers["etag"] == etag


@pytest.mark.parametrize("path", ["/app/history", "/app/history/abc", "/app/analysis/3f2a/overlay"])
def test_client_routes_fall_back_to_index(client, path):
    res = client.get(path)
    assert res.status_code == 200 and res.text == INDEX
    assert res.headers["content-type"].startswith("text/html")
    assert res.headers["cache-control"] == "no-cache"
    _nosniff(res)


@pytest.mark.parametrize("path", ["/app/_expo/static/js/web/entry-000000.js", "/app/assets/missing.png",
                                  "/app/history/abc.json"])
def test_missing_asset_is_a_json_404(client, path):
    res = client.get(path)
    assert res.status_code == 404
    assert res.headers["content-type"] == "application/json"
    assert res.json()["error"]["code"] == "not_found" and res.json()["error"]["message"]
    _nosniff(res)


@pytest.mark.parametrize("path", ["/app/%2e%2e/%2e%2e/server/app.py", "/app/..%2f..%2fserver%2fapp.py",
                                  "/app/%2E%2E/%2E%2E/server", "/app/assets/leak.txt",
                                  "/app/%2fetc%2fpasswd", "/app//etc/passwd"])
def test_no_file_outside_the_build_is_served(client, path):
    res = client.get(path)
    assert res.status_code == 404 and SECRET not in res.text and "root:" not in res.text
    assert res.json()["error"] == {"code": "not_found", "message": res.json()["error"]["message"]}
    assert "no such file in the web app" in res.json()["error"]["message"]  # it reached the route, decoded


def test_dot_segments_in_the_raw_url_do_not_leave_the_build(client):
    res = client.get("/app/../server/app.py")  # the client may normalize it to /server/app.py: a 404 either way
    assert res.status_code == 404 and SECRET not in res.text and res.json()["error"]["code"] == "not_found"


def test_root_redirects_to_the_app(client):
    res = client.get("/", follow_redirects=False)
    assert res.status_code == 307 and res.headers["location"] == "/app/"
    assert client.get("/").text == INDEX


def test_not_built_answers_503(client, layout):
    _, dist = layout
    index = dist / "index.html"
    index.rename(dist / "index.html.away")
    try:
        for path in ("/app", "/app/", "/app/history/abc", BUNDLE):
            res = client.get(path)
            assert res.status_code == 503, path
            assert res.json() == {"error": {"code": "app_not_built", "message": NOT_BUILT}}
            _nosniff(res)
    finally:
        (dist / "index.html.away").rename(index)
    assert client.get("/app/").status_code == 200


def test_web_routes_stay_out_of_the_openapi(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith(("/app", "/docs", "/redoc", "/static-docs"))]


def test_default_app_dir_is_the_mobile_export(monkeypatch):
    from pathlib import Path

    import server
    monkeypatch.delenv("BRANET_APP_DIR", raising=False)
    assert Settings().app_dir == Path(server.__file__).resolve().parents[1] / "mobile" / "dist"
