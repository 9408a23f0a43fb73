"""Sign-in for people: passwords from the CLI, sessions, sign-out, expiry, failed sign-ins slowed and locked,
the public config, and the measured quality of the served models. Real SQLite, real app, in-process."""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import sqlite3
import time

import pytest
from fastapi.testclient import TestClient

from models.manifest import WEIGHTS_DIR
from server import passwords
from server.app import create_app, first_start
from server.cli import main
from server.login_limiter import LoginLimiter
from server.settings import Settings, get_settings
from server.store import Store

NOTICE = "Research use only. Not for clinical diagnosis."
INVALID = {"error": {"code": "invalid_credentials", "message": "wrong user name or password"}}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """An app of its own with the default sign-in limits (the shared `api` has none: schemathesis signs in at
    random), and sessions of about a second, to see them expire."""
    home = tmp_path_factory.mktemp("auth-home")
    settings = Settings(home=home, create_dev_user=False, session_hours=1.5 / 3600)
    assert (settings.login_max_failures, settings.login_lockout_s) == (5, 300)
    app = create_app(settings)
    with TestClient(app) as client:
        client.home = home
        yield client


@pytest.fixture
def clock(fresh):
    """A new limiter on `fresh` (the settings' limits) whose clock the test moves."""
    clock = Clock()
    s = fresh.app.state.services.settings
    fresh.app.state.login_limiter = LoginLimiter(s.login_max_failures, s.login_lockout_s, s.login_delay_s, clock=clock)
    return clock


def from_address(client: TestClient, host: str) -> TestClient:
    """Another client of the same running app, seen from `host`."""
    return TestClient(client.app, client=(host, 40000))


def add_user(client: TestClient, name: str, password: str, admin: bool = False) -> str:
    return client.app.state.users.add_user(name, admin, passwords.hash_password(password))[1]


def sign_in(client: TestClient, name: str, password: str):
    return client.post("/v1/auth/sessions", json={"username": name, "password": password})


@pytest.fixture
def cli_home(fresh, monkeypatch):
    """The CLI writes to the running `fresh` app's home (SQLite WAL: both at once)."""
    monkeypatch.setenv("BRANET_HOME", str(fresh.home))
    get_settings.cache_clear()
    yield fresh.home
    get_settings.cache_clear()


def run_cli(monkeypatch, capsys, args: list[str], stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))  # not a terminal
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# the CLI
def test_cli_adds_a_user_with_a_password_from_stdin_who_can_sign_in(fresh, clock, cli_home, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, ["users", "add", "erin", "--password-stdin"], "long enough pw\n")
    assert code == 0, err
    assert re.fullmatch(r"bn_[A-Za-z0-9_-]{40,}\n", out)  # the API token alone
    assert fresh.get("/v1/me", headers=bearer(out.strip())).json()["auth"] == "token"
    res = sign_in(fresh, "erin", "long enough pw")
    assert res.status_code == 201, res.text
    assert res.json()["user"] == {"name": "erin", "role": "clinician"}
    assert b"long enough pw" not in (cli_home / "branet.sqlite3").read_bytes()
    stored = fresh.app.state.users.password_of("erin")[1]
    assert stored.startswith("$argon2id$")

    code, out, err = run_cli(monkeypatch, capsys, ["users", "add", "frank", "--admin", "--password-stdin"],
                             "frank-pw-1\n")
    assert code == 0 and sign_in(fresh, "frank", "frank-pw-1").json()["user"]["role"] == "admin"


def test_cli_refuses_short_or_missing_passwords(fresh, clock, cli_home, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, ["users", "add", "gina", "--password-stdin"], "short\n")
    assert code == 2 and out == "" and "at least 8 characters" in err
    code, out, err = run_cli(monkeypatch, capsys, ["users", "add", "gina"], "a long password\n")
    assert code == 2 and out == "" and "--password-stdin" in err and "--no-password" in err
    assert fresh.app.state.users.password_of("gina") is None  # nothing was created
    code, out, err = run_cli(monkeypatch, capsys, ["users", "add", "gina", "--no-password"])
    assert code == 0 and out.startswith("bn_")
    assert sign_in(fresh, "gina", "a long password").json() == INVALID  # token-only: no sign-in
    code, out, err = run_cli(monkeypatch, capsys, ["users", "add", "gina", "--password-stdin"], "a long password\n")
    assert code == 1 and "exists already" in err


