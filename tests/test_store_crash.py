"""Crash-safe storage, on a real SQLite database and real files (server/store.py).

- The start-up repair both ways: the states a crash can leave (a file without its row, a `.part` of an
  interrupted write) and one only an outside hand can (a row whose file is gone) are made by hand in a
  real store folder; reopening repairs each, logs count and ids, and leaves everything else as it was.
- A second process opening the same home (a `branet users` command beside a running server) never repairs.
- A full disk under a real `branet serve`: BRANET_HOME is a 4 MB tmpfs (as root) or the server's
  RLIMIT_FSIZE is lowered with prlimit; an upload then answers 507 `insufficient_storage` and leaves no
  file, reads of what is stored answer 200, and once space is back an upload is 201 again.
- A read-only disk under a real `branet serve`: the images' filesystem (a tmpfs at BRANET_HOME/images, as
  root) is remounted read-only while the server runs; uploads (into an existing user folder, into a new
  user's, and within an analysis) answer 503 `storage_unavailable` and leave no file and no row, reads
  answer 200, a delete answers 204 and leaves its file to the next start-up repair, and once the disk is
  remounted read-write an upload is 201 again. The database cannot be made read-only under the server this
  way: the kernel refuses to remount a filesystem read-only while a file on it is open for writing (EBUSY),
  and the server holds its SQLite database (WAL) open; the SQLite read-only codes are checked by name above.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import resource
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from server.store import Store, StorageFull, StorageUnavailable, storage_error

BUSI_SMALL = "benign/benign (51).png"  # the smallest real BUSI image (60 KB)


def image_files(home: Path) -> set[Path]:
    return set((home / "images").glob("*/*"))


def rows(home: Path) -> dict[str, set[str]]:
    db = sqlite3.connect(f"file:{home / 'branet.sqlite3'}?mode=ro", uri=True)
    try:
        return {"images": {r[0] for r in db.execute("SELECT id FROM images")},
                "analyses": {r[0] for r in db.execute("SELECT id FROM analyses")}}
    finally:
        db.close()


def test_start_up_repair_both_ways(tmp_path, caplog, busi_dir):
    png = (busi_dir / BUSI_SMALL).read_bytes()
    store = Store(tmp_path)
    assert store.repaired == {"files_without_rows": [], "partial_files": [], "rows_without_files": [],
                              "analyses_removed": []}
    user, _ = store.add_user("alice")
    kept, lost, shared = (store.add_image(user, "s", "us", 4, 4, png) for _ in range(3))
    for analysis_id, image in [("a-kept", kept), ("a-lost-1", lost), ("a-lost-2", lost), ("a-shared", shared)]:
        store.add_analysis(user, image.id, {"id": analysis_id}, {"id": analysis_id, "created": "t"})
    store.close()
    folder = tmp_path / "images" / user.id
    # A crash after the rename, before the row's commit (or after a delete's commit, before the unlink):
    orphan = folder / f"{uuid.uuid4().hex}.png"
    orphan.write_bytes(png)
    # A crash in the middle of writing:
    partial = folder / f"{uuid.uuid4().hex}.part"
    partial.write_bytes(png[:1000])
    # A row whose file is gone (nothing BraNet does leaves this; a hand or a lost disk can):
    lost.file.unlink()
    stranger = folder / "notes.txt"  # not a name BraNet writes: left alone
    stranger.write_text("x")

    with caplog.at_level(logging.WARNING, logger="branet.store"):
        store = Store(tmp_path)
    assert store.repaired == {"files_without_rows": [orphan.stem], "partial_files": [partial.stem],
                              "rows_without_files": [lost.id], "analyses_removed": ["a-lost-1", "a-lost-2"]}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"deleted 1 image file(s) without a row ['{orphan.stem}'] and 1 partial write(s) ['{partial.stem}']" in logged
    assert f"removed 1 image row(s) whose file is missing ['{lost.id}'] and their 2 analysis(es)" in logged
    assert image_files(tmp_path) == {kept.file, shared.file, stranger}
    assert store.get_image(user, lost.id) is None and store.get_analysis(user, "a-lost-1") is None
    assert store.get_image(user, kept.id).file.read_bytes() == png
    assert {a["id"] for a in store.list_analyses(user, 10)[0]} == {"a-kept", "a-shared"}
    store.close()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="branet.store"):
        store = Store(tmp_path)  # nothing left to repair: nothing logged
    assert not caplog.records and not any(store.repaired.values())
    store.close()


def test_a_second_opener_never_repairs(tmp_path):
    """While a store is open (the server), another opener of the same home (`branet users add`) must not
    delete a file the first is about to commit a row for."""
    first = Store(tmp_path)
    user, _ = first.add_user("alice")
    in_flight = tmp_path / "images" / user.id / f"{uuid.uuid4().hex}.png"
    in_flight.parent.mkdir(parents=True, exist_ok=True)
    in_flight.write_bytes(b"being committed")
    second = subprocess.run([sys.executable, "-c", "import sys; from server.store import Store; "
                             "s = Store(sys.argv[1]); print(s.repaired); s.close()", str(tmp_path)],
                            capture_output=True, text=True, check=True)
    assert second.stdout.strip() == "None" and in_flight.exists()
    first.close()
    assert Store(tmp_path).repaired["files_without_rows"] == [in_flight.stem] and not in_flight.exists()


def test_a_failed_commit_leaves_no_file(tmp_path):
    store = Store(tmp_path)
    user, _ = store.add_user("alice")
    store._db.execute("CREATE TRIGGER refuse BEFORE INSERT ON images BEGIN SELECT RAISE(ABORT, 'no'); END")
    with pytest.raises(sqlite3.IntegrityError):
        store.add_image(user, "s", "us", 4, 4, b"png")
    assert image_files(tmp_path) == set()
    store.close()


def test_storage_errors_are_named():
    assert isinstance(storage_error(OSError(errno.ENOSPC, "full")), StorageFull)
    assert isinstance(storage_error(OSError(errno.EFBIG, "too big")), StorageFull)
    assert isinstance(storage_error(OSError(errno.EROFS, "ro")), StorageUnavailable)
    assert storage_error(OSError(errno.ENOENT, "gone")) is None
    assert StorageFull.status == 507 and StorageFull.code == "insufficient_storage"


# --- a full disk under a real server --------------------------------------------------------------------

def can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


def start_server(home: Path, **env_extra: str) -> tuple[subprocess.Popen, str, str]:
    """A real `branet serve` on a free port with its own BRANET_HOME; returns (process, base URL, token)."""
    from server import launcher
    env = launcher.server_env(home, **env_extra)
    token = subprocess.run([launcher.BRANET, "users", "add", f"u{uuid.uuid4().hex[:6]}", "--no-password"], env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    port = launcher.free_port()
    log = open(home.parent / f"{home.name}.log", "w")  # noqa: SIM115 - the server's, for its life
    try:
        proc = launcher.start(port, env, log, timeout_s=120)
    except launcher.ServerDidNotStart as e:
        pytest.fail(str(e))
    return proc, f"http://127.0.0.1:{port}", token


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_a_full_disk_answers_507_keeps_reads_and_recovers(tmp_path, busi_dir, how):
    png = (busi_dir / BUSI_SMALL).read_bytes()
    home = tmp_path / "home"
    mounted = False
    if how == "tmpfs":
        if not can_mount_tmpfs(home):
            pytest.skip("mounting a tmpfs needs root (the rlimit case covers the same path)")
        mounted = True
    proc = None
    try:
        proc, url, token = start_server(home, BRANET_EMBED_ON_UPLOAD="false")
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)

        def upload():
            return client.post("/v1/images", files={"file": ("b.png", png, "image/png")}, data={"modality": "us"})
        image = upload()
        assert image.status_code == 201, image.text
        image_id = image.json()["image_id"]
        analysis = client.post("/v1/analyses", json={"image_id": image_id, "prompt": {"box": [60, 40, 200, 160]}})
        assert analysis.status_code == 201, analysis.text
        analysis_id = analysis.json()["id"]
        before_files, before_rows = image_files(home), rows(home)

        filler = home / "filler"
        if how == "tmpfs":  # fill the disk to the last byte
            with open(filler, "wb") as out:
                try:
                    while True:
                        out.write(b"\0" * 65536)
                        out.flush()
                except OSError as err:
                    assert err.errno == errno.ENOSPC
            with pytest.raises(OSError):  # really full
                (home / "probe").write_bytes(b"\0" * 4096)
        else:  # the server may write no byte past 16 KB of any file (EFBIG): the image cannot be written
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))

        for _ in range(2):
            full = upload()
            assert full.status_code == 507, full.text
            assert full.json()["error"] == {"code": "insufficient_storage",
                                            "message": "the server's disk is full: nothing was stored; try again later"}
            assert full.headers["retry-after"] == "60"
        assert image_files(home) == before_files and rows(home) == before_rows  # no partial file, no row
        # Reads keep working.
        assert client.get(f"/v1/analyses/{analysis_id}").status_code == 200
        assert client.get(f"/v1/images/{image_id}/image.png").status_code == 200
        assert client.get(f"/v1/analyses/{analysis_id}/overlay.png").status_code == 200
        listed = client.get("/v1/analyses")
        assert listed.status_code == 200 and [a["id"] for a in listed.json()["items"]] == [analysis_id]
        # A write with no file (the analysis row alone) is 201, 507 or 503, never a 500.
        again = client.post("/v1/analyses", json={"image_id": image_id, "prompt": {"box": [60, 40, 200, 160]}})
        assert again.status_code in (201, 503, 507), again.text
        assert image_files(home) == before_files

        # Space comes back: uploads work again, with no restart.
        if how == "tmpfs":
            filler.unlink()
        else:
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        back = upload()
        assert back.status_code == 201, back.text
        assert client.get(f"/v1/images/{back.json()['image_id']}/image.png").status_code == 200
        assert len(image_files(home)) == len(before_files) + 1
        assert not list(home.glob("images/*/*.part"))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if mounted:
            subprocess.run(["umount", str(home)], check=False)


# --- a read-only disk under a real server ---------------------------------------------------------------

def remount(where: Path, mode: str) -> None:
    done = subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_read_only_disk_answers_503_keeps_reads_and_recovers(tmp_path, busi_dir):
    png = (busi_dir / BUSI_SMALL).read_bytes()
    home = tmp_path / "home"
    images = home / "images"
    if not can_mount_tmpfs(images):
        pytest.skip("mounting a tmpfs needs root and mount(8): the read-only disk is a tmpfs remounted read-only")
    proc = None
    read_only = False
    try:
        # A tmpfs of its own for the images (the database stays on the disk below it; see the module's notes).
        proc, url, token = start_server(home, BRANET_EMBED_ON_UPLOAD="false")
        headers = {"Authorization": f"Bearer {token}"}
        client = httpx.Client(base_url=url, headers=headers, timeout=120)
        box = {"box": [60, 40, 200, 160]}

        def upload(who: httpx.Client = client):
            return who.post("/v1/images", files={"file": ("b.png", png, "image/png")}, data={"modality": "us"})
        image = upload()
        assert image.status_code == 201, image.text
        image_id = image.json()["image_id"]
        kept, dropped = (client.post("/v1/analyses", json={"image_id": image_id, "prompt": box}) for _ in range(2))
        assert kept.status_code == dropped.status_code == 201, (kept.text, dropped.text)
        other = client.post("/v1/images", files={"file": ("c.png", png, "image/png")}, data={"modality": "us"})
        assert other.status_code == 201
        lone = client.post("/v1/analyses", json={"image_id": other.json()["image_id"], "prompt": box})
        assert lone.status_code == 201  # the only analysis of its image: deleting it deletes the image's file
        newcomer = subprocess.run([str(Path(sys.executable).with_name("branet")), "users", "add", "newcomer",
                                   "--no-password"], env={**os.environ, "BRANET_HOME": str(home)}, check=True,
                                  capture_output=True, text=True).stdout.strip()

        remount(images, "ro")
        read_only = True
        with pytest.raises(OSError) as refused:  # really read-only
            (images / "probe").write_bytes(b"x")
        assert refused.value.errno == errno.EROFS
        before_files, before_rows, folders = image_files(home), rows(home), set(images.iterdir())

        unavailable = {"code": "storage_unavailable",
                       "message": "the server cannot write to its storage (read-only or failing disk): nothing was stored"}
        fresh = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {newcomer}"}, timeout=120)
        answers = [upload(), upload(fresh),  # into an existing user folder; a new user's folder cannot be made
                   client.post("/v1/analyses", files={"file": ("b.png", png, "image/png")},
                               data={"modality": "us", "prompt": json.dumps(box)})]
        for res in answers:
            assert res.status_code == 503, res.text
            assert res.headers["content-type"] == "application/json" and res.json()["error"] == unavailable
            assert res.headers["retry-after"] == "60"
        assert image_files(home) == before_files and rows(home) == before_rows  # nothing partial, no row
        assert set(images.iterdir()) == folders

        # Reads keep working.
        assert client.get(f"/v1/analyses/{kept.json()['id']}").status_code == 200
        assert client.get(f"/v1/analyses/{kept.json()['id']}/overlay.png").status_code == 200
        stored = client.get(f"/v1/images/{image_id}/image.png")
        assert stored.status_code == 200 and stored.content.startswith(b"\x89PNG")
        listed = client.get("/v1/analyses")
        assert listed.status_code == 200 and len(listed.json()["items"]) == 3
        # A delete commits (the database is writable) and answers 204; a file that cannot go now stays for
        # the next start-up repair (a file without a row), logged.
        lone_file = [f for f in image_files(home) if f.stem == other.json()["image_id"]]
        assert len(lone_file) == 1
        assert client.delete(f"/v1/analyses/{lone.json()['id']}").status_code == 204
        assert client.get(f"/v1/analyses/{lone.json()['id']}").status_code == 404
        assert lone_file[0].exists() and lone_file[0] in image_files(home)
        assert client.delete(f"/v1/analyses/{dropped.json()['id']}").status_code == 204  # the image stays: in use

        # Read-write again: uploads work, with no restart.
        remount(images, "rw")
        read_only = False
        for who in (client, fresh):
            back = upload(who)
            assert back.status_code == 201, back.text
            assert who.get(f"/v1/images/{back.json()['image_id']}/image.png").status_code == 200
        assert not list(home.glob("images/*/*.part"))
    finally:
        if read_only:
            subprocess.run(["mount", "-o", "remount,rw", str(images)], check=False)
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        subprocess.run(["umount", str(images)], check=False)
    assert "could not remove" in (tmp_path / "home.log").read_text()
