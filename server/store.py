"""SQLite (WAL) users, tokens, images and analyses, and the image files under BRANET_HOME.

`Store` is the embedded default behind two interfaces, `UserStore` (for auth) and `HistoryStore`;
the Firebase issue provides other implementations of the same protocols.

Crash-safe storage (the invariant: a committed image row always has its file, and a file on disk always
has its row once the store has been opened):
- add: the bytes go to `<id>.part` in the user's folder, are flushed and fsync'd, renamed to `<id>.png`
  and the folder fsync'd, and only then is the row committed (SQLite WAL, synchronous=FULL); if the
  commit fails the file is removed. A crash before the commit leaves a file without a row.
- delete: the row (and its analyses' rows) is deleted and committed, then the file unlinked. A crash in
  between leaves a file without a row.
- open: `repair()` checks both ways. Files without rows (and `.part` leftovers) are deleted. Rows whose
  file is missing (only something outside BraNet, or a lost disk, can do that) are removed together with
  their analyses, so the API answers 404 for them, never 500. What it repaired is logged (count and
  ids, logger `branet.store`, WARNING: stderr by default). Only the first process to open a home repairs
  it (an exclusive lock on `branet.lock`): a `branet users ...` run beside a running server never
  touches files the server is writing.
- disk full (ENOSPC, EDQUOT, EFBIG, SQLITE_FULL) raises `StorageFull` (the API's 507
  `insufficient_storage`), a read-only or unwritable disk (EROFS, EACCES, EPERM, SQLITE_READONLY)
  `StorageUnavailable` (503 `storage_unavailable`; also
  SQLite's write and fsync I/O errors); nothing partial is left, reads keep working, and
  writes work again as soon as there is space.

Images and analyses may carry the client's `Idempotency-Key` (`request_key`, unique per user and table):
a second insert with a key the user already used raises `DuplicateRequest` with the row that has it.
"""
from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, is_admin INTEGER NOT NULL,
                                  created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id),
                                   created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id),
                                   sha256 TEXT NOT NULL, modality TEXT NOT NULL, width INTEGER NOT NULL,
                                   height INTEGER NOT NULL, file TEXT NOT NULL, created TEXT NOT NULL,
                                   request_key TEXT);
CREATE TABLE IF NOT EXISTS analyses (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
                                     user_id TEXT NOT NULL REFERENCES users(id), image_id TEXT NOT NULL,
                                     created TEXT NOT NULL, summary TEXT NOT NULL, result TEXT NOT NULL,
                                     request_key TEXT);
CREATE INDEX IF NOT EXISTS analyses_by_user ON analyses (user_id, seq);
CREATE TABLE IF NOT EXISTS passwords (user_id TEXT PRIMARY KEY REFERENCES users(id), hash TEXT NOT NULL,
                                      updated TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (hash TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id),
                                     created TEXT NOT NULL, expires TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires);
"""
# Columns added after the first release: (table, column, declaration), added to older databases on open.
ADDED_COLUMNS = [("images", "request_key", "TEXT"), ("analyses", "request_key", "TEXT")]
# Created once the added columns exist (NULL keys never collide: SQLite treats NULLs as distinct).
INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS images_by_request_key ON images (user_id, request_key);
CREATE UNIQUE INDEX IF NOT EXISTS analyses_by_request_key ON analyses (user_id, request_key);
"""


log = logging.getLogger("branet.store")
IMAGE_FILE = re.compile(r"^([0-9a-f]{32})\.(png|part)$")
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
SQLITE_READONLY, SQLITE_FULL = 8, 13
SQLITE_WRITE_ERRORS = {778, 1034}  # SQLITE_IOERR_WRITE, SQLITE_IOERR_FSYNC (EFBIG, EIO: SQLite does not say which)


class StorageError(Exception):
    """The store could not write; nothing of the request was kept. `status`/`code` are the API's answer."""
    status, code = 503, "storage_unavailable"


class StorageFull(StorageError):
    status, code = 507, "insufficient_storage"

    def __init__(self):
        super().__init__("the server's disk is full: nothing was stored; try again later")


class StorageUnavailable(StorageError):
    def __init__(self):
        super().__init__("the server cannot write to its storage (read-only or failing disk): nothing was stored")


