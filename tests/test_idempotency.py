"""Idempotency-Key on POST /v1/images and POST /v1/analyses, and GET /v1/images/{id}/image.png, with the real
models on real BUSI images (the session's in-process server)."""
from __future__ import annotations

import io
import json
import sqlite3
import uuid

import numpy as np
import pytest
from PIL import Image

from models.preprocessing import box_of_mask
from server import pipeline
from server.store import DuplicateRequest, Store, User


def busi_case(busi_dir, name: str) -> tuple[bytes, np.ndarray]:
    folder = busi_dir / name.split(" ")[0]
    return (folder / f"{name}.png").read_bytes(), np.asarray(Image.open(folder / f"{name}_mask.png").convert("L")) > 0


def new_key() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def users(api):
    return [{"Authorization": f"Bearer {api.store.add_user(name)[1]}"} for name in ("idem-dora", "idem-erin")]


@pytest.fixture(scope="module")
def case(busi_dir):
    return busi_case(busi_dir, "benign (5)")


@pytest.fixture
def no_work(api, monkeypatch):
    """Any decode, SAM or classifier run (all go through the engine's queue) fails the test."""
    def refuse(*_, **__):
        raise AssertionError("a repeated key ran the models")
    monkeypatch.setattr(api.services.engine, "run", refuse)
    monkeypatch.setattr(pipeline, "analyze", refuse)


def stored_files(api) -> list:
    return sorted((api.home / "images").glob("*/*"))


def upload(api, headers, data, key=None, modality="us"):
    extra = {"Idempotency-Key": key} if key is not None else {}
    return api.post("/v1/images", files={"file": ("scan.png", data)}, data={"modality": modality},
                    headers={**headers, **extra})


def history(api, headers) -> list[str]:
    return [a["id"] for a in api.get("/v1/analyses?limit=100", headers=headers).json()["items"]]


def test_a_repeated_upload_key_returns_the_first_image_without_new_work(api, users, case, monkeypatch):
    dora, _ = users
    key = new_key()
    first = upload(api, dora, case[0], key)
    assert first.status_code == 201, first.text
    files = stored_files(api)
    with monkeypatch.context() as m:
        m.setattr(api.services.engine, "run", lambda *_: (_ for _ in ()).throw(AssertionError("work done")))
        again = upload(api, dora, case[0], key, modality="dm")  # the key identifies the request
    assert again.status_code == 200, again.text
    assert again.json() == first.json() and again.json()["modality"] == "us"
    assert stored_files(api) == files  # nothing new stored
    other = upload(api, dora, case[0], new_key())  # another key: another image
    assert other.status_code == 201 and other.json()["image_id"] != first.json()["image_id"]
    plain = upload(api, dora, case[0])  # no key: as before
    assert plain.status_code == 201 and plain.json()["image_id"] != first.json()["image_id"]


def test_keys_are_per_user(api, users, case):
    dora, erin = users
    key = new_key()
    mine = upload(api, dora, case[0], key)
    theirs = upload(api, erin, case[0], key)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["image_id"] != theirs.json()["image_id"]
    box = list(box_of_mask(case[1]))
    a = api.post("/v1/analyses", json={"image_id": mine.json()["image_id"], "prompt": {"box": box}},
                 headers={**dora, "Idempotency-Key": key})
    b = api.post("/v1/analyses", json={"image_id": theirs.json()["image_id"], "prompt": {"box": box}},
                 headers={**erin, "Idempotency-Key": key})
    assert a.status_code == b.status_code == 201  # and the analyses route's keys are apart from the images'
    assert a.json()["id"] != b.json()["id"]
    assert a.json()["id"] not in history(api, erin) and b.json()["id"] not in history(api, dora)


@pytest.mark.parametrize("key", ["", "has space", "a/b", "x" * 129, "key.with.dots", "ok!"])
def test_a_malformed_key_is_refused_naming_the_header(api, users, case, key):
    dora, _ = users
    for res in (upload(api, dora, case[0], key),
                api.post("/v1/analyses", json={"image_id": "x"}, headers={**dora, "Idempotency-Key": key}),
                api.post("/v1/analyses", files={"file": ("s.png", case[0])}, data={"modality": "us"},
                         headers={**dora, "Idempotency-Key": key})):
        assert res.status_code == 422, res.text
        assert res.json()["error"]["code"] == "invalid_request" and "Idempotency-Key" in res.json()["error"]["message"]


def test_the_longest_key_is_accepted(api, users, case):
    key = "A-z_9" * 25 + "abc"
    assert len(key) == 128
    assert upload(api, users[0], case[0], key).status_code == 201
    assert upload(api, users[0], case[0], key).status_code == 200