def test_cli_passwd_sets_a_new_password_and_ends_sessions(fresh, clock, cli_home, monkeypatch, capsys):
    run_cli(monkeypatch, capsys, ["users", "add", "hana", "--password-stdin"], "first password\n")
    session = sign_in(fresh, "hana", "first password").json()["token"]
    code, out, err = run_cli(monkeypatch, capsys, ["users", "passwd", "hana", "--password-stdin"], "second password\n")
    assert code == 0 and out == ""
    assert fresh.get("/v1/me", headers=bearer(session)).status_code == 401
    assert sign_in(fresh, "hana", "first password").status_code == 401
    assert sign_in(fresh, "hana", "second password").status_code == 201
    code, _, err = run_cli(monkeypatch, capsys, ["users", "passwd", "nobody", "--password-stdin"], "whatever123\n")
    assert code == 1 and "no user 'nobody'" in err
    code, _, err = run_cli(monkeypatch, capsys, ["users", "passwd", "hana", "--password-stdin"], "1234567\n")
    assert code == 2 and "at least 8" in err


def test_first_start_prints_a_typeable_password_for_dev(tmp_path, capsys):
    store = Store(tmp_path)
    try:
        first_start(store, Settings(home=tmp_path), "127.0.0.1")
        err = capsys.readouterr().err
        password = re.search(r"password \(shown once\): (\S+)", err).group(1)
        assert re.fullmatch(r"[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}", password)
        assert re.search(r"token \(shown once\): bn_\S+", err)
        user, password_hash = store.password_of("dev")
        assert user.is_admin and passwords.verify(password_hash, password)
        first_start(store, Settings(home=tmp_path), "127.0.0.1")
        assert capsys.readouterr().err == ""  # once
    finally:
        store.close()


def test_a_database_from_before_passwords_keeps_working(tmp_path):
    db = sqlite3.connect(tmp_path / "branet.sqlite3")
    db.executescript("""
        CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, is_admin INTEGER NOT NULL,
                            created TEXT NOT NULL);
        CREATE TABLE tokens (hash TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id), created TEXT NOT NULL);
        INSERT INTO users VALUES ('u1', 'old', 0, '2026-01-01T00:00:00.000+00:00');""")
    db.execute("INSERT INTO tokens VALUES (?, 'u1', 'x')", (hashlib.sha256(b"bn_old").hexdigest(),))
    db.commit()
    db.close()
    store = Store(tmp_path)
    try:
        assert store.user_for_token("bn_old").name == "old"
        assert store.password_of("old")[1] is None
        assert store.set_password("old", passwords.hash_password("a new password"))
        assert passwords.verify(store.password_of("old")[1], "a new password")
    finally:
        store.close()


# sessions
@pytest.fixture(scope="module")
def dana(api):
    add_user(api, "dana", "dana's password")
    return "dana", "dana's password"


def test_sign_in_gives_a_session_that_works_everywhere_until_signed_out(api, dana):
    res = sign_in(api, *dana)
    assert res.status_code == 201, res.text
    body = res.json()
    assert set(body) == {"token", "expires_at", "user"} and body["token"].startswith("bns_")
    assert body["user"] == {"name": "dana", "role": "clinician"}
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert expires.utcoffset() == dt.timedelta(0)
    hours = (expires - dt.datetime.now(dt.timezone.utc)).total_seconds() / 3600
    assert 11.9 < hours <= 12.0
    session = bearer(body["token"])
    assert api.get("/v1/me", headers=session).json() == {"name": "dana", "role": "clinician", "auth": "session",
                                                         "expires_at": body["expires_at"]}
    assert api.get("/v1/analyses", headers=session).status_code == 200  # every route takes it
    assert api.get("/v1/models", headers=session).status_code == 200

    assert api.delete("/v1/auth/sessions/current", headers=session).status_code == 204
    for path in ("/v1/me", "/v1/analyses"):
        res = api.get(path, headers=session)
        assert res.status_code == 401 and res.json()["error"]["code"] == "unauthorized"
    assert api.delete("/v1/auth/sessions/current", headers=session).status_code == 401


