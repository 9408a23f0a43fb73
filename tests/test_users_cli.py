"""`branet users list | revoke NAME | rotate NAME` against a running app sharing the CLI's BRANET_HOME,
and the dev user created only on a loopback bind, its secrets on stderr only."""
from __future__ import annotations

import io
import re

import pytest
from fastapi.testclient import TestClient

from server.app import create_app, first_start
from server.cli import main
from server.settings import Settings, get_settings
from server.store import Store

PASSWORD = "long enough pw"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    home = tmp_path_factory.mktemp("users-home")
    with TestClient(create_app(Settings(home=home, create_dev_user=False))) as client:
        client.home = home
        yield client


@pytest.fixture
def cli(running, monkeypatch, capsys):
    monkeypatch.setenv("BRANET_HOME", str(running.home))
    get_settings.cache_clear()

    def run(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err
    yield run
    get_settings.cache_clear()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def rows(out: str) -> dict[str, list[str]]:
    lines = out.strip().splitlines()
    assert lines[0].split() == ["name", "role", "created", "password", "tokens", "sessions"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def test_list_revoke_and_rotate(running, cli):
    code, api_token, _ = cli("users", "add", "amara", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0
    api_token = api_token.strip()
    code, ci_token, _ = cli("users", "add", "ci-bot", "--no-password", "--admin")
    ci_token = ci_token.strip()
    session = running.post("/v1/auth/sessions", json={"username": "amara", "password": PASSWORD}).json()["token"]
    for token in (api_token, session, ci_token):
        assert running.get("/v1/me", headers=bearer(token)).status_code == 200

    code, out, _ = cli("users", "list")
    listed = rows(out)
    assert code == 0 and set(listed) == {"amara", "ci-bot"}
    assert listed["amara"][0] == "clinician" and listed["amara"][2:] == ["yes", "1", "1"]
    assert listed["ci-bot"][0] == "admin" and listed["ci-bot"][2:] == ["no", "1", "0"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", listed["amara"][1])
    assert api_token not in out and session not in out  # no secret is listed

    code, out, err = cli("users", "revoke", "amara")
    assert code == 0 and out == "" and "revoked 1 API token(s) and 1 session(s)" in err
    for token in (api_token, session):  # at once, on the running server
        assert running.get("/v1/me", headers=bearer(token)).status_code == 401
    assert running.get("/v1/me", headers=bearer(ci_token)).status_code == 200  # others untouched
    assert rows(cli("users", "list")[1])["amara"][2:] == ["yes", "0", "0"]
    # Her password still signs her in (revoke ends what exists; `users passwd` changes the password).
    assert running.post("/v1/auth/sessions", json={"username": "amara", "password": PASSWORD}).status_code == 201

    code, out, err = cli("users", "rotate", "ci-bot")
    assert code == 0 and re.fullmatch(r"bn_[A-Za-z0-9_-]{40,}\n", out)  # the new token alone on stdout
    new = out.strip()
    assert new != ci_token and "new API token is on stdout" in err
    assert running.get("/v1/me", headers=bearer(ci_token)).status_code == 401
    assert running.get("/v1/me", headers=bearer(new)).json()["name"] == "ci-bot"
    assert rows(cli("users", "list")[1])["ci-bot"][2:] == ["no", "1", "0"]

    for command in ("revoke", "rotate"):
        code, out, err = cli("users", command, "nobody")
        assert code == 1 and out == "" and "no user 'nobody'" in err


@pytest.mark.parametrize("host,created", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                          ("0.0.0.0", False), ("192.168.1.20", False), ("::", False), (None, False)])
def test_dev_user_only_on_a_loopback_bind(tmp_path, capsys, host, created):
    store = Store(tmp_path)
    try:
        first_start(store, Settings(home=tmp_path), host)
        out, err = capsys.readouterr()
        assert out == ""  # never on stdout (a log collector's usual capture)
        assert (store.password_of("dev") is not None) == created
        if created:
            assert re.search(r"token \(shown once\): bn_\S+", err)
        else:
            assert store.user_count() == 0 and "only on a loopback bind" in err and "bn_" not in err
        first_start(store, Settings(home=tmp_path, create_dev_user=False), "127.0.0.1")
        assert store.user_count() == int(created)  # the setting can turn it off
    finally:
        store.close()


def test_the_setting_turns_the_dev_user_off(tmp_path, capsys):
    store = Store(tmp_path)
    try:
        first_start(store, Settings(home=tmp_path, create_dev_user=False), "127.0.0.1")
        assert store.user_count() == 0 and capsys.readouterr().err == ""
    finally:
        store.close()