def test_a_repeated_analysis_key_returns_the_stored_result_byte_for_byte(api, users, case, request):
    dora, _ = users
    image = upload(api, dora, case[0]).json()
    key, box = new_key(), list(box_of_mask(case[1]))
    first = api.post("/v1/analyses", json={"image_id": image["image_id"], "prompt": {"box": box}},
                     headers={**dora, "Idempotency-Key": key})
    assert first.status_code == 201, first.text
    before = history(api, dora)
    request.getfixturevalue("no_work")
    again = api.post("/v1/analyses", json={"image_id": image["image_id"], "prompt": {"box": box}},
                     headers={**dora, "Idempotency-Key": key})
    assert again.status_code == 200, again.text
    assert again.content == first.content  # the stored result itself: same id, same timings
    # The same key with another prompt is the same request: the stored result again, nothing run.
    other = api.post("/v1/analyses", json={"image_id": image["image_id"], "prompt": {}},
                     headers={**dora, "Idempotency-Key": key})
    assert other.status_code == 200 and other.json()["id"] == first.json()["id"]
    after = history(api, dora)
    assert after == before and after.count(first.json()["id"]) == 1


def test_a_repeated_multipart_analysis_stores_no_second_image(api, users, case, request):
    dora, _ = users
    key, box = new_key(), list(box_of_mask(case[1]))
    send = dict(files={"file": ("s.png", case[0])}, data={"modality": "us", "prompt": json.dumps({"box": box})},
                headers={**dora, "Idempotency-Key": key})
    first = api.post("/v1/analyses", **send)
    assert first.status_code == 201, first.text
    files, before = stored_files(api), history(api, dora)
    request.getfixturevalue("no_work")
    again = api.post("/v1/analyses", **send)
    assert again.status_code == 200 and again.content == first.content
    assert stored_files(api) == files and history(api, dora) == before


def test_a_duplicate_that_loses_the_race_answers_with_the_winner(api, users, case, monkeypatch):
    """Both requests looked the key up before either stored: the second's insert finds the first's row."""
    dora, _ = users
    key, box = new_key(), list(box_of_mask(case[1]))
    monkeypatch.setattr(api.services.history, "analysis_for_key", lambda *_: None)
    monkeypatch.setattr(api.services.history, "image_for_key", lambda *_: None)
    send = dict(files={"file": ("s.png", case[0])}, data={"modality": "us", "prompt": json.dumps({"box": box})},
                headers={**dora, "Idempotency-Key": key})
    first = api.post("/v1/analyses", **send)
    assert first.status_code == 201, first.text
    files, before = stored_files(api), history(api, dora)
    loser = api.post("/v1/analyses", **send)  # ran the models, then lost the insert
    assert loser.status_code == 200 and loser.json() == first.json()
    assert stored_files(api) == files and history(api, dora) == before  # its image went with it
    image = upload(api, dora, case[0], key)
    assert image.status_code == 201
    files = stored_files(api)
    lost = upload(api, dora, case[0], key)
    assert lost.status_code == 200 and lost.json() == image.json()
    assert stored_files(api) == files  # no second file, no .part left


