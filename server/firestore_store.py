"""The history in Firestore (BRANET_STORE=firestore): a HistoryStore like server.store.Store.

Documents (everything the API returns but image bytes):
- `users/{uid}/images/{id}`: sha256, modality, width, height, created, request_key, file.
- `users/{uid}/analyses/{id}`: the summary the history lists (`summary`), `seq` (the cursor: microseconds,
  increasing per process), `created`, `image_id`, `request_key`, and the full result as JSON (`result`: Firestore
  arrays cannot nest, prompts and boxes do) without its pictures.
- `users/{uid}/request_keys/{images|analyses}:{key}`: the Idempotency-Key's claim, created in the same batch
  as what it names (a second create fails: the first request's answer is returned).

Bytes stay in the server's data folder (BRANET_HOME/firestore/{uid}/): the image as `{image id}.png`, an
analysis' pictures (mask, ROI, heat map: the result's `*_png` fields) as `{analysis id}.json`. The file protocol
of the SQLite store: a file is written to `.part`, fsync'd, renamed (folder fsync'd) before its document is
written, and unlinked only after its document is deleted. A write that surely did not reach Firestore removes its
files at once; one that timed out (it may still land) is undone by a background thread once Firestore answers:
its documents deleted, then its files (never a document without its file). A stop before that leaves files
that the next start's repair removes when their document does not exist (`.part` leftovers too).

Every call to Firestore is bounded by BRANET_FIRESTORE_TIMEOUT_S (transient errors are retried within it);
past it, or when Firestore is unreachable, `FirestoreUnavailable` (503 `storage_unavailable`): nothing of the
request was kept."""
from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from server.store import (DuplicateRequest, ImageRecord, StorageError, User, fsync_dir, now, storage_error,
                          write_durably)

log = logging.getLogger("branet.store")
FILE = re.compile(r"^([0-9a-f]{32})\.(png|json|part)$")
SAFE_UID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class FirestoreUnavailable(StorageError):
    status, code = 503, "storage_unavailable"

    def __init__(self, timeout_s: float, writing: bool):
        super().__init__(f"the history database (Firestore) did not answer within {timeout_s:g} s"
                         + (": nothing was stored" if writing else "") + "; try again shortly")


class _Deadline:
    """One operation's time left: each call gets it as its timeout and as its retry's deadline."""

    def __init__(self, store: "FirestoreStore", writing: bool):
        self.store, self.writing = store, writing
        self.end = time.monotonic() + store.timeout_s

    def kw(self) -> dict:
        left = self.end - time.monotonic()
        if left <= 0.05:
            raise FirestoreUnavailable(self.store.timeout_s, self.writing)
        return {"timeout": left, "retry": gretry.Retry(predicate=gretry.if_transient_error, initial=0.05,
                                                        maximum=0.5, multiplier=2, timeout=left)}


def _firestore_error(err: BaseException, store: "FirestoreStore", writing: bool) -> StorageError | None:
    if isinstance(err, (gexc.RetryError, gexc.DeadlineExceeded, gexc.ServiceUnavailable, gexc.InternalServerError,
                        gexc.Unknown, gexc.Aborted, gexc.ResourceExhausted, gexc.Cancelled, TimeoutError)):
        return FirestoreUnavailable(store.timeout_s, writing)
    return None


def _may_have_landed(err: BaseException) -> bool:
    """False when Firestore surely did not apply a write: it was never reached (every try UNAVAILABLE, as when
    nothing listens), or the time was up before the write was sent."""
    cause = err.__cause__ if isinstance(err, StorageError) else err
    if isinstance(cause, gexc.RetryError):
        cause = cause.cause
    if isinstance(err, FirestoreUnavailable) and cause is None:
        return False  # _Deadline.kw: no time left to send it
    return not isinstance(cause, gexc.ServiceUnavailable)


