"""Every answer is JSON on error, carries an X-Request-ID, and an unhandled exception is a 500 that says
nothing internal but names the request id that the server log line with the traceback also names."""
from __future__ import annotations

import json
import logging
import sqlite3
import uuid

import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def carol(api):
    """A user of this module's own, so a row broken here never shows in other tests' histories."""
    user, token = api.store.add_user(f"carol-{uuid.uuid4().hex[:8]}")
    yield user, {"Authorization": f"Bearer {token}"}


def test_an_unhandled_error_is_a_json_500_naming_the_request_id_the_log_names(api, carol, caplog):
    user, headers = carol
    # A real broken input, no code patched: an analysis row whose stored JSON was damaged on disk.
    analysis_id = uuid.uuid4().hex
    db = sqlite3.connect(api.home / "branet.sqlite3")
    with db:
        db.execute("INSERT INTO analyses (id, user_id, image_id, created, summary, result) VALUES (?, ?, ?, ?, ?, ?)",
                   (analysis_id, user.id, "gone", "2024-01-01T00:00:00.000+00:00", "{damaged", "{damaged"))
    try:
        with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
            for url in (f"/v1/analyses/{analysis_id}", "/v1/analyses"):
                caplog.clear()
                res = api.get(url, headers=headers)
                assert res.status_code == 500, res.text
                assert res.headers["content-type"] == "application/json"
                rid = res.headers["x-request-id"]
                assert len(rid) >= 16
                assert res.json() == {"error": {"code": "internal", "message": f"internal error (request id {rid})"}}
                assert "JSONDecode" not in res.text and "Expecting" not in res.text and "Traceback" not in res.text
                lines = [r for r in caplog.records if rid in r.getMessage()]
                assert len(lines) == 1, [r.getMessage() for r in caplog.records]
                assert "GET" in lines[0].getMessage() and "JSONDecodeError" in lines[0].getMessage()
                assert lines[0].exc_info and lines[0].exc_info[0] is json.JSONDecodeError  # the traceback
    finally:
        with db:
            db.execute("DELETE FROM analyses WHERE id = ?", (analysis_id,))
        db.close()
    assert api.get("/v1/analyses", headers=headers).status_code == 200  # the server kept serving


def test_every_answer_has_a_request_id(api, alice):
    answers = [api.get("/healthz"), api.get("/v1/me", headers=alice), api.get("/v1/me"),
               api.get("/v1/analyses/nope", headers=alice), api.get("/no/such/route"),
               api.post("/v1/images", content=b"x" * 100, headers={**alice, "Content-Length": str(11 * 2**20),
                                                                   "Content-Type": "multipart/form-data; boundary=b"})]
    assert [a.status_code for a in answers] == [200, 200, 401, 404, 404, 413]
    ids = [a.headers.get("x-request-id") for a in answers]
    assert all(ids) and len(set(ids)) == len(ids), ids
    # A client's own id (a short token) is kept, so its logs and ours line up; anything else is replaced.
    assert api.get("/healthz", headers={"X-Request-ID": "client-trace-0001"}).headers["x-request-id"] == "client-trace-0001"
    replaced = api.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert replaced != "bad id\twith spaces" and len(replaced) == 32


API_CSP = "default-src 'none'"
PAGE_CSP = "default-src 'self'"


def _check(res, csp: str, no_store: bool) -> None:
    where = f"{res.request.method} {res.request.url.path} -> {res.status_code}"
    assert res.headers.get("x-content-type-options") == "nosniff", where
    assert res.headers.get("x-frame-options") == "DENY", where
    assert res.headers.get("content-security-policy", "").startswith(csp), where
    assert "frame-ancestors 'none'" in res.headers["content-security-policy"], where
    assert ("no-store" in res.headers.get("cache-control", "")) == no_store, (where, res.headers.get("cache-control"))


