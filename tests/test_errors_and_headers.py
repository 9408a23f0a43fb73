"""Every answer is JSON on error, carries an X-Request-ID, and an unhandled exception is a 500 that says
nothing internal but names the request id that the server log line with the traceback also names."""
from __future__ import annotations

import json
import logging
import sqlite3
import uuid

import pytest


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