def test_api_tokens_keep_working_and_are_not_sessions(api, alice):
    assert api.get("/v1/me", headers=alice).json() == {"name": "alice", "role": "clinician", "auth": "token",
                                                      "expires_at": None}
    res = api.delete("/v1/auth/sessions/current", headers=alice)
    assert res.status_code == 400 and res.json()["error"]["code"] == "not_a_session"
    assert api.get("/v1/me", headers=alice).status_code == 200  # still works
    assert api.get("/v1/me").status_code == 401
    assert api.get("/v1/me", headers=bearer("bns_made-up")).status_code == 401


def test_an_expired_session_answers_401_and_is_removed(fresh, clock):
    add_user(fresh, "ivan", "ivan's password")
    body = sign_in(fresh, "ivan", "ivan's password").json()
    session = bearer(body["token"])
    assert fresh.get("/v1/me", headers=session).status_code == 200
    left = (dt.datetime.fromisoformat(body["expires_at"]) - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert 0 < left <= 1.5
    time.sleep(left + 0.05)
    res = fresh.get("/v1/me", headers=session)
    assert res.status_code == 401 and res.json()["error"]["message"] == "session expired"
    res = fresh.get("/v1/me", headers=session)
    assert res.status_code == 401 and res.json()["error"]["message"] == "unknown or revoked token"  # removed


# failed sign-ins
def test_wrong_password_and_unknown_name_answer_alike(api, dana):
    wrong = sign_in(api, "dana", "not dana's password")
    unknown = sign_in(api, "nobody-at-all", "dana's password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == INVALID
    assert wrong.headers.get("content-length") == unknown.headers.get("content-length")


@pytest.mark.parametrize("body", [{"username": "dana"}, {"password": "x" * 10}, {"username": "", "password": "x"},
                                  {"username": "dana", "password": ""}, {"username": 3, "password": "x" * 10},
                                  {"username": "dana", "password": "x" * 10, "extra": 1}, [], "dana"])
def test_bad_sign_in_bodies_answer_422(api, body):
    res = api.post("/v1/auth/sessions", json=body)
    assert res.status_code == 422 and res.json()["error"]["code"] == "invalid_request"


def test_a_sign_in_body_that_is_not_json_answers_422(api):
    res = api.post("/v1/auth/sessions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert res.status_code == 422 and res.json()["error"]["code"] == "invalid_request"


def locked(res, seconds: int) -> bool:
    return (res.status_code == 429 and res.headers["Retry-After"] == str(seconds) and res.json() == {
        "error": {"code": "too_many_attempts", "message": f"too many failed sign-ins; try again in {seconds} s"}})


def test_failures_are_slowed_then_lock_the_account_from_any_address(fresh, clock):
    add_user(fresh, "jana", "jana's password")
    waits = []
    for i in range(5):  # each from its own address: only the account's count reaches the limit
        start = time.perf_counter()
        assert sign_in(from_address(fresh, f"10.0.0.{i}"), "jana", "guess").json() == INVALID
        waits.append(time.perf_counter() - start)
    assert waits[-1] > 0.9 and waits[-1] > waits[0] + 0.5  # 0.2 s, 0.4 s, ... 1.0 s
    somewhere_else = from_address(fresh, "10.0.1.1")
    assert locked(sign_in(somewhere_else, "jana", "jana's password"), 300)  # even with the right password
    clock.t += 120
    assert locked(sign_in(somewhere_else, "jana", "jana's password"), 180)
    assert sign_in(somewhere_else, "kim-unknown", "whatever").json() == INVALID  # other names are not locked
    clock.t += 180
    assert sign_in(somewhere_else, "jana", "jana's password").status_code == 201


def test_a_success_clears_the_accounts_count(fresh, clock):
    add_user(fresh, "lena", "lena's password")
    for i in range(4):
        assert sign_in(from_address(fresh, f"10.1.0.{i}"), "lena", "guess").status_code == 401
    assert sign_in(from_address(fresh, "10.1.1.0"), "lena", "lena's password").status_code == 201
    for i in range(4):
        assert sign_in(from_address(fresh, f"10.1.2.{i}"), "lena", "guess").status_code == 401
    assert sign_in(from_address(fresh, "10.1.3.0"), "lena", "lena's password").status_code == 201


def test_failures_lock_the_address_for_every_name(fresh, clock):
    add_user(fresh, "mona", "mona's password")
    guesser = from_address(fresh, "192.0.2.7")
    for i in range(5):  # a different name each time: only the address's count reaches the limit
        assert sign_in(guesser, f"name-{i}", "guess").json() == INVALID
    clock.t += 10
    assert locked(sign_in(guesser, "mona", "mona's password"), 290)
    assert sign_in(from_address(fresh, "192.0.2.8"), "mona", "mona's password").status_code == 201
    clock.t += 290
    assert sign_in(guesser, "mona", "mona's password").status_code == 201


def test_the_limiter_counts_over_a_sliding_window():
    clock = Clock(0.0)
    limiter = LoginLimiter(max_failures=3, window_s=60, delay_step_s=0.2, clock=clock)
    keys = ("name:a", "address:x")
    for t in (0, 10, 20):
        assert limiter.retry_after(keys) is None
        clock.t = t
        limiter.fail(keys)
    assert limiter.delay(keys) == pytest.approx(0.6)
    assert limiter.retry_after(keys) == 40  # the first failure leaves the window at 60
    clock.t = 60
    assert limiter.retry_after(keys) is None and limiter.failures(keys) == 2
    at = limiter.fail(keys)
    limiter.withdraw("address:x", at)
    limiter.clear("name:a")
    assert limiter.failures(("name:a",)) == 0 and limiter.failures(("address:x",)) == 2
    for _ in range(20):
        limiter.fail(keys)
    assert limiter.delay(keys) == 2.0  # capped


# what the app reads first, and the models' measured quality
def test_config_needs_no_token(api):
    res = api.get("/v1/config")
    assert res.status_code == 200
    assert res.json() == {"auth": "local", "firebase": None, "max_upload_mb": 10.0, "max_upload_bytes": 10 * 1024 * 1024,
                          "accepted_types": ["image/png", "image/jpeg"], "modalities": ["us", "dm"], "min_side": 16,
                          "version": api.app.version, "notice": NOTICE}


def test_models_show_their_measured_quality(api, alice):
    manifest = json.loads((WEIGHTS_DIR / "manifest.json").read_text())["models"]
    classifiers = api.get("/v1/models", headers=alice).json()["classifiers"]
    assert {c["modality"] for c in classifiers} == {"us", "dm"}
    for c in classifiers:
        metrics = manifest[c["name"]]["metrics"]
        crossed = metrics.get("cross_fitted", {})
        assert c["quality"] == {"cv_auc": metrics["oof_roc_auc"], "cv_auc_ci": metrics["oof_roc_auc_ci"],
                                "sensitivity": metrics["oof_sensitivity"], "specificity": metrics["oof_specificity"],
                                "folds": metrics["cv_folds"], "roi_source": metrics["roi_source"],
                                "cross_fitted_sensitivity": crossed.get("sensitivity"),
                                "cross_fitted_specificity": crossed.get("specificity"),
                                "sites": [{"site": s, "n": m["n"], "auc": m["roc_auc"], "auc_ci": m["roc_auc_ci"],
                                           "sensitivity": m["sensitivity"], "specificity": m["specificity"]}
                                          for s, m in sorted(metrics.get("per_site", {}).items())],
                                "out_of_site": [{"site": o["tested_on"], "trained_on": o["trained_on"], "n": o["n"],
                                                 "auc": o["roc_auc"], "auc_ci": o["roc_auc_ci"],
                                                 "sensitivity": o["sensitivity"], "specificity": o["specificity"],
                                                 "ece": o["ece"]} for o in metrics.get("out_of_site", [])]}
        lo, hi = c["quality"]["cv_auc_ci"]
        assert 0.5 < lo < c["quality"]["cv_auc"] < hi <= 1
