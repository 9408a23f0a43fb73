"""Kill -9 the real server at random moments while a client uploads, analyses and deletes; restart it each
time and check that nothing the client was told is lost or comes back, and that rows and files match.

Each server is a fresh process running the real app under uvicorn on the real store (its lifespan opens the
store, runs the start-up repair, serves): it is forked from a loader process that imported the code and
loaded the models once, because a plain `branet serve` spends ~10 s of CPU on imports and weights before it
opens the store, and 30+ of those do not fit a bounded test on two cores. Everything that touches storage
runs in the process that is killed. The test stops by itself (a deadline, bounded waits).

After each restart:
- every image and analysis whose 201 the client received (and did not delete) has its row and its file,
  and answers 200 (analysis JSON, image.png) -- all of the last round's, a sample of older ones;
- every analysis the client saw deleted (204), and its image, answer 404 and have no row and no file;
- the database and images/ agree: no row without a file, no file without a row, no `.part` left;
- the first server repairs a planted file without a row and logs its id (the real process's stderr);
- the start-up repair never found a row without a file (only files without rows, which a kill between
  rename and commit, or commit and unlink, leaves);
- no answer the client got was a 5xx.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from server.store import Store
from server.launcher import free_port
from tests.test_store_crash import BUSI_SMALL

KILLS = 32
DEADLINE_S = 210  # the whole loop; the test fails rather than run on
BOX = {"box": [60, 40, 200, 160]}

LOADER = r"""
import os, signal, sys
import uvicorn
from server.app import create_app
from server.engine import Engine
from server.settings import get_settings
settings = get_settings()
engine = Engine(settings)
engine.load()
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed servers are reaped at once
port, log = int(sys.argv[1]), sys.argv[2]
print("loaded", flush=True)
for _ in sys.stdin:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            uvicorn.run(create_app(settings, engine, host="127.0.0.1"), host="127.0.0.1", port=port,
                        log_level="warning")
        finally:
            os._exit(0)
    print(pid, flush=True)