def storage_error(err: BaseException) -> StorageError | None:
    """The StorageError an OSError or sqlite3 error means, or None for any other error."""
    if isinstance(err, OSError):
        if err.errno in FULL_ERRNOS:
            return StorageFull()
        if err.errno in READ_ONLY_ERRNOS:
            return StorageUnavailable()
    elif isinstance(err, sqlite3.Error):
        code = getattr(err, "sqlite_errorcode", 0) or 0
        if code & 0xFF == SQLITE_FULL:
            return StorageFull()
        if code & 0xFF == SQLITE_READONLY or code in SQLITE_WRITE_ERRORS:
            return StorageUnavailable()
    return None


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(final: Path, data: bytes) -> None:
    """`data` at `final`, all or nothing: written to `<final>.part`, fsync'd, renamed, the folder fsync'd.
    On any error neither the temporary file nor `final` is left."""
    part = final.with_suffix(".part")
    renamed = False
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, final)
        renamed = True
        fsync_dir(final.parent)
    except BaseException:
        part.unlink(missing_ok=True)
        if renamed:
            final.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class User:
    id: str
    name: str
    is_admin: bool = False


@dataclass(frozen=True)
class Session:
    user: User
    expires_at: str  # ISO-8601 UTC, as `now()` writes it


@dataclass(frozen=True)
class ImageRecord:
    id: str
    user_id: str
    sha256: str
    modality: str
    width: int
    height: int
    file: PurePath  # where its bytes are: a file under BRANET_HOME, or (BRANET_BYTES_STORE=cloud-storage) an object
    created: str


class DuplicateRequest(Exception):
    """The user already used this request key on this table; `existing` is what the first request stored
    (an ImageRecord for images, the result dict for analyses)."""

    def __init__(self, existing: Any):
        super().__init__("request key already used")
        self.existing = existing


class UserStore(Protocol):
    def user_for_token(self, token: str) -> User | None: ...
    def password_of(self, name: str) -> tuple[User, str | None] | None: ...
    def set_password(self, name: str, password_hash: str) -> bool: ...
    def rehash_password(self, user: User, password_hash: str) -> None: ...
    def add_session(self, user: User, lifetime: dt.timedelta) -> tuple[str, str]: ...
    def session_for_token(self, token: str) -> Session | None: ...
    def end_session(self, token: str) -> bool: ...


class HistoryStore(Protocol):
    def add_image(self, user: User, sha256: str, modality: str, width: int, height: int, png: bytes,
                  request_key: str | None = None) -> ImageRecord: ...
    def get_image(self, user: User, image_id: str) -> ImageRecord | None: ...
    def image_for_key(self, user: User, request_key: str) -> ImageRecord | None: ...
    def image_png(self, record: ImageRecord) -> bytes | None: ...
    def delete_image(self, user: User, image_id: str) -> None: ...
    def add_analysis(self, user: User, image_id: str, summary: dict, result: dict,
                     request_key: str | None = None) -> str: ...
    def analysis_for_key(self, user: User, request_key: str) -> dict | None: ...
    def list_analyses(self, user: User, limit: int, before: int | None) -> tuple[list[dict], int | None]: ...
    def get_analysis(self, user: User, analysis_id: str) -> dict | None: ...
    def delete_analysis(self, user: User, analysis_id: str) -> bool: ...


def now(at: dt.datetime | None = None) -> str:
    return (at or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="milliseconds")


