"""The real Firebase emulators on free ports with bounded waits, for the tests and the benchmarks (never used
by a serving process).

- Firestore: Google's emulator from the Debian package google-cloud-cli-firestore-emulator
  (`cloud_firestore_emulator`, Java), loaded with the repository's firestore.rules.
- Auth: the emulator of npm firebase-tools, pinned in deploy/firebase (`make firebase-tools`), run with a
  firebase.json of its own (the chosen port, the Emulator UI off: it cannot be downloaded here).
- Cloud Storage: PyPI gcp-storage-emulator (pinned in pyproject's `test` extra: `make install`), a pure-Python
  implementation of the Cloud Storage JSON API, in memory, with the bucket created at start. Firebase's own Storage
  emulator cannot run here (firebase-tools needs Java 21 for it and downloads its rules runtime at start), so
  storage.rules are not exercised: this emulator has no rules engine.

A missing emulator, one that exits or one not up in time calls `fail` with the command that installs it or the
end of its log (by default EmulatorError; tests/firebase_emulators.py passes pytest.fail: a failure, never a
skip). Each emulator writes its log to a file in its work folder; `Emulator.tail()` quotes it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NoReturn

import httpx

from server.launcher import free_port

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "demo-branet"  # demo-*: the emulators never reach a real project
FIRESTORE_LAUNCHER = "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator"
FIREBASE_CLI = ROOT / "deploy" / "firebase" / "node_modules" / ".bin" / "firebase"
INSTALL_FIRESTORE = ("apt-get install google-cloud-cli-firestore-emulator (or `make firebase-emulators`, "
                     "which also installs firebase-tools)")
INSTALL_AUTH = "make firebase-tools (npm ci --omit=optional in deploy/firebase)"
INSTALL_STORAGE = ".venv/bin/pip install gcp-storage-emulator==2026.7.19 (or `make install`: the test extra)"
BUCKET = f"{PROJECT}.appspot.com"


class EmulatorError(RuntimeError):
    """An emulator is missing, exited, or was not up in time (the message says which, and how to fix it)."""


def _raise(message: str) -> NoReturn:
    raise EmulatorError(message)


Fail = Callable[[str], NoReturn]


def firestore_launcher(fail: Fail = _raise) -> str:
    found = shutil.which("cloud_firestore_emulator") or (FIRESTORE_LAUNCHER if os.access(FIRESTORE_LAUNCHER, os.X_OK)
                                                         else None)
    if found is None:
        fail(f"the Firestore emulator is not installed: {INSTALL_FIRESTORE}")
    if shutil.which("java") is None:
        fail("the Firestore emulator needs Java (apt-get install default-jre-headless)")
    return found


def firebase_cli(fail: Fail = _raise) -> Path:
    if not os.access(FIREBASE_CLI, os.X_OK):
        fail(f"firebase-tools (the Auth emulator) is not installed: {INSTALL_AUTH}")
    return FIREBASE_CLI


def storage_cli(fail: Fail = _raise) -> str:
    # The virtual environment's own script first: the tests run with .venv/bin/python, often without it on PATH.
    beside = Path(sys.executable).with_name("gcp-storage-emulator")
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("gcp-storage-emulator")
    if found is None:
        fail(f"the Cloud Storage emulator is not installed: {INSTALL_STORAGE}")
    return found


class Emulator:
    """One emulator process (its own process group, so the JVM or node children go with it)."""

    def __init__(self, name: str, command: list[str], port: int, ready_url: str, workdir: Path,
                 timeout_s: float = 90.0, env: dict[str, str] | None = None, fail: Fail = _raise):
        self.name, self.command, self.port, self.ready_url = name, command, port, ready_url
        self.workdir, self.timeout_s, self.env, self.fail = workdir, timeout_s, env, fail
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def start(self) -> "Emulator":
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(self.command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env={**os.environ, **(self.env or {})})
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                self.fail(f"the {self.name} emulator exited ({code}); its log {self.log}:\n{self.tail()}")
            try:
                if httpx.get(self.ready_url, timeout=2).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        self.fail(f"the {self.name} emulator was not up after {self.timeout_s:.0f} s; its log {self.log}:\n"
                  f"{self.tail()}")

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a slow or hung service)."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)  # if it was paused
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        self.proc = None

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


class FirestoreEmulator(Emulator):
    def start(self) -> "FirestoreEmulator":
        super().start()
        # The JVM's first writes and queries take seconds (JIT): do them here, not in a test's bounded request.
        docs = f"http://{self.host}/v1/projects/{PROJECT}/databases/(default)/documents"
        owner = {"Authorization": "Bearer owner"}
        for _ in range(3):
            httpx.patch(f"{docs}/warmup/w", json={"fields": {"seq": {"integerValue": "1"}}}, headers=owner,
                        timeout=60).raise_for_status()
            httpx.post(f"{docs}:runQuery", headers=owner, timeout=60, json={"structuredQuery": {
                "from": [{"collectionId": "warmup"}], "orderBy": [{"field": {"fieldPath": "seq"},
                                                                   "direction": "DESCENDING"}], "limit": 3}})
            httpx.delete(f"{docs}/warmup/w", headers=owner, timeout=60).raise_for_status()
        return self


def firestore_emulator(workdir: Path, port: int | None = None, fail: Fail = _raise) -> FirestoreEmulator:
    """Not started yet: `with firestore_emulator(dir) as fs:`, or `.start()`; the rules are firestore.rules."""
    port = port or free_port()
    command = [firestore_launcher(fail), "start", "--host=127.0.0.1", f"--port={port}", f"--project_id={PROJECT}",
               f"--rules={ROOT / 'firestore.rules'}"]
    return FirestoreEmulator("firestore", command, port, f"http://127.0.0.1:{port}/", workdir, fail=fail)


class StorageEmulator(Emulator):
    @property
    def url(self) -> str:
        """STORAGE_EMULATOR_HOST's value (google-cloud-storage wants the scheme)."""
        return f"http://{self.host}"

    def objects(self, bucket: str = BUCKET, prefix: str = "") -> list[str]:
        """The names of the bucket's objects, through the JSON API (as any client sees them)."""
        res = httpx.get(f"{self.url}/storage/v1/b/{bucket}/o", params={"prefix": prefix}, timeout=10)
        res.raise_for_status()
        return sorted(item["name"] for item in res.json().get("items", []))