def test_concurrent_repeats_make_one_analysis(api, users, case):
    from concurrent.futures import ThreadPoolExecutor

    dora, _ = users
    image = upload(api, dora, case[0]).json()
    key, box = new_key(), list(box_of_mask(case[1]))
    before = history(api, dora)

    def post(_):
        return api.post("/v1/analyses", json={"image_id": image["image_id"], "prompt": {"box": box}},
                        headers={**dora, "Idempotency-Key": key})
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(post, range(3)))
    assert sorted(a.status_code for a in answers) == [200, 200, 201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert history(api, dora) == [answers[0].json()["id"], *before]


def test_deleting_the_analysis_frees_its_key_and_the_image_still_goes_with_the_last(api, users, case):
    dora, _ = users
    image = upload(api, dora, case[0], new_key()).json()
    image_file = next((api.home / "images").glob(f"*/{image['image_id']}.png"))
    key, box = new_key(), list(box_of_mask(case[1]))
    body = {"image_id": image["image_id"], "prompt": {"box": box}}
    keep = api.post("/v1/analyses", json=body, headers=dora).json()
    first = api.post("/v1/analyses", json=body, headers={**dora, "Idempotency-Key": key}).json()
    assert api.delete(f"/v1/analyses/{first['id']}", headers=dora).status_code == 204
    assert image_file.exists()  # still used by `keep`
    retry = api.post("/v1/analyses", json=body, headers={**dora, "Idempotency-Key": key})
    assert retry.status_code == 201 and retry.json()["id"] != first["id"]  # the key was free again
    for analysis_id in (retry.json()["id"], keep["id"]):
        assert api.delete(f"/v1/analyses/{analysis_id}", headers=dora).status_code == 204
    assert not image_file.exists()  # the last analysis took the image with it, as without keys
    assert api.get(f"/v1/images/{image['image_id']}/image.png", headers=dora).status_code == 404


def test_image_png_is_the_stored_image_in_gray(api, alice, bob, case):
    image = upload(api, alice, case[0]).json()
    res = api.get(f"/v1/images/{image['image_id']}/image.png", headers=alice)
    assert res.status_code == 200, res.text
    assert res.headers["content-type"] == "image/png"
    assert res.headers["cache-control"] == "private, no-store"
    assert res.headers["x-content-type-options"] == "nosniff"
    picture = Image.open(io.BytesIO(res.content))
    assert picture.format == "PNG" and picture.mode == "L"
    assert picture.size == (image["width"], image["height"]) == case[1].shape[::-1]
    assert np.array_equal(np.asarray(picture), np.asarray(Image.open(io.BytesIO(case[0])).convert("L")))
    for headers, path in [(bob, f"/v1/images/{image['image_id']}/image.png"),
                          (alice, f"/v1/images/{new_key()}/image.png")]:
        res = api.get(path, headers=headers)
        assert res.status_code == 404 and res.json()["error"]["code"] == "not_found"
    assert api.get(f"/v1/images/{image['image_id']}/image.png").status_code == 401


def test_store_keys_per_user_and_table(tmp_path):
    store = Store(tmp_path)
    a, _ = store.add_user("a")
    b, _ = store.add_user("b")
    first = store.add_image(a, "s", "us", 4, 4, b"png", request_key="k")
    with pytest.raises(DuplicateRequest) as dup:
        store.add_image(a, "s", "us", 4, 4, b"other", request_key="k")
    assert dup.value.existing == first and store.image_for_key(a, "k") == first
    assert store.add_image(b, "s", "us", 4, 4, b"png", request_key="k").id != first.id
    assert list(tmp_path.glob("images/*/*.part")) == [] and len(list(tmp_path.glob("images/*/*.png"))) == 2
    result = {"id": "r1", "created": "now"}
    store.add_analysis(a, first.id, {"id": "r1"}, result, request_key="k")
    with pytest.raises(DuplicateRequest) as dup:
        store.add_analysis(a, first.id, {"id": "r2"}, {"id": "r2", "created": "now"}, request_key="k")
    assert dup.value.existing == result and store.analysis_for_key(a, "k") == result
    assert store.analysis_for_key(b, "k") is None
    store.add_analysis(a, first.id, {"id": "r3"}, {"id": "r3", "created": "now"})  # no key: never a duplicate
    store.add_analysis(a, first.id, {"id": "r4"}, {"id": "r4", "created": "now"})
    assert store.delete_analysis(a, "r1") and store.analysis_for_key(a, "k") is None
    store.close()


def test_an_older_database_gains_the_key_columns(tmp_path):
    db = sqlite3.connect(tmp_path / "branet.sqlite3")
    db.executescript("""
        CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, is_admin INTEGER NOT NULL, created TEXT NOT NULL);
        CREATE TABLE images (id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id), sha256 TEXT NOT NULL,
                             modality TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, file TEXT NOT NULL,
                             created TEXT NOT NULL);
        CREATE TABLE analyses (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
                               user_id TEXT NOT NULL REFERENCES users(id), image_id TEXT NOT NULL, created TEXT NOT NULL,
                               summary TEXT NOT NULL, result TEXT NOT NULL);
        INSERT INTO users VALUES ('u1', 'old', 0, 't');
        INSERT INTO images VALUES ('i1', 'u1', 's', 'us', 4, 4, 'images/u1/i1.png', 't');
        INSERT INTO analyses (id, user_id, image_id, created, summary, result) VALUES ('a1', 'u1', 'i1', 't', '{}', '{"id": "a1"}');
    """)
    db.close()
    (tmp_path / "images" / "u1").mkdir(parents=True)
    (tmp_path / "images" / "u1" / "i1.png").write_bytes(b"png")  # a row without its file is removed at start
    store = Store(tmp_path)
    columns = {t: {r["name"] for r in store._db.execute(f"PRAGMA table_info({t})")} for t in ("images", "analyses")}
    assert "request_key" in columns["images"] and "request_key" in columns["analyses"]
    indexes = {r["name"]: r["unique"] for t in ("images", "analyses") for r in store._db.execute(f"PRAGMA index_list({t})")}
    assert indexes["images_by_request_key"] == 1 and indexes["analyses_by_request_key"] == 1
    old = User("u1", "old")
    assert store.get_analysis(old, "a1") == {"id": "a1"} and store.get_image(old, "i1").width == 4
    store.add_analysis(old, "i1", {}, {"id": "a2", "created": "t"}, request_key="k")
    with pytest.raises(sqlite3.IntegrityError):  # the index itself refuses a second row with the key
        store._db.execute("INSERT INTO analyses (id, user_id, image_id, created, summary, result, request_key) "
                          "VALUES ('a3', 'u1', 'i1', 't', '{}', '{}', 'k')")
    store.close()
    Store(tmp_path).close()  # opening again changes nothing