def test_security_headers_on_every_answer(api, alice):
    from tests.test_api_bad_input import encode, scan
    image = api.post("/v1/images", files={"file": ("s.png", encode(scan()))}, data={"modality": "us"}, headers=alice)
    assert image.status_code == 201, image.text
    image_id = image.json()["image_id"]
    patient = [image, api.get(f"/v1/images/{image_id}/image.png", headers=alice), api.get("/v1/analyses", headers=alice),
               api.get("/v1/me", headers=alice), api.get("/v1/me"), api.get("/v1/analyses/nope", headers=alice),
               api.get("/v1/models", headers=alice),
               api.post("/v1/images", content=b"x", headers={**alice, "Content-Length": str(11 * 2**20),
                                                             "Content-Type": "multipart/form-data; boundary=b"})]
    assert [r.status_code for r in patient] == [201, 200, 200, 200, 401, 404, 200, 413]
    for res in patient:
        _check(res, API_CSP, no_store=True)
    assert patient[1].headers["cache-control"] == "private, no-store"  # the route's own, stricter value is kept
    for res in (api.get("/v1/config"), api.get("/healthz"), api.get("/openapi.json"), api.get("/metrics"),
                api.get("/no/such/route")):
        _check(res, API_CSP, no_store=False)
    for url in ("/docs", "/redoc", "/static-docs/swagger-ui.css", "/app/", "/app/history"):
        res = api.get(url)
        assert res.status_code in (200, 503), (url, res.status_code)  # 503: the app is not built here
        _check(res, PAGE_CSP, no_store=False)


def test_metrics_access_follows_the_setting(api, alice, monkeypatch):
    from server.settings import Settings
    local = TestClient(api.app, client=("127.0.0.1", 50000))
    ipv6 = TestClient(api.app, client=("::1", 50000))
    admin = {"Authorization": f"Bearer {api.store.add_user(f'admin-{uuid.uuid4().hex[:8]}', admin=True)[1]}"}
    assert api.app.state.metrics_mode == "loopback"  # the default
    refused = api.get("/metrics", headers=admin)  # "testclient" is not a loopback address, a token does not help
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert "loopback" in refused.json()["error"]["message"]
    assert local.get("/metrics").status_code == 200 and ipv6.get("/metrics").status_code == 200
    assert "branet_queue_depth" in local.get("/metrics").text
    monkeypatch.setenv("BRANET_METRICS", "token")
    assert Settings().metrics == "token"
    try:  # the running app's setting, as create_app copies it from Settings
        api.app.state.metrics_mode = "token"
        assert local.get("/metrics").status_code == 401  # loopback is not enough: a token is needed
        assert api.get("/metrics", headers=alice).status_code == 403  # a clinician's token is not
        assert api.get("/metrics", headers=admin).status_code == 200
        api.app.state.metrics_mode = "open"
        assert api.get("/metrics").status_code == 200
    finally:
        api.app.state.metrics_mode = "loopback"


def test_the_embedding_cache_does_not_tell_one_user_about_anothers_uploads(api, alice, bob):
    """Bob uploading the very image Alice uploaded is encoded afresh (a real encode, as for anything new to
    him), then his re-prompt is cached; nothing in his answers reveals that Alice had it."""
    from tests.test_api_bad_input import encode, scan
    data = encode(scan((180, 140)))
    box = {"box": [50, 40, 130, 100]}
    first = api.post("/v1/analyses", files={"file": ("a.png", data)}, data={"modality": "us", "prompt": json.dumps(box)},
                     headers=alice)
    assert first.status_code == 201, first.text
    assert first.json()["timings_ms"]["encode"] > 0
    again = api.post("/v1/analyses", json={"image_id": first.json()["image_id"], "prompt": box}, headers=alice)
    assert again.json()["timings_ms"]["encode"] == 0  # her own image: cached
    theirs = api.post("/v1/analyses", files={"file": ("a.png", data)},
                      data={"modality": "us", "prompt": json.dumps(box)}, headers=bob)
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["timings_ms"]["encode"] > 0  # a real encode, as if nobody had uploaded it
    upload = api.post("/v1/images", files={"file": ("a.png", data)}, data={"modality": "us"}, headers=bob).json()
    seg = api.post(f"/v1/images/{upload['image_id']}/segment", json={"prompt": box}, headers=bob).json()
    assert seg["timings_ms"]["encode"] == 0  # his own upload's embedding is reused