def _pictures(result: dict) -> tuple[dict, dict[str, str]]:
    """The result without its `*_png` strings (at any depth), and those strings by dotted path."""
    out, found = copy.deepcopy(result), {}

    def walk(node: dict, prefix: str) -> None:
        for key in list(node):
            value = node[key]
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif key.endswith("_png") and isinstance(value, str):
                found[prefix + key] = node.pop(key)
    walk(out, "")
    return out, found


def _with_pictures(result: dict, pictures: dict[str, str]) -> dict:
    for path, value in pictures.items():
        *parents, key = path.split(".")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value
    return result


class FirestoreStore:
    def __init__(self, client: firestore.Client, home: Path, timeout_s: float = 5.0, repair: bool = True):
        self.db, self.home, self.timeout_s = client, Path(home), timeout_s
        self.files_dir = self.home / "firestore"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._seq_lock = threading.Lock()
        self._undo_lock, self._undos, self._undo_thread = threading.Lock(), [], None
        self._closing = threading.Event()
        self._last_seq = 0
        self.repaired: dict[str, list[str]] | None = None
        # As server.store.Store: the first process to open this folder repairs it, others share it.
        self._lock_fd: int | None = os.open(self.home / "firestore.lock", os.O_RDWR | os.O_CREAT, 0o600)
        if repair:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                try:
                    self.repaired = self.repair()
                except StorageError as err:  # the server starts anyway: requests answer 503 until it is back
                    log.warning("branet.store: start-up repair skipped (%s); the next start repairs", err)
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def close(self) -> None:
        self._closing.set()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.db.close()

    # paths and helpers
    def _folder(self, uid: str) -> Path:
        return self.files_dir / (uid if SAFE_UID.match(uid) else hashlib.sha256(uid.encode()).hexdigest())

    def _ensure_folder(self, user: User) -> None:
        folder = self._folder(user.id)
        if folder.name != user.id and not (folder / ".uid").exists():  # a uid not safe as a name: hashed, noted
            self._write_file(folder / ".uid", user.id.encode())

    def _user(self, uid: str):
        return self.db.collection("users").document(uid)

    def _key_ref(self, uid: str, table: str, request_key: str):
        return self._user(uid).collection("request_keys").document(f"{table}:{request_key}")

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._last_seq = max(time.time_ns() // 1000, self._last_seq + 1)
            return self._last_seq

    def _call(self, writing: bool, fn):
        """Run `fn(deadline)` against Firestore; unreachable or too slow -> FirestoreUnavailable."""
        deadline = _Deadline(self, writing)
        try:
            return fn(deadline)
        except (StorageError, DuplicateRequest):
            raise
        except Exception as err:
            mapped = _firestore_error(err, self, writing)
            if mapped is None:
                raise
            log.warning("branet.store: Firestore: %s: %s", type(err).__name__, err)
            raise mapped from err

    def _write_file(self, path: Path, data: bytes) -> None:
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(path.parent.parent)
            write_durably(path, data)
        except OSError as err:
            raise storage_error(err) or err

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            log.warning("branet.store: could not remove %s (%s): the next start-up repair will", path.name, err)

    def _create(self, uid: str, items: list[tuple[str, str, dict, Path, bytes]], key_table: str,
                request_key: str | None) -> None:
        """Items (table, id, document, file, bytes), all or nothing: the files first (durably), then the documents
        and the request key's claim (on the last item, the one `key_table` names) in one batch. A taken key: the
        files go and DuplicateRequest carries the first request's item. Another failure: the files go at once if
        the write surely did not reach Firestore, else (a timeout: it may still land) _undo_later."""
        refs = [self._user(uid).collection(table).document(item_id) for table, item_id, *_ in items]
        claimed_id = items[-1][1]
        key_ref = self._key_ref(uid, key_table, request_key) if request_key is not None else None
        paths = [path for *_, path, _ in items]
        try:
            for *_, path, data in items:
                self._write_file(path, data)
        except BaseException:
            for path in paths:
                self._unlink(path)
            raise

        def write(deadline: _Deadline) -> None:
            batch = self.db.batch()
            if key_ref is not None:
                batch.create(key_ref, {"id": claimed_id})
            for ref, (_, _, doc, _, _) in zip(refs, items):
                batch.create(ref, doc)
            batch.commit(**deadline.kw())
        try:
            self._call(True, write)
        except (gexc.AlreadyExists, gexc.Conflict):  # the key is taken: nothing of this request was written
            for path in paths:
                self._unlink(path)
            if key_ref is None:
                raise
            raise DuplicateRequest(self.image_for_key(User(uid, uid), request_key) if key_table == "images"
                                   else self.analysis_for_key(User(uid, uid), request_key)) from None
        except BaseException as err:
            if not _may_have_landed(err):
                for path in paths:
                    self._unlink(path)
            else:  # Firestore is slow, not gone: undone in the background, not in this request's time
                self._undo_later(refs, key_ref, claimed_id, paths)
            raise

    def _undo_later(self, refs: list, key_ref, claimed_id: str, paths: list[Path]) -> None:
        """A write that timed out may still land: its documents are deleted (and only then its files) by a
        background thread that retries every second until Firestore answers. Until then the files stay (never
        a document without its file); a stop before it is done leaves them to the next start's repair."""
        with self._undo_lock:
            self._undos.append((refs, key_ref, claimed_id, paths))
            log.warning("branet.store: a write to Firestore timed out: %s will be undone once Firestore answers",
                        [p.name for p in paths])
            if self._undo_thread is None or not self._undo_thread.is_alive():
                self._undo_thread = threading.Thread(target=self._undo_loop, name="branet-firestore-undo", daemon=True)
                self._undo_thread.start()

    def _undo_loop(self) -> None:
        while not self._closing.is_set():
            with self._undo_lock:
                pending = list(self._undos)
                if not pending:
                    self._undo_thread = None
                    return
            for item in pending:
                refs, key_ref, claimed_id, paths = item

                def undo(deadline: _Deadline) -> None:
                    batch = self.db.batch()
                    for ref in refs:
                        batch.delete(ref)
                    if key_ref is not None:  # only our own claim (another request's stays)
                        claim = key_ref.get(**deadline.kw())
                        if claim.exists and claim.get("id") == claimed_id:
                            batch.delete(key_ref)
                    batch.commit(**deadline.kw())
                try:
                    self._call(True, undo)
                except Exception as err:  # noqa: BLE001 - retried
                    log.debug("branet.store: undo not done yet: %s", err)
                    continue
                for path in paths:
                    self._unlink(path)
                with self._undo_lock:
                    self._undos.remove(item)
                log.warning("branet.store: undid the timed-out write of %s", [p.name for p in paths])
            self._closing.wait(1.0)

    def repair(self) -> dict[str, list[str]]:
        """Files without their document (a crash between writing a file and its document, or deleting a document
        and its file) and `.part` leftovers are deleted. Call it only while no other process writes here."""
        candidates: list[tuple[Path, Any]] = []
        partial: list[Path] = []
        for folder in sorted(p for p in self.files_dir.iterdir() if p.is_dir()):
            uid_file = folder / ".uid"
            uid = uid_file.read_text() if uid_file.is_file() else folder.name
            for path in sorted(folder.iterdir()):
                match = FILE.match(path.name)
                if match is None or not path.is_file():
                    continue
                if match[2] == "part":
                    partial.append(path)
                else:
                    kind = "images" if match[2] == "png" else "analyses"
                    candidates.append((path, self._user(uid).collection(kind).document(match[1])))
        orphans: list[Path] = []
        for start in range(0, len(candidates), 100):
            chunk = candidates[start:start + 100]
            docs = self._call(False, lambda d, c=chunk: list(self.db.get_all([ref for _, ref in c], **d.kw())))
            existing = {doc.reference.path for doc in docs if doc.exists}
            orphans += [path for path, ref in chunk if ref.path not in existing]
        for path in orphans + partial:
            path.unlink(missing_ok=True)
        for folder in {p.parent for p in orphans + partial}:
            fsync_dir(folder)
        report = {"files_without_documents": [p.name for p in orphans], "partial_files": [p.name for p in partial]}
        if orphans or partial:
            log.warning("branet.store: start-up repair (Firestore): deleted %d file(s) without a document %s and %d "
                        "partial write(s) %s", len(orphans), report["files_without_documents"], len(partial),
                        report["partial_files"])
        return report

    # images
    def _record(self, uid: str, data: dict) -> ImageRecord:
        return ImageRecord(data["id"], uid, data["sha256"], data["modality"], data["width"], data["height"],
                           self.home / data["file"], data["created"])

    def add_image(self, user: User, sha256: str, modality: str, width: int, height: int, png: bytes,
                  request_key: str | None = None) -> ImageRecord:
        self._ensure_folder(user)
        record = self.new_image(user, sha256, modality, width, height)
        self._create(user.id, [self._image_item(record, png, request_key)], "images", request_key)
        return record

    def _image_item(self, record: ImageRecord, png: bytes, request_key: str | None) -> tuple:
        doc = {"id": record.id, "sha256": record.sha256, "modality": record.modality, "width": record.width,
               "height": record.height, "created": record.created, "request_key": request_key,
               "file": str(record.file.relative_to(self.home))}
        return "images", record.id, doc, record.file, png

    def get_image(self, user: User, image_id: str) -> ImageRecord | None:
        snap = self._call(False, lambda d: self._user(user.id).collection("images").document(image_id).get(**d.kw()))
        return self._record(user.id, snap.to_dict()) if snap.exists else None

    def image_for_key(self, user: User, request_key: str) -> ImageRecord | None:
        key = self._call(False, lambda d: self._key_ref(user.id, "images", request_key).get(**d.kw()))
        return self.get_image(user, key.get("id")) if key.exists else None

    def delete_image(self, user: User, image_id: str) -> None:
        ref = self._user(user.id).collection("images").document(image_id)

        def delete(deadline: _Deadline) -> ImageRecord | None:
            snap = ref.get(**deadline.kw())
            if not snap.exists:
                return None
            data = snap.to_dict()
            batch = self.db.batch()
            batch.delete(ref)
            if data.get("request_key") is not None:
                batch.delete(self._key_ref(user.id, "images", data["request_key"]))
            batch.commit(**deadline.kw())
            return self._record(user.id, data)
        record = self._call(True, delete)
        if record is not None:
            self._unlink(record.file)

    # analyses
    def _analysis_item(self, user: User, image_id: str, summary: dict, result: dict,
                       request_key: str | None) -> tuple:
        analysis_id = result["id"]
        stripped, pictures = _pictures(result)
        doc = {"id": analysis_id, "image_id": image_id, "created": result["created"], "seq": self._next_seq(),
               "summary": summary, "request_key": request_key, "result": json.dumps(stripped)}
        return "analyses", analysis_id, doc, self._folder(user.id) / f"{analysis_id}.json", json.dumps(pictures).encode()

    def add_analysis(self, user: User, image_id: str, summary: dict, result: dict,
                     request_key: str | None = None) -> str:
        self._create(user.id, [self._analysis_item(user, image_id, summary, result, request_key)], "analyses",
                     request_key)
        return result["id"]

    def new_image(self, user: User, sha256: str, modality: str, width: int, height: int) -> ImageRecord:
        """The record an image will have, not stored yet (add_analysis_with_image stores it)."""
        image_id = uuid.uuid4().hex
        return ImageRecord(image_id, user.id, sha256, modality, width, height,
                           self._folder(user.id) / f"{image_id}.png", now())

    def add_analysis_with_image(self, user: User, record: ImageRecord, png: bytes, summary: dict, result: dict,
                                request_key: str | None = None) -> str:
        """A one-call analysis and its new image (from new_image) in one atomic write, bytes included: both or
        neither. DuplicateRequest (nothing written) when the user already used `request_key` for an analysis."""
        self._ensure_folder(user)
        self._create(user.id, [self._image_item(record, png, None),
                               self._analysis_item(user, record.id, summary, result, request_key)],
                     "analyses", request_key)
        return result["id"]

    def _full(self, uid: str, data: dict) -> dict | None:
        result = json.loads(data["result"])
        try:
            pictures = json.loads((self._folder(uid) / f"{data['id']}.json").read_bytes())
        except FileNotFoundError:
            log.warning("branet.store: the pictures of analysis %s are missing from %s", data["id"], self.files_dir)
            return None
        return _with_pictures(result, pictures)

    def analysis_for_key(self, user: User, request_key: str) -> dict | None:
        key = self._call(False, lambda d: self._key_ref(user.id, "analyses", request_key).get(**d.kw()))
        return self.get_analysis(user, key.get("id")) if key.exists else None

    def list_analyses(self, user: User, limit: int, before: int | None = None) -> tuple[list[dict], int | None]:
        """Newest first; the page and the cursor (a `seq`) of the next one, None at the end."""
        def page(deadline: _Deadline):
            query = self._user(user.id).collection("analyses")
            if before is not None:
                query = query.where(filter=FieldFilter("seq", "<", before))
            query = query.order_by("seq", direction=firestore.Query.DESCENDING).limit(limit + 1)
            return [snap.to_dict() for snap in query.get(**deadline.kw())]
        docs = self._call(False, page)
        return [d["summary"] for d in docs[:limit]], (docs[limit - 1]["seq"] if len(docs) > limit else None)

    def get_analysis(self, user: User, analysis_id: str) -> dict | None:
        snap = self._call(False, lambda d: self._user(user.id).collection("analyses").document(analysis_id)
                          .get(**d.kw()))
        return self._full(user.id, snap.to_dict()) if snap.exists else None

    def delete_analysis(self, user: User, analysis_id: str) -> bool:
        """Delete the analysis, and its image when no other analysis of the user refers to it."""
        analyses = self._user(user.id).collection("analyses")

        def delete(deadline: _Deadline) -> tuple[bool, ImageRecord | None]:
            snap = analyses.document(analysis_id).get(**deadline.kw())
            if not snap.exists:
                return False, None
            data = snap.to_dict()
            batch = self.db.batch()
            batch.delete(snap.reference)
            if data.get("request_key") is not None:
                batch.delete(self._key_ref(user.id, "analyses", data["request_key"]))
            others = analyses.where(filter=FieldFilter("image_id", "==", data["image_id"])).limit(2).get(**deadline.kw())
            image = None
            if not any(o.id != analysis_id for o in others):
                image_snap = self._user(user.id).collection("images").document(data["image_id"]).get(**deadline.kw())
                if image_snap.exists:
                    image = self._record(user.id, image_snap.to_dict())
                    batch.delete(image_snap.reference)
                    if image_snap.get("request_key") is not None:
                        batch.delete(self._key_ref(user.id, "images", image_snap.get("request_key")))
            batch.commit(**deadline.kw())
            return True, image
        deleted, image = self._call(True, delete)
        if deleted:
            self._unlink(self._folder(user.id) / f"{analysis_id}.json")
        if image is not None:
            self._unlink(image.file)
        return deleted


def client(project_id: str, credentials=None) -> firestore.Client:
    """A Firestore client (with FIRESTORE_EMULATOR_HOST set, the emulator's: anonymous, no credentials needed)."""
    return firestore.Client(project=project_id, credentials=credentials)