def hash_token(token: str) -> str:
    # Tokens are 256-bit random: a plain hash is enough to make a leaked database useless.
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    def __init__(self, home: Path):
        self.home = Path(home)
        self._lock_fd: int | None = None
        self.images_dir = self.home / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.home / "branet.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns, power loss included
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._migrate()
        # Held (shared) while open; the first opener takes it exclusively for the repair, so a second process
        # (a `branet users` command beside a running server) never deletes a file the server is writing.
        self._lock_fd = os.open(self.home / "branet.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.debug("branet.store: %s is open elsewhere: no start-up repair here", self.home)
        else:
            self.repaired = self.repair()
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    repaired: dict[str, list[str]] | None = None  # what the start-up repair did (None: another process had it open)

    def close(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def _migrate(self) -> None:
        with self._tx() as db:
            for table, column, declaration in ADDED_COLUMNS:
                if column not in {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self._db.executescript(INDEXES)

    def repair(self) -> dict[str, list[str]]:
        """The start-up check both ways (call it only while no other process writes this home): image files
        without a row and `.part` leftovers are deleted; image rows whose file is missing are removed with
        their analyses. Logged (WARNING, count and ids) when anything was repaired. Returns the ids:
        {"files_without_rows", "partial_files", "rows_without_files", "analyses_removed"}."""
        with self._lock:
            rows = {(r["user_id"], r["id"]): self.home / r["file"]
                    for r in self._db.execute("SELECT id, user_id, file FROM images")}
        known = set(rows.values())
        files, partial = [], []
        for folder in sorted(p for p in self.images_dir.iterdir() if p.is_dir()):
            for path in sorted(folder.iterdir()):
                match = IMAGE_FILE.match(path.name)
                if match is None or not path.is_file():
                    continue  # not a name BraNet writes: left alone
                if match[2] == "part":
                    partial.append(path)
                elif path not in known:
                    files.append(path)
        for path in files + partial:
            path.unlink(missing_ok=True)
        if files or partial:
            for folder in {p.parent for p in files + partial}:
                fsync_dir(folder)
        missing = [image_id for (_, image_id), path in rows.items() if not path.is_file()]
        analyses: list[str] = []
        if missing:
            with self._tx() as db:
                for image_id in missing:
                    analyses += [r["id"] for r in db.execute("SELECT id FROM analyses WHERE image_id = ?", (image_id,))]
                    db.execute("DELETE FROM analyses WHERE image_id = ?", (image_id,))
                    db.execute("DELETE FROM images WHERE id = ?", (image_id,))
        report = {"files_without_rows": [p.stem for p in files], "partial_files": [p.stem for p in partial],
                  "rows_without_files": missing, "analyses_removed": analyses}
        if files or partial:
            log.warning("branet.store: start-up repair: deleted %d image file(s) without a row %s and %d partial "
                        "write(s) %s (a crash between writing and committing, or committing and unlinking)",
                        len(files), report["files_without_rows"], len(partial), report["partial_files"])
        if missing:
            log.warning("branet.store: start-up repair: removed %d image row(s) whose file is missing %s and their "
                        "%d analysis(es) %s", len(missing), missing, len(analyses), analyses)
        return report

    def _tx(self):
        store = self

        class _Tx:
            def __enter__(self):
                store._lock.acquire()
                try:
                    store._db.execute("BEGIN IMMEDIATE")
                except BaseException as err:
                    store._lock.release()
                    raise storage_error(err) or err
                return store._db

            def __exit__(self, exc_type, exc, _tb):
                try:
                    try:
                        store._db.execute("ROLLBACK" if exc_type else "COMMIT")
                    except sqlite3.Error as err:
                        if store._db.in_transaction:
                            store._db.execute("ROLLBACK")
                        if exc_type is None:
                            raise storage_error(err) or err
                finally:
                    store._lock.release()
                mapped = storage_error(exc) if exc is not None else None
                if mapped is not None:
                    raise mapped from exc
                return False
        return _Tx()

    # users and tokens
    def add_user(self, name: str, admin: bool = False, password_hash: str | None = None) -> tuple[User, str]:
        """Create a user and return it with its API token; the token itself is never stored.
        Without `password_hash` the user can only use the token (no sign-in)."""
        user = User(uuid.uuid4().hex, name, admin)
        token = "bn_" + secrets.token_urlsafe(32)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"user {name!r} exists already")
            db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", (user.id, name, int(admin), now()))
            db.execute("INSERT INTO tokens VALUES (?, ?, ?)", (hash_token(token), user.id, now()))
            if password_hash is not None:
                db.execute("INSERT INTO passwords VALUES (?, ?, ?)", (user.id, password_hash, now()))
        return user, token

    def user_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0]

    def user_for_token(self, token: str) -> User | None:
        with self._lock:
            row = self._db.execute("SELECT u.id, u.name, u.is_admin FROM tokens t JOIN users u ON u.id = t.user_id "
                                   "WHERE t.hash = ?", (hash_token(token),)).fetchone()
        return User(row["id"], row["name"], bool(row["is_admin"])) if row else None

    def list_users(self) -> list[dict[str, Any]]:
        """Every user with its role, creation time, whether it has a password, and how many API tokens and
        unexpired sign-in sessions it holds."""
        with self._lock:
            rows = self._db.execute(
                "SELECT u.name, u.is_admin, u.created, "
                "EXISTS (SELECT 1 FROM passwords p WHERE p.user_id = u.id) AS has_password, "
                "(SELECT COUNT(*) FROM tokens t WHERE t.user_id = u.id) AS tokens, "
                "(SELECT COUNT(*) FROM sessions s WHERE s.user_id = u.id AND s.expires > ?) AS sessions "
                "FROM users u ORDER BY u.name", (now(),)).fetchall()
        return [{"name": r["name"], "role": "admin" if r["is_admin"] else "clinician", "created": r["created"],
                 "has_password": bool(r["has_password"]), "tokens": r["tokens"], "sessions": r["sessions"]}
                for r in rows]

    def revoke(self, name: str, new_token: bool = False) -> tuple[int, int, str | None] | None:
        """Delete every API token and session of `name` in one transaction (they stop working at once);
        with `new_token`, one new API token is issued in the same transaction. Returns (tokens revoked,
        sessions revoked, the new token or None), or None when there is no such user."""
        token = "bn_" + secrets.token_urlsafe(32) if new_token else None
        with self._tx() as db:
            row = db.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            tokens = db.execute("DELETE FROM tokens WHERE user_id = ?", (row["id"],)).rowcount
            sessions = db.execute("DELETE FROM sessions WHERE user_id = ?", (row["id"],)).rowcount
            if token is not None:
                db.execute("INSERT INTO tokens VALUES (?, ?, ?)", (hash_token(token), row["id"], now()))
        return tokens, sessions, token

    # passwords and sign-in sessions
    def password_of(self, name: str) -> tuple[User, str | None] | None:
        """The user called `name` and its password hash (None: token-only user); None if no such user."""
        with self._lock:
            row = self._db.execute("SELECT u.id, u.name, u.is_admin, p.hash FROM users u "
                                   "LEFT JOIN passwords p ON p.user_id = u.id WHERE u.name = ?", (name,)).fetchone()
        return (User(row["id"], row["name"], bool(row["is_admin"])), row["hash"]) if row else None

    def set_password(self, name: str, password_hash: str) -> bool:
        """Set (or replace) the password and end the user's sessions; False if there is no such user."""
        with self._tx() as db:
            row = db.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            db.execute("INSERT INTO passwords VALUES (?, ?, ?) ON CONFLICT (user_id) DO UPDATE "
                       "SET hash = excluded.hash, updated = excluded.updated", (row["id"], password_hash, now()))
            db.execute("DELETE FROM sessions WHERE user_id = ?", (row["id"],))
        return True

    def rehash_password(self, user: User, password_hash: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE passwords SET hash = ?, updated = ? WHERE user_id = ?", (password_hash, now(), user.id))

    def add_session(self, user: User, lifetime: dt.timedelta) -> tuple[str, str]:
        """A new session token (stored hashed) and its expiry; expired sessions of anyone are removed."""
        token = "bns_" + secrets.token_urlsafe(32)
        start = dt.datetime.now(dt.timezone.utc)
        expires = now(start + lifetime)
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now(start),))
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (hash_token(token), user.id, now(start), expires))
        return token, expires

    def session_for_token(self, token: str) -> Session | None:
        """The session of a token, expired or not (the caller says which and ends it)."""
        with self._lock:
            row = self._db.execute("SELECT u.id, u.name, u.is_admin, s.expires FROM sessions s "
                                   "JOIN users u ON u.id = s.user_id WHERE s.hash = ?", (hash_token(token),)).fetchone()
        return Session(User(row["id"], row["name"], bool(row["is_admin"])), row["expires"]) if row else None

    def end_session(self, token: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM sessions WHERE hash = ?", (hash_token(token),)).rowcount > 0

    # images
    def add_image(self, user: User, sha256: str, modality: str, width: int, height: int, png: bytes,
                  request_key: str | None = None) -> ImageRecord:
        """Store a new image; DuplicateRequest (nothing written) when the user already used `request_key` here."""
        image_id = uuid.uuid4().hex
        folder = self.images_dir / user.id
        final = folder / f"{image_id}.png"
        try:
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                fsync_dir(self.images_dir)
            write_durably(final, png)  # on disk under its final name before the row exists
        except OSError as err:
            raise storage_error(err) or err
        record = ImageRecord(image_id, user.id, sha256, modality, width, height, final, now())
        try:
            with self._tx() as db:
                existing = self._image_for_key(db, user, request_key) if request_key is not None else None
                if existing is None:
                    db.execute("INSERT INTO images (id, user_id, sha256, modality, width, height, file, created, "
                               "request_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (image_id, user.id, sha256, modality, width, height,
                                str(final.relative_to(self.home)), record.created, request_key))
            if existing is not None:
                raise DuplicateRequest(existing)
        except BaseException:
            final.unlink(missing_ok=True)  # no row: no file (a crash right here is repaired at the next start)
            raise
        return record

    def _record(self, row: sqlite3.Row) -> ImageRecord:
        return ImageRecord(row["id"], row["user_id"], row["sha256"], row["modality"], row["width"], row["height"],
                           self.home / row["file"], row["created"])

    def _image_for_key(self, db: sqlite3.Connection, user: User, request_key: str) -> ImageRecord | None:
        row = db.execute("SELECT * FROM images WHERE user_id = ? AND request_key = ?",
                         (user.id, request_key)).fetchone()
        return self._record(row) if row else None

    def image_for_key(self, user: User, request_key: str) -> ImageRecord | None:
        """The image this user stored with this request key (Idempotency-Key), if any."""
        with self._lock:
            return self._image_for_key(self._db, user, request_key)

    def get_image(self, user: User, image_id: str) -> ImageRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM images WHERE id = ? AND user_id = ?", (image_id, user.id)).fetchone()
        return self._record(row) if row else None

    def image_png(self, record: ImageRecord) -> bytes | None:
        """The stored image's bytes; None when its file is gone."""
        try:
            return Path(record.file).read_bytes()
        except FileNotFoundError:
            return None

    def delete_image(self, user: User, image_id: str) -> None:
        record = self.get_image(user, image_id)
        if record is None:
            return
        with self._tx() as db:
            db.execute("DELETE FROM images WHERE id = ? AND user_id = ?", (image_id, user.id))
        self._unlink_deleted(record.file)

    @staticmethod
    def _unlink_deleted(path: Path) -> None:
        """Remove the file of a row already deleted and committed; a file that cannot go now (read-only disk)
        or a crash before this line is a file without a row, removed by the next start-up repair."""
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            log.warning("branet.store: could not remove %s (%s): the next start-up repair will", path.name, err)

    # analyses
    def add_analysis(self, user: User, image_id: str, summary: dict, result: dict,
                     request_key: str | None = None) -> str:
        """Store a result; DuplicateRequest (nothing written) when the user already used `request_key` here."""
        with self._tx() as db:
            existing = self._analysis_for_key(db, user, request_key) if request_key is not None else None
            if existing is None:
                db.execute("INSERT INTO analyses (id, user_id, image_id, created, summary, result, request_key) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", (result["id"], user.id, image_id, result["created"],
                                                            json.dumps(summary), json.dumps(result), request_key))
        if existing is not None:
            raise DuplicateRequest(existing)
        return result["id"]

    @staticmethod
    def _analysis_for_key(db: sqlite3.Connection, user: User, request_key: str) -> dict[str, Any] | None:
        row = db.execute("SELECT result FROM analyses WHERE user_id = ? AND request_key = ?",
                         (user.id, request_key)).fetchone()
        return json.loads(row["result"]) if row else None

    def analysis_for_key(self, user: User, request_key: str) -> dict[str, Any] | None:
        """The result this user stored with this request key (Idempotency-Key), if any."""
        with self._lock:
            return self._analysis_for_key(self._db, user, request_key)

    def list_analyses(self, user: User, limit: int, before: int | None = None) -> tuple[list[dict], int | None]:
        """Newest first; returns the page and the cursor of the next one (None at the end)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, summary FROM analyses WHERE user_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (user.id, before if before is not None else 2**62, limit + 1)).fetchall()
        page = [json.loads(r["summary"]) for r in rows[:limit]]
        return page, (rows[limit - 1]["seq"] if len(rows) > limit else None)

    def get_analysis(self, user: User, analysis_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT result FROM analyses WHERE id = ? AND user_id = ?",
                                   (analysis_id, user.id)).fetchone()
        return json.loads(row["result"]) if row else None

    def delete_analysis(self, user: User, analysis_id: str) -> bool:
        """Delete the analysis, and its image when nothing else of the user refers to it."""
        with self._tx() as db:
            row = db.execute("SELECT image_id FROM analyses WHERE id = ? AND user_id = ?",
                             (analysis_id, user.id)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM analyses WHERE id = ?", (analysis_id,))
            image_id = row["image_id"]
            still_used = db.execute("SELECT 1 FROM analyses WHERE image_id = ? LIMIT 1", (image_id,)).fetchone()
            image = None if still_used else db.execute("SELECT file FROM images WHERE id = ?", (image_id,)).fetchone()
            if image is not None:
                db.execute("DELETE FROM images WHERE id = ?", (image_id,))
        if image is not None:
            self._unlink_deleted(self.home / image["file"])
        return True
