"""SQLite (WAL) users, tokens, images and analyses, and the image files under BRANET_HOME.

`Store` is the embedded default behind two interfaces, `UserStore` (for auth) and `HistoryStore`;
the Firebase issue provides other implementations of the same protocols. Writes are all-or-nothing:
an image file is written under a temporary name and renamed only once its row is committed.

Images and analyses may carry the client's `Idempotency-Key` (`request_key`, unique per user and table):
a second insert with a key the user already used raises `DuplicateRequest` with the row that has it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
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
    file: Path
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
        self.images_dir = self.home / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.home / "branet.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._migrate()
        self._remove_orphans()

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        with self._tx() as db:
            for table, column, declaration in ADDED_COLUMNS:
                if column not in {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self._db.executescript(INDEXES)

    def _remove_orphans(self) -> None:
        # A crash between writing a file and committing its row leaves a `.part` file: never shown, removed here.
        for part in self.images_dir.glob("*/*.part"):
            part.unlink(missing_ok=True)

    def _tx(self):
        store = self

        class _Tx:
            def __enter__(self):
                store._lock.acquire()
                store._db.execute("BEGIN IMMEDIATE")
                return store._db

            def __exit__(self, exc_type, *_):
                try:
                    store._db.execute("ROLLBACK" if exc_type else "COMMIT")
                finally:
                    store._lock.release()
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
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{image_id}.png"
        part = final.with_suffix(".part")
        part.write_bytes(png)
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
            os.replace(part, final)
        except BaseException:
            part.unlink(missing_ok=True)
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

    def delete_image(self, user: User, image_id: str) -> None:
        record = self.get_image(user, image_id)
        if record is None:
            return
        with self._tx() as db:
            db.execute("DELETE FROM images WHERE id = ? AND user_id = ?", (image_id, user.id))
        record.file.unlink(missing_ok=True)

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
            (self.home / image["file"]).unlink(missing_ok=True)
        return True