def storage_emulator(workdir: Path, port: int | None = None, fail: Fail = _raise) -> StorageEmulator:
    """Not started yet: `with storage_emulator(dir) as gcs:`, or `.start()`; the bucket BUCKET is created."""
    port = port or free_port()
    # Objects on disk in the work folder: a restart (the fault tests) finds what was stored before it.
    command = [storage_cli(fail), "--data-dir", str(workdir / "storage-data"), "start", "--host=127.0.0.1",
               f"--port={port}", f"--default-bucket={BUCKET}"]
    return StorageEmulator("storage", command, port, f"http://127.0.0.1:{port}/storage/v1/b/{BUCKET}", workdir,
                           timeout_s=30.0, fail=fail)


def auth_emulator(workdir: Path, port: int | None = None, fail: Fail = _raise) -> Emulator:
    port = port or free_port()
    (workdir / "firebase.json").write_text(json.dumps(
        {"emulators": {"auth": {"host": "127.0.0.1", "port": port}, "ui": {"enabled": False},
                       "logging": {"enabled": False}, "hub": {"host": "127.0.0.1", "port": free_port()}}}))
    command = [str(firebase_cli(fail)), "emulators:start", "--only", "auth", "--project", PROJECT]
    env = {"FIREBASE_CLI_DISABLE_UPDATE_CHECK": "true", "CI": "true", "NO_UPDATE_NOTIFIER": "1",
           "HOME": str(workdir)}  # the CLI's config and cache stay in the work folder
    return Emulator("auth", command, port, f"http://127.0.0.1:{port}/", workdir, env=env, fail=fail)


class AuthRest:
    """The Auth emulator's REST API (Identity Toolkit), as the Firebase JS SDK calls it: real ID tokens."""

    def __init__(self, host: str, api_key: str = "fake-api-key"):
        self.base = f"http://{host}/identitytoolkit.googleapis.com/v1"
        self.host, self.api_key = host, api_key

    def _post(self, path: str, body: dict) -> dict:
        res = httpx.post(f"{self.base}/{path}?key={self.api_key}", json=body, timeout=10)
        if res.status_code != 200:
            raise EmulatorError(f"the Auth emulator answered {path} with {res.status_code}: {res.text}")
        return res.json()

    def sign_up(self, email: str, password: str = "a long password") -> dict:
        """{"idToken", "localId" (the uid), "refreshToken", ...}"""
        return self._post("accounts:signUp", {"email": email, "password": password, "returnSecureToken": True})

    def sign_in(self, email: str, password: str = "a long password") -> dict:
        return self._post("accounts:signInWithPassword",
                          {"email": email, "password": password, "returnSecureToken": True})

    def clear(self, project: str = PROJECT) -> None:
        httpx.delete(f"http://{self.host}/emulator/v1/projects/{project}/accounts", timeout=10).raise_for_status()
