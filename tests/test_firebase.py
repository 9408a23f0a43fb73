"""Firebase sign-in and the history in Firestore, on the real emulators (tests/firebase_emulators.py).

The same history contract runs on both pairs, local + sqlite and firebase + firestore, and on a third,
firebase + firestore with the bytes in Cloud Storage (BRANET_BYTES_STORE=cloud-storage, on PyPI gcp-storage-emulator):
create, list (paginated, newest first), get, delete, isolation between two users, admin-only routes,
Idempotency-Key repeats. Then what
only Firebase has: real ID tokens from the Auth emulator that are expired, revoked, malformed, another project's,
or a disabled or deleted account's; admin rights from `branet users grant-admin` / `revoke-admin`; the security
rules (firestore.rules) read through Firestore's REST API with a user's own ID token; and Firestore stopped in
the middle of an analysis (503 within the bound, nothing half-written, a retry after it is back works).
Each pair is a real app (real models, in-process); nothing of ours is mocked."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from models.preprocessing import box_of_mask
from server.app import create_app
from server.firebase import FirebaseConfigError, check_settings
from server.launcher import BRANET
from server.settings import Settings
from tests.firebase_emulators import BUCKET, PROJECT, AuthRest, auth_emulator, firestore_emulator, storage_emulator
from tests.test_api import busi_case

TIMEOUT_S = 5.0  # BRANET_FIREBASE_TIMEOUT_S (the default): the fault test waits for it
SLACK_S = 4.0  # beyond it, for a 2-core machine shared with training runs (without the bound: gRPC's 60 s and more)


@pytest.fixture(scope="module")
def emulators(tmp_path_factory, request):
    """Firestore, Auth and Cloud Storage emulators on free ports, their variables set for this module only; their
    logs are printed when a test of the module failed."""
    workdir = tmp_path_factory.mktemp("emulators")
    failed_before = request.session.testsfailed
    firestore, auth, storage = firestore_emulator(workdir), auth_emulator(workdir), storage_emulator(workdir)
    saved = {k: os.environ.get(k) for k in ("FIRESTORE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST",
                                            "STORAGE_EMULATOR_HOST")}
    try:
        firestore.start()
        auth.start()
        storage.start()
        os.environ["FIRESTORE_EMULATOR_HOST"], os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = firestore.host, auth.host
        os.environ["STORAGE_EMULATOR_HOST"] = storage.url
        yield {"firestore": firestore, "auth": auth, "storage": storage, "rest": AuthRest(auth.host)}
    finally:
        for emulator in (storage, auth, firestore):
            emulator.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if request.session.testsfailed > failed_before:
            for emulator in (firestore, auth, storage):
                print(f"\n--- {emulator.name} emulator log ({emulator.log}) ---\n{emulator.tail()}", file=sys.__stderr__)


class Pair:
    """One app on one pair of backends, and how that pair makes a user's bearer."""

    def __init__(self, name: str, client: TestClient, emulators: dict, env: dict[str, str]):
        self.name, self.client, self.emulators, self.env = name, client, emulators, env
        self.firebase = name.startswith("firebase+firestore")
        self.cloud = name.endswith("+cloud-storage")

    def stored(self, item_id: str) -> list[str]:
        """The bytes of an image (or an analysis' pictures) wherever this pair keeps them: files, or objects."""
        if self.cloud:
            return [name for name in self.emulators["storage"].objects(prefix="users/")
                    if name.rsplit("/", 1)[1].split(".")[0] == item_id]
        return [str(p) for p in self.client.home.glob(f"**/{item_id}.*") if p.suffix in (".png", ".json")]

    def leftovers(self) -> list[str]:
        """Bytes of the Firestore store under home (files) and in the bucket (objects), whoever they belong to."""
        files = [p.name for p in (self.client.home / "firestore").glob("*/*") if p.name != ".uid"]
        return files + (self.emulators["storage"].objects(prefix="users/") if self.cloud else [])

    def user(self, admin: bool = False) -> tuple[dict, str]:
        """A new user's Authorization header and its name (e-mail with Firebase)."""
        name = f"u{uuid.uuid4().hex[:10]}"
        if not self.firebase:
            return {"Authorization": f"Bearer {self.client.app.state.users.add_user(name, admin)[1]}"}, name
        email = f"{name}@example.com"
        rest = self.emulators["rest"]
        token = rest.sign_up(email)["idToken"]
        if admin:
            cli(self.env, "users", "grant-admin", email)
            token = rest.sign_in(email)["idToken"]  # a new token carries the claim
        return {"Authorization": f"Bearer {token}"}, email


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([BRANET, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module", params=["local+sqlite", "firebase+firestore", "firebase+firestore+cloud-storage"])
def pair(request, emulators, tmp_path_factory):
    home = tmp_path_factory.mktemp(request.param.replace("+", "-"))
    auth, store, *rest = request.param.split("+")
    bytes_store = rest[0] if rest else "local"
    env = {"BRANET_HOME": str(home), "BRANET_AUTH": auth, "BRANET_STORE": store, "BRANET_BYTES_STORE": bytes_store,
           "BRANET_STORAGE_BUCKET": BUCKET,
           "BRANET_FIREBASE_PROJECT_ID": PROJECT, "BRANET_FIREBASE_EMULATORS": "true",
           "BRANET_FIREBASE_API_KEY": "fake-api-key", "BRANET_FIREBASE_TIMEOUT_S": str(TIMEOUT_S),
           "BRANET_CREATE_DEV_USER": "false"}
    settings = Settings(home=home, auth=auth, store=store, bytes_store=bytes_store, storage_bucket=BUCKET,
                        firebase_project_id=PROJECT, firebase_emulators=True,
                        firebase_api_key="fake-api-key", firebase_timeout_s=TIMEOUT_S, create_dev_user=False,
                        amg_points_per_side=4, metrics="token")
    with TestClient(create_app(settings)) as client:
        client.home = home
        yield Pair(request.param, client, emulators, env)


firebase_only = pytest.mark.parametrize("pair", ["firebase+firestore"], indirect=True)
cloud_only = pytest.mark.parametrize("pair", ["firebase+firestore+cloud-storage"], indirect=True)


@pytest.fixture(scope="module")
def case(busi_dir):
    data, truth = busi_case(busi_dir, "benign (4)")
    return data, list(box_of_mask(truth))


def upload(client: TestClient, headers: dict, data: bytes, **extra) -> dict:
    res = client.post("/v1/images", files={"file": ("b.png", data)}, data={"modality": "us"}, headers=headers, **extra)
    assert res.status_code in (200, 201), res.text
    return res.json()


def analyse(client: TestClient, headers: dict, image_id: str, box: list, **extra):
    return client.post("/v1/analyses", json={"image_id": image_id, "prompt": {"box": box}}, headers=headers, **extra)


# the same contract on both pairs
def test_create_list_newest_first_get_and_delete(pair, case):
    api, (data, box) = pair.client, case
    alice, _ = pair.user()
    image = upload(api, alice, data)
    created = [analyse(api, alice, image["image_id"], box) for _ in range(3)]
    assert [r.status_code for r in created] == [201] * 3, created[0].text
    ids = [r.json()["id"] for r in created]
    first = api.get("/v1/analyses?limit=2", headers=alice).json()
    assert [a["id"] for a in first["items"]] == ids[::-1][:2]
    assert first["items"][0] == {k: created[2].json()[k] for k in first["items"][0] if k != "classifier"} | {
        "classifier": created[2].json()["models"]["classifier"]["name"]}
    second = api.get(f"/v1/analyses?limit=2&cursor={first['next_cursor']}", headers=alice).json()
    assert [a["id"] for a in second["items"]] == ids[:1] and second["next_cursor"] is None
    got = api.get(f"/v1/analyses/{ids[1]}", headers=alice)
    assert got.status_code == 200 and got.json() == created[1].json()  # pictures and all
    assert api.get(f"/v1/analyses/{ids[1]}/overlay.png", headers=alice).content[:8] == b"\x89PNG\r\n\x1a\n"
    assert api.get(f"/v1/images/{image['image_id']}/image.png", headers=alice).status_code == 200
    assert len(pair.stored(image["image_id"])) == 1
    for analysis_id in ids:
        assert api.delete(f"/v1/analyses/{analysis_id}", headers=alice).status_code == 204
        assert api.get(f"/v1/analyses/{analysis_id}", headers=alice).status_code == 404
        assert api.delete(f"/v1/analyses/{analysis_id}", headers=alice).status_code == 404
    assert api.get("/v1/analyses", headers=alice).json()["items"] == []
    assert pair.stored(image["image_id"]) == []  # the last analysis of an image takes the image with it
    assert api.get(f"/v1/images/{image['image_id']}/image.png", headers=alice).status_code == 404
    if pair.firebase:  # no bytes are left behind (file or object): pictures went with their analyses
        assert pair.leftovers() == []


def test_users_never_see_each_others_history(pair, case):
    api, (data, box) = pair.client, case
    (alice, _), (bob, _) = pair.user(), pair.user()
    image = upload(api, alice, data)
    mine = analyse(api, alice, image["image_id"], box).json()
    for method, path in [("get", f"/v1/analyses/{mine['id']}"), ("get", f"/v1/analyses/{mine['id']}/overlay.png"),
                         ("delete", f"/v1/analyses/{mine['id']}"), ("get", f"/v1/images/{image['image_id']}/image.png")]:
        res = api.request(method, path, headers=bob)
        assert res.status_code == 404 and res.json()["error"]["code"] == "not_found", (method, path)
    assert analyse(api, bob, image["image_id"], box).status_code == 404
    assert api.get("/v1/analyses", headers=bob).json()["items"] == []
    assert [a["id"] for a in api.get("/v1/analyses", headers=alice).json()["items"]] == [mine["id"]]


def test_admin_only_routes_and_roles(pair):
    api = pair.client
    (clinician, _), (admin, _) = pair.user(), pair.user(admin=True)
    assert api.get("/v1/me", headers=clinician).json()["role"] == "clinician"
    me = api.get("/v1/me", headers=admin).json()
    assert me["role"] == "admin" and me["auth"] == ("firebase" if pair.firebase else "token")
    assert api.get("/metrics").status_code == 401
    res = api.get("/metrics", headers=clinician)
    assert res.status_code == 403 and res.json()["error"]["code"] == "forbidden"
    assert api.get("/metrics", headers=admin).status_code == 200


def test_a_repeated_idempotency_key_answers_the_first_request(pair, case):
    api, (data, box) = pair.client, case
    alice, _ = pair.user()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = upload(api, {**alice, **key}, data)
    res = api.post("/v1/images", files={"file": ("b.png", data)}, data={"modality": "us"}, headers={**alice, **key})
    assert res.status_code == 200 and res.json() == first
    done = analyse(api, {**alice, **key}, first["image_id"], box)
    again = analyse(api, {**alice, **key}, first["image_id"], box)
    assert (done.status_code, again.status_code) == (201, 200) and again.json() == done.json()
    assert len(api.get("/v1/analyses", headers=alice).json()["items"]) == 1
    assert len(pair.stored(first["image_id"])) == 1  # the repeat's bytes went
    # a one-call analysis (its image stored with it) and its repeat
    key = {"Idempotency-Key": uuid.uuid4().hex}
    one, repeat = [api.post("/v1/analyses", files={"file": ("b.png", data)}, headers={**alice, **key},
                            data={"modality": "us", "prompt": json.dumps({"box": box})}) for _ in range(2)]
    assert (one.status_code, repeat.status_code) == (201, 200) and repeat.json() == one.json()
    assert len(api.get("/v1/analyses", headers=alice).json()["items"]) == 2
    assert len(pair.stored(one.json()["image_id"])) == 1
    assert api.get(f"/v1/images/{one.json()['image_id']}/image.png", headers=alice).status_code == 200


# Firebase only
def unsigned(claims: dict) -> str:
    """An emulator-style (alg none) token with these claims."""
    def enc(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims)}."


def claims_of(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def error(res) -> tuple[int, str]:
    return res.status_code, res.json()["error"]["code"]


@firebase_only
def test_config_names_firebase_and_local_sign_in_is_refused(pair):
    config = pair.client.get("/v1/config").json()
    assert config["auth"] == "firebase"
    assert config["firebase"] == {"project_id": PROJECT, "api_key": "fake-api-key",
                                  "auth_domain": f"{PROJECT}.firebaseapp.com",
                                  "auth_emulator": f"http://{pair.emulators['auth'].host}"}
    res = pair.client.post("/v1/auth/sessions", json={"username": "a", "password": "a long password"})
    assert error(res) == (400, "firebase_sign_in")
    # the app's pages may call the Auth emulator (the Firebase SDK), the API still nothing
    page_csp = pair.client.get("/app/").headers["content-security-policy"]
    assert f"connect-src 'self' http://{pair.emulators['auth'].host};" in page_csp
    assert pair.client.get("/v1/config").headers["content-security-policy"].startswith("default-src 'none'")


def test_the_pages_may_call_firebase_authentication_in_production(tmp_path, monkeypatch):
    from server.firebase import connect_sources
    monkeypatch.delenv("FIREBASE_AUTH_EMULATOR_HOST", raising=False)
    production = Settings(home=tmp_path, auth="firebase", store="firestore", firebase_project_id="p")
    assert connect_sources(production) == ("https://identitytoolkit.googleapis.com",
                                           "https://securetoken.googleapis.com")
    assert connect_sources(Settings(home=tmp_path)) == ()


def test_the_browser_reaches_the_auth_emulator_by_its_own_address(tmp_path, monkeypatch):
    """docker-compose.firebase.yml: the server reaches the emulator as firebase:9099, the browser as 127.0.0.1."""
    from server.firebase import browser_auth_emulator, connect_sources
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", "firebase:9099")
    base = dict(home=tmp_path, auth="firebase", store="firestore", firebase_project_id="demo-branet")
    assert connect_sources(Settings(**base, firebase_emulators=True)) == ("http://firebase:9099",)
    compose = Settings(**base, firebase_emulators=True, firebase_auth_emulator_url="http://127.0.0.1:9099")
    assert connect_sources(compose) == ("http://127.0.0.1:9099",) and browser_auth_emulator(compose) == "http://127.0.0.1:9099"
    # never without the emulators allowed, whatever the variables say
    assert browser_auth_emulator(Settings(**base, firebase_auth_emulator_url="http://127.0.0.1:9099")) is None


def test_local_user_commands_refuse_with_firebase_sign_in(monkeypatch, capsys):
    from server.cli import main
    from server.settings import get_settings
    monkeypatch.setenv("BRANET_AUTH", "firebase")
    get_settings.cache_clear()
    try:
        for args in (["users", "add", "x", "--no-password"], ["users", "list"], ["users", "revoke", "x"]):
            assert main(args) == 2
            assert "only `branet users grant-admin EMAIL`" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
    monkeypatch.setenv("BRANET_AUTH", "local")
    assert main(["users", "grant-admin", "x@example.com"]) == 2
    assert "for BRANET_AUTH=firebase" in capsys.readouterr().err
    get_settings.cache_clear()


@firebase_only
def test_bad_tokens_answer_401_and_a_disabled_account_403(pair):
    from firebase_admin import auth
    api, rest = pair.client, pair.emulators["rest"]
    fb_app = api.app.state.users.app
    headers, email = pair.user()
    token = headers["Authorization"].split()[1]
    assert api.get("/v1/me", headers=headers).json()["name"] == email

    def who(token: str):
        return api.get("/v1/analyses", headers={"Authorization": f"Bearer {token}"})
    # malformed
    for bad in ("not-a-jwt", "a.b.c", token[:-20]):
        res = who(bad)
        assert error(res) == (401, "invalid_token") and res.headers["www-authenticate"] == "Bearer", bad
    # expired: the same user's token as the emulator issued it two hours ago
    claims = claims_of(token)
    old = claims | {"iat": claims["iat"] - 7200, "auth_time": claims["auth_time"] - 7200, "exp": claims["exp"] - 7200}
    res = who(unsigned(old))
    assert error(res) == (401, "token_expired") and "fresh" in res.json()["error"]["message"]
    # another project's
    res = who(unsigned(claims | {"aud": "other-project", "iss": "https://securetoken.google.com/other-project"}))
    assert error(res) == (401, "invalid_token") and "another Firebase project" in res.json()["error"]["message"]
    # revoked (tokens issued before the revocation, which counts in whole seconds)
    time.sleep(1.1)
    uid = claims["user_id"]
    auth.revoke_refresh_tokens(uid, app=fb_app)
    res = who(token)
    assert error(res) == (401, "token_revoked") and "sign in again" in res.json()["error"]["message"]
    time.sleep(1.1)
    fresh = rest.sign_in(email)["idToken"]
    assert who(fresh).status_code == 200
    # disabled, then deleted
    auth.update_user(uid, disabled=True, app=fb_app)
    assert error(who(fresh)) == (403, "user_disabled")
    auth.delete_user(uid, app=fb_app)
    assert error(who(fresh)) == (401, "invalid_token")
    # the upload routes refuse before reading the body, the same way
    res = api.post("/v1/images", files={"file": ("b.png", b"\x89PNG")}, data={"modality": "us"},
                   headers={"Authorization": f"Bearer {unsigned(old)}"})
    assert error(res) == (401, "token_expired")


@firebase_only
def test_revoke_admin_ends_the_rights_at_once(pair):
    api, rest = pair.client, pair.emulators["rest"]
    admin, email = pair.user(admin=True)
    assert api.get("/metrics", headers=admin).status_code == 200
    time.sleep(1.1)  # revocation counts in whole seconds
    res = cli(pair.env, "users", "revoke-admin", email)
    assert "no longer an admin" in res.stderr
    assert error(api.get("/metrics", headers=admin)) == (401, "token_revoked")
    again = {"Authorization": f"Bearer {rest.sign_in(email)['idToken']}"}
    assert api.get("/v1/me", headers=again).json()["role"] == "clinician"
    assert api.get("/metrics", headers=again).status_code == 403
    res = subprocess.run([BRANET, "users", "grant-admin", "nobody@example.com"], env={**os.environ, **pair.env},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "no Firebase user" in res.stderr


@firebase_only
def test_security_rules_let_a_user_read_only_their_own_documents(pair, case):
    api, (data, box) = pair.client, case
    (alice, _), (bob, _) = pair.user(), pair.user()
    image = upload(api, alice, data)
    analysis = analyse(api, alice, image["image_id"], box).json()
    uid = claims_of(alice["Authorization"].split()[1])["user_id"]
    docs = f"http://{pair.emulators['firestore'].host}/v1/projects/{PROJECT}/databases/(default)/documents"
    path = f"{docs}/users/{uid}/analyses/{analysis['id']}"
    own = httpx.get(path, headers=alice, timeout=10)
    assert own.status_code == 200, own.text
    fields = own.json()["fields"]
    assert fields["summary"]["mapValue"]["fields"]["label"]["stringValue"] == analysis["label"]
    assert "mask_png" not in fields["result"]["stringValue"]  # pictures are files on the server, not documents
    assert httpx.get(f"{docs}/users/{uid}/images/{image['image_id']}", headers=alice, timeout=10).status_code == 200
    for headers in (bob, {}):
        res = httpx.get(path, headers=headers, timeout=10)
        assert res.status_code == 403 and res.json()["error"]["status"] == "PERMISSION_DENIED"
        assert httpx.get(f"{docs}/users/{uid}/analyses", headers=headers, timeout=10).status_code == 403
    write = {"fields": {"label": {"stringValue": "benign"}}}
    for target in (path, f"{docs}/users/{uid}/analyses/forged"):
        res = httpx.patch(target, json=write, headers=alice, timeout=10)
        assert res.status_code == 403, target
    assert httpx.delete(path, headers=alice, timeout=10).status_code == 403
    assert api.get(f"/v1/analyses/{analysis['id']}", headers=alice).json() == analysis


def test_start_up_repair_deletes_files_without_documents(emulators, tmp_path):
    from server.firestore_store import FirestoreStore, client
    from server.store import User
    user = User(f"u{uuid.uuid4().hex[:12]}", "x@example.com")
    # a generous bound: this is about what the repair deletes (the bound is the fault tests')
    store = FirestoreStore(client(PROJECT), tmp_path, timeout_s=60)
    kept = store.add_image(user, "0" * 64, "us", 4, 4, b"png bytes")
    store.close()
    folder = tmp_path / "firestore" / user.id
    orphans = [folder / f"{uuid.uuid4().hex}.png", folder / f"{uuid.uuid4().hex}.json"]  # a crash's leftovers
    partial = folder / f"{uuid.uuid4().hex}.part"
    for path in orphans + [partial]:
        path.write_bytes(b"x")
    store = FirestoreStore(client(PROJECT), tmp_path, timeout_s=60)
    try:
        assert store.repaired == {"files_without_documents": sorted(p.name for p in orphans),
                                  "partial_files": [partial.name]}
        assert sorted(folder.iterdir()) == [kept.file]
        assert store.get_image(user, kept.id).file.read_bytes() == b"png bytes"
    finally:
        store.close()


def test_emulator_variables_need_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9099")
    settings = Settings(home=tmp_path, auth="firebase", store="firestore", firebase_project_id=PROJECT)
    with pytest.raises(FirebaseConfigError, match="BRANET_FIREBASE_EMULATORS"):
        check_settings(settings)
    with pytest.raises(FirebaseConfigError, match="BRANET_FIREBASE_PROJECT_ID"):
        check_settings(Settings(home=tmp_path, store="firestore", firebase_emulators=True))
    with pytest.raises(FirebaseConfigError, match="BRANET_STORE=firestore"):
        check_settings(Settings(home=tmp_path, auth="firebase", firebase_project_id=PROJECT, firebase_emulators=True))
    check_settings(Settings(home=tmp_path))  # local + sqlite: the variables do not matter
    res = subprocess.run([BRANET, "serve", "--port", "1"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "BRANET_HOME": str(tmp_path), "BRANET_AUTH": "firebase",
                              "BRANET_STORE": "firestore", "BRANET_FIREBASE_PROJECT_ID": PROJECT})
    assert res.returncode == 1 and "cannot start" in res.stderr and "BRANET_FIREBASE_EMULATORS" in res.stderr


@firebase_only
def test_a_hung_firestore_answers_503_in_time_and_the_timed_out_write_is_undone(pair, case):
    api, (data, box) = pair.client, case
    firestore = pair.emulators["firestore"]
    alice, _ = pair.user()
    image = upload(api, alice, data)  # also makes the user's folder
    uid = claims_of(alice["Authorization"].split()[1])["user_id"]
    folder = pair.client.home / "firestore" / uid
    before = sorted(p.name for p in folder.iterdir())
    firestore.pause()  # connections are accepted, nothing answers
    try:
        start = time.monotonic()
        res = api.post("/v1/images", files={"file": ("b.png", data)}, data={"modality": "us"}, headers=alice)
        uploaded_in = time.monotonic() - start
        start = time.monotonic()
        page = api.get("/v1/analyses", headers=alice)
        listed_in = time.monotonic() - start
    finally:
        firestore.resume()
    print(f"\nFirestore hung: an upload answered 503 in {uploaded_in:.1f} s, a history page in {listed_in:.1f} s")
    assert error(res) == (503, "storage_unavailable") and uploaded_in < TIMEOUT_S + SLACK_S, uploaded_in
    assert error(page) == (503, "storage_unavailable") and listed_in < TIMEOUT_S + SLACK_S, listed_in
    # The timed-out write may have landed: it is undone (documents, then the file) once Firestore answers.
    docs = f"http://{firestore.host}/v1/projects/{PROJECT}/databases/(default)/documents/users/{uid}/images"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sorted(p.name for p in folder.iterdir()) != before:
        time.sleep(0.5)
    assert sorted(p.name for p in folder.iterdir()) == before
    listed = httpx.get(docs, headers={"Authorization": "Bearer owner"}, timeout=10).json().get("documents", [])
    assert [d["name"].rsplit("/", 1)[1] for d in listed] == [image["image_id"]]
    assert upload(api, alice, data)["image_id"] != image["image_id"]  # and it works again


@firebase_only
def test_a_hung_auth_service_answers_503_in_time(pair):
    api, auth = pair.client, pair.emulators["auth"]
    alice, _ = pair.user()
    auth.pause()
    try:
        start = time.monotonic()
        res = api.get("/v1/analyses", headers=alice)
        elapsed = time.monotonic() - start
    finally:
        auth.resume()
    print(f"\nAuth hung: 503 in {elapsed:.1f} s")
    assert error(res) == (503, "auth_unavailable") and elapsed < TIMEOUT_S + SLACK_S, elapsed
    assert res.headers["retry-after"] == "5"
    assert api.get("/v1/analyses", headers=alice).status_code == 200


@firebase_only
def test_firestore_stopped_mid_analysis_answers_503_and_a_retry_works(pair, case):
    api, (data, box) = pair.client, case
    firestore = pair.emulators["firestore"]
    alice, _ = pair.user()
    image = upload(api, alice, data)
    folder = pair.client.home / "firestore"
    before = sorted(p.name for p in folder.glob("*/*"))
    # A one-call (multipart) analysis with Firestore down: the models run, then nothing can be stored. (Stopping
    # it a fixed delay into the request raced the models: on OpenVINO a cached image's analysis can finish first.)
    firestore.stop()
    start = time.monotonic()
    res = api.post("/v1/analyses", files={"file": ("b.png", data)}, data={"modality": "us",
                   "prompt": json.dumps({"box": box})}, headers=alice)
    elapsed = time.monotonic() - start
    assert error(res) == (503, "storage_unavailable"), res.text
    assert "Firestore" in res.json()["error"]["message"] and "nothing was stored" in res.json()["error"]["message"]
    assert sorted(p.name for p in folder.glob("*/*")) == before  # no file of the failed request is left
    start = time.monotonic()
    res = api.get("/v1/analyses", headers=alice)
    listed_in = time.monotonic() - start
    assert error(res) == (503, "storage_unavailable") and listed_in < TIMEOUT_S + SLACK_S, listed_in
    print(f"\nFirestore down: analysis answered 503 in {elapsed:.1f} s, a history page in {listed_in:.1f} s "
          f"(BRANET_FIREBASE_TIMEOUT_S={TIMEOUT_S:g})")
    firestore.start()  # the same port; the emulator keeps nothing in memory across a restart
    # gRPC reconnects after its backoff (which grew while Firestore was down): a later retry works
    back, res = time.monotonic(), None
    while time.monotonic() < back + 90:
        res = api.get("/v1/analyses", headers=alice)
        if res.status_code != 503:
            break
    assert res.status_code == 200, res.text
    print(f"Firestore restarted: the history answered again after {time.monotonic() - back:.1f} s")
    res = api.post("/v1/analyses", files={"file": ("b.png", data)}, data={"modality": "us",
                   "prompt": json.dumps({"box": box})}, headers=alice)
    assert res.status_code == 201, res.text
    done = res.json()
    assert [a["id"] for a in api.get("/v1/analyses", headers=alice).json()["items"]] == [done["id"]]
    # the analysis and its new image were written together, bytes included
    assert sorted(p.name for p in folder.glob("*/*")) == sorted(before + [f"{done['image_id']}.png",
                                                                          f"{done['id']}.json"])
    assert api.get(f"/v1/images/{done['image_id']}/image.png", headers=alice).status_code == 200


# Cloud Storage bytes (BRANET_BYTES_STORE=cloud-storage), on the gcp-storage-emulator
def test_cloud_storage_settings(monkeypatch, tmp_path):
    for name in ("FIREBASE_AUTH_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    monkeypatch.setenv("BRANET_BYTES_STORE", "cloud-storage")
    monkeypatch.setenv("BRANET_STORAGE_BUCKET", BUCKET)
    from_env = Settings(home=tmp_path, auth="firebase", store="firestore", firebase_project_id=PROJECT)
    assert (from_env.bytes_store, from_env.storage_bucket) == ("cloud-storage", BUCKET)
    # google-cloud-storage follows STORAGE_EMULATOR_HOST by itself: only with the emulators allowed
    with pytest.raises(FirebaseConfigError, match="STORAGE_EMULATOR_HOST is set.*BRANET_FIREBASE_EMULATORS=true"):
        check_settings(from_env)
    base = dict(home=tmp_path, auth="firebase", store="firestore", firebase_project_id=PROJECT,
                firebase_emulators=True, bytes_store="cloud-storage")
    with pytest.raises(FirebaseConfigError, match="needs BRANET_STORAGE_BUCKET"):
        check_settings(Settings(**base, storage_bucket=None))
    with pytest.raises(FirebaseConfigError, match="BRANET_STORE=firestore"):
        check_settings(Settings(home=tmp_path, bytes_store="cloud-storage"))
    check_settings(Settings(**base))


def object_bytes(storage, name: str) -> bytes:
    res = httpx.get(f"{storage.url}/download/storage/v1/b/{BUCKET}/o/{quote(name, safe='')}", params={"alt": "media"},
                    timeout=10)
    res.raise_for_status()
    return res.content


def one_call(api: TestClient, headers: dict, data: bytes, box: list):
    return api.post("/v1/analyses", files={"file": ("b.png", data)}, headers=headers,
                    data={"modality": "us", "prompt": json.dumps({"box": box})})


@cloud_only
def test_the_bytes_are_objects_under_the_users_path(pair, case):
    api, (data, box), storage = pair.client, case, pair.emulators["storage"]
    (alice, _), (bob, _) = pair.user(), pair.user()
    uid = claims_of(alice["Authorization"].split()[1])["user_id"]
    res = one_call(api, alice, data, box)
    assert res.status_code == 201, res.text
    done = res.json()
    image_object = f"users/{uid}/images/{done['image_id']}.png"
    pictures_object = f"users/{uid}/analyses/{done['id']}.json"
    assert storage.objects(prefix=f"users/{uid}/") == sorted([image_object, pictures_object])
    assert object_bytes(storage, image_object)[:8] == b"\x89PNG\r\n\x1a\n"
    pictures = json.loads(object_bytes(storage, pictures_object))
    assert pictures["segmentation.mask_png"] == done["segmentation"]["mask_png"]
    assert list((pair.client.home / "firestore").glob("*/*")) == []  # nothing in the data folder
    docs = f"http://{pair.emulators['firestore'].host}/v1/projects/{PROJECT}/databases/(default)/documents"
    fields = httpx.get(f"{docs}/users/{uid}/images/{done['image_id']}", headers={"Authorization": "Bearer owner"},
                       timeout=10).json()["fields"]
    assert fields["object"]["stringValue"] == image_object and "file" not in fields
    # read back through the API: the full result (pictures from their object), the overlay and the image
    assert api.get(f"/v1/analyses/{done['id']}", headers=alice).json() == done
    assert api.get(f"/v1/analyses/{done['id']}/overlay.png", headers=alice).content[:8] == b"\x89PNG\r\n\x1a\n"
    assert api.get(f"/v1/images/{done['image_id']}/image.png", headers=alice).status_code == 200
    for path in (f"/v1/analyses/{done['id']}/overlay.png", f"/v1/images/{done['image_id']}/image.png"):
        assert error(api.get(path, headers=bob)) == (404, "not_found")
    assert api.delete(f"/v1/analyses/{done['id']}", headers=bob).status_code == 404
    assert storage.objects(prefix=f"users/{uid}/") == sorted([image_object, pictures_object])
    # deleting the analysis deletes its bytes (its pictures, and its image: no other analysis uses it)
    assert api.delete(f"/v1/analyses/{done['id']}", headers=alice).status_code == 204
    assert storage.objects(prefix=f"users/{uid}/") == []


@cloud_only
def test_cloud_storage_stopped_answers_503_nothing_half_written_and_a_retry_works(pair, case):
    api, (data, box), storage = pair.client, case, pair.emulators["storage"]
    alice, _ = pair.user()
    uid = claims_of(alice["Authorization"].split()[1])["user_id"]
    kept = one_call(api, alice, data, box).json()
    before = storage.objects(prefix=f"users/{uid}/")
    storage.stop()
    try:
        start = time.monotonic()
        res = one_call(api, alice, data, box)
        elapsed = time.monotonic() - start
        assert error(res) == (503, "storage_unavailable"), res.text
        message = res.json()["error"]["message"]
        assert "Cloud Storage" in message and "nothing was stored" in message, message
        # the history's documents are in Firestore: the list still answers, without the failed analysis
        page = api.get("/v1/analyses", headers=alice)
        assert page.status_code == 200 and [a["id"] for a in page.json()["items"]] == [kept["id"]]
        start = time.monotonic()
        full = api.get(f"/v1/analyses/{kept['id']}", headers=alice)  # its pictures are in Cloud Storage
        read_in = time.monotonic() - start
        assert error(full) == (503, "storage_unavailable") and read_in < TIMEOUT_S + SLACK_S, read_in
    finally:
        storage.start()  # the same port, the same objects (on disk)
    print(f"\nCloud Storage down: a one-call analysis answered 503 in {elapsed:.1f} s, a stored analysis in "
          f"{read_in:.1f} s (BRANET_FIREBASE_TIMEOUT_S={TIMEOUT_S:g})")
    # The models ran before the store: the 503 comes after the analysis time plus the bound.
    assert storage.objects(prefix=f"users/{uid}/") == before  # no orphan object of the failed request
    res = one_call(api, alice, data, box)
    assert res.status_code == 201, res.text
    done = res.json()
    assert [a["id"] for a in api.get("/v1/analyses", headers=alice).json()["items"]] == [done["id"], kept["id"]]
    assert storage.objects(prefix=f"users/{uid}/") == sorted(before + [f"users/{uid}/images/{done['image_id']}.png",
                                                                       f"users/{uid}/analyses/{done['id']}.json"])
    assert api.get(f"/v1/analyses/{kept['id']}", headers=alice).json() == kept


@cloud_only
def test_a_hung_firestore_leaves_no_object_of_the_timed_out_write(pair, case):
    """The bytes are uploaded before the documents: when the documents' write times out (it may still land), its
    documents and then its objects are removed once Firestore answers again."""
    api, (data, _), storage, firestore = pair.client, case, pair.emulators["storage"], pair.emulators["firestore"]
    alice, _ = pair.user()
    uid = claims_of(alice["Authorization"].split()[1])["user_id"]
    image = upload(api, alice, data)
    before = storage.objects(prefix=f"users/{uid}/")
    firestore.pause()
    try:
        start = time.monotonic()
        res = api.post("/v1/images", files={"file": ("b.png", data)}, data={"modality": "us"}, headers=alice)
        elapsed = time.monotonic() - start
    finally:
        firestore.resume()
    assert error(res) == (503, "storage_unavailable") and elapsed < TIMEOUT_S + SLACK_S, elapsed
    assert "Firestore" in res.json()["error"]["message"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and storage.objects(prefix=f"users/{uid}/") != before:
        time.sleep(0.5)
    assert storage.objects(prefix=f"users/{uid}/") == before == [f"users/{uid}/images/{image['image_id']}.png"]


def test_start_up_repair_sweeps_old_objects_without_documents(emulators, tmp_path):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    from server.firestore_store import FirestoreStore, client
    from server.store import User
    bucket = gcs.Client(project=PROJECT, credentials=AnonymousCredentials()).bucket(BUCKET)
    user = User(f"u{uuid.uuid4().hex[:12]}", "x@example.com")
    store = FirestoreStore(client(PROJECT), tmp_path, timeout_s=60, bucket=bucket)
    kept = store.add_image(user, "0" * 64, "us", 4, 4, b"png bytes")
    store.close()
    orphans = [f"users/{user.id}/images/{uuid.uuid4().hex}.png", f"users/{user.id}/analyses/{uuid.uuid4().hex}.json"]
    for name in orphans:  # a crash between the upload and the document
        bucket.blob(name).upload_from_string(b"x", timeout=10)
    # another replica may be between its upload and its document: young objects are never swept
    young = FirestoreStore(client(PROJECT), tmp_path, timeout_s=60, bucket=bucket)
    young.close()
    assert young.repaired["objects_without_documents"] == []
    store = FirestoreStore(client(PROJECT), tmp_path, timeout_s=60, bucket=bucket, sweep_age_s=0)
    try:
        assert sorted(store.repaired["objects_without_documents"]) == sorted(orphans)
        assert emulators["storage"].objects(prefix=f"users/{user.id}/") == [str(kept.file)]
        assert store.image_png(store.get_image(user, kept.id)) == b"png bytes"
    finally:
        store.close()


def test_production_bytes_go_to_the_bucket_through_firebase_admin(monkeypatch, tmp_path):
    """Without the emulators: firebase_admin.storage's bucket, with the service account's credentials, on Google's
    endpoint (no call is made: building it needs no network)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from server.firebase import admin_app, close_app, storage_bucket
    for name in ("FIREBASE_AUTH_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(name, raising=False)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    account = tmp_path / "service-account.json"
    account.write_text(json.dumps({"type": "service_account", "project_id": "my-project", "private_key_id": "k1",
                                   "private_key": key, "client_email": "branet@my-project.iam.gserviceaccount.com",
                                   "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}))
    settings = Settings(home=tmp_path, auth="firebase", store="firestore", firebase_project_id="my-project",
                        firebase_credentials=account, bytes_store="cloud-storage",
                        storage_bucket="my-project.firebasestorage.app")
    app = admin_app(settings)
    try:
        bucket = storage_bucket(settings, app)
        assert bucket.name == "my-project.firebasestorage.app" and app.options.get("storageBucket") == bucket.name
        assert bucket.client._connection.API_BASE_URL == "https://storage.googleapis.com"
        assert bucket.client._credentials.service_account_email == "branet@my-project.iam.gserviceaccount.com"
        assert storage_bucket(Settings(home=tmp_path, store="firestore", firebase_project_id="p"), app) is None
    finally:
        close_app(app)