"""


class Client:
    """What the client was told: `images` / `analyses` alive (201, not deleted), `gone` (deleted: 204)."""

    def __init__(self, url: str, token: str, png: bytes, seed: int):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        self.png, self.rng = png, random.Random(seed)
        self.images: dict[str, int] = {}  # image id -> round it was created in
        self.fresh: list[str] = []  # uploaded images no analysis has used yet
        self.analyses: dict[str, tuple[str, int]] = {}  # analysis id -> (its image id, round)
        self.gone_analyses: set[str] = set()
        self.gone_images: set[str] = set()
        self.server_errors: list[str] = []
        self.ops = {"upload": 0, "analysis": 0, "delete": 0, "cut": 0}
        self.round = 0

    def answer(self, res: httpx.Response, expected: int) -> bool:
        if res.status_code >= 500:
            self.server_errors.append(f"{res.request.method} {res.request.url.path}: {res.status_code} {res.text[:200]}")
        return res.status_code == expected

    def step(self) -> None:
        """One operation; a transport error (the server was killed) leaves its outcome unknown."""
        roll = self.rng.random()
        if roll < 0.15 and self.fresh:
            image_id = self.fresh.pop(self.rng.randrange(len(self.fresh)))
            self.ops["analysis"] += 1
            res = self.http.post("/v1/analyses", json={"image_id": image_id, "prompt": BOX})
            if self.answer(res, 201):
                self.analyses[res.json()["id"]] = (image_id, self.round)
        elif roll < 0.40 and self.analyses:
            analysis_id = self.rng.choice(sorted(self.analyses))
            image_id, _ = self.analyses.pop(analysis_id)
            self.images.pop(image_id)  # unknown until the 204: a cut delete may or may not have happened
            self.ops["delete"] += 1
            if self.answer(self.http.delete(f"/v1/analyses/{analysis_id}"), 204):
                self.gone_analyses.add(analysis_id)
                self.gone_images.add(image_id)  # its only analysis: the image goes with it
        else:
            self.ops["upload"] += 1
            res = self.http.post("/v1/images", files={"file": ("b.png", self.png, "image/png")},
                                 data={"modality": "us"})
            if self.answer(res, 201):
                self.images[res.json()["image_id"]] = self.round
                self.fresh.append(res.json()["image_id"])

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except httpx.TransportError:
                self.ops["cut"] += 1
                return


def store_state(home: Path) -> tuple[dict[str, Path], set[str], dict[str, str], set[Path]]:
    """(image id -> file, analysis ids, analysis id -> image id, files under images/) read directly."""
    db = sqlite3.connect(f"file:{home / 'branet.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        images = {r[0]: home / r[1] for r in db.execute("SELECT id, file FROM images")}
        analyses = {r[0]: r[1] for r in db.execute("SELECT id, image_id FROM analyses")}
    finally:
        db.close()
    return images, set(analyses), analyses, {p for p in (home / "images").glob("*/*")}


def wait_ready(url: str, pid: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pytest.fail("the server exited on its own")
        time.sleep(0.05)
    pytest.fail("the server did not come back before the deadline")


def wait_dead(pid: int) -> None:
    for _ in range(400):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    pytest.fail(f"server {pid} did not die")


def test_kill9_loses_nothing_and_leaves_no_orphans(tmp_path, busi_dir):
    started = time.monotonic()
    png = (busi_dir / BUSI_SMALL).read_bytes()
    home = tmp_path / "home"
    store = Store(home)
    user, token = store.add_user("clinician")
    store.close()
    # What a crash between rename and commit leaves, planted: the first server repairs it and says so.
    planted = home / "images" / user.id / f"{uuid.uuid4().hex}.png"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(png)
    port, log = free_port(), tmp_path / "servers.log"
    env = {**os.environ, "BRANET_HOME": str(home), "BRANET_CREATE_DEV_USER": "false",
           "BRANET_EMBED_ON_UPLOAD": "false", "BRANET_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    loader = subprocess.Popen([sys.executable, "-c", LOADER, str(port), str(log)], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(26)
    client = Client(url, token, png, seed=9)
    pid = None
    try:
        assert loader.stdout.readline().strip() == "loaded"
        deadline = started + DEADLINE_S

        def spawn() -> int:
            loader.stdin.write("spawn\n")
            loader.stdin.flush()
            child = int(loader.stdout.readline())
            wait_ready(url, child, deadline)
            return child

        pid = spawn()
        assert not planted.exists() and f"without a row ['{planted.stem}']" in log.read_text()
        for kill in range(KILLS + 1):
            client.round = kill
            if kill:
                check(home, client, rng)
            if kill == KILLS:
                break
            stop = threading.Event()
            worker = threading.Thread(target=client.run, args=(stop,), daemon=True)
            worker.start()
            # Mostly short rounds; every fourth is long enough for an analysis to finish (a new server's
            # first one takes ~3 s on this CPU, later ones ~0.2 s), so there are analyses to delete.
            time.sleep(rng.uniform(3.5, 5.0) if kill % 4 == 1 else rng.uniform(0.2, 1.6))
            os.kill(pid, signal.SIGKILL)
            wait_dead(pid)
            stop.set()
            worker.join(timeout=60)
            assert not worker.is_alive()
            pid = spawn()
            assert time.monotonic() < deadline, f"only {kill + 1} kills before the deadline"
        text = log.read_text()
        assert "whose file is missing" not in text, "a kill left a row without its file"
        repaired = text.count("without a row") - 1  # the planted one
        print(f"\n{KILLS} kills in {time.monotonic() - started:.0f} s; ops {client.ops}; "
              f"{len(client.images)} images and {len(client.analyses)} analyses alive, "
              f"{len(client.gone_analyses)} deleted; start-up repairs of files without rows: {repaired}")
        assert client.ops["analysis"] >= 3 and len(client.gone_analyses) >= 3, client.ops
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        loader.kill()
        loader.wait(timeout=30)


def check(home: Path, client: Client, rng: random.Random) -> None:
    assert not client.server_errors, client.server_errors
    images, analysis_ids, analysis_images, files = store_state(home)
    # rows and files agree, both ways
    assert {p for p in files if p.suffix == ".part"} == set()
    assert set(images.values()) == files, (set(images.values()) ^ files)
    assert set(analysis_images.values()) <= set(images), "an analysis without its image"
    # everything the client was told exists does, on disk and through the API
    missing = set(client.images) - set(images)
    assert not missing, f"uploads answered 201 are gone: {missing}"
    lost = set(client.analyses) - analysis_ids
    assert not lost, f"analyses answered 201 are gone: {lost}"
    # nothing deleted comes back
    assert not (client.gone_analyses & analysis_ids) and not (client.gone_images & set(images))
    http = client.http
    recent = [i for i, r in client.images.items() if r >= client.round - 1]
    older = [i for i in client.images if i not in recent]
    for image_id in recent + rng.sample(older, min(10, len(older))):
        res = http.get(f"/v1/images/{image_id}/image.png")
        assert res.status_code == 200 and res.content.startswith(b"\x89PNG"), (image_id, res.status_code)
    for analysis_id, (image_id, _) in client.analyses.items():
        res = http.get(f"/v1/analyses/{analysis_id}")
        assert res.status_code == 200 and res.json()["image_id"] == image_id, (analysis_id, res.status_code)
    for analysis_id in rng.sample(sorted(client.gone_analyses), min(5, len(client.gone_analyses))):
        assert http.get(f"/v1/analyses/{analysis_id}").status_code == 404
    for image_id in rng.sample(sorted(client.gone_images), min(5, len(client.gone_images))):
        assert http.get(f"/v1/images/{image_id}/image.png").status_code == 404
    assert http.get("/v1/analyses", params={"limit": 100}).status_code == 200
