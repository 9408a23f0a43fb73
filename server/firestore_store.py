"""The history in Firestore (BRANET_STORE=firestore): a HistoryStore like server.store.Store.

Documents (everything the API returns but image bytes):
- `users/{uid}/images/{id}`: sha256, modality, width, height, created, request_key, file.
- `users/{uid}/analyses/{id}`: the summary the history lists (`summary`), `seq` (the cursor: microseconds,
  increasing per process), `created`, `image_id`, `request_key`, and the full result as JSON (`result`: Firestore
  arrays cannot nest, prompts and boxes do) without its pictures.
- `users/{uid}/request_keys/{images|analyses}:{key}`: the Idempotency-Key's claim, created in the same batch
  as what it names (a second create fails: the first request's answer is returned).

Bytes (BRANET_BYTES_STORE): the image as `{image id}.png`, an analysis' pictures (mask, ROI, heat map: the result's
`*_png` fields) as `{analysis id}.json`, either
- `local`: files in the server's data folder (BRANET_HOME/firestore/{uid}/), with the file protocol of the SQLite
  store: written to `.part`, fsync'd, renamed (folder fsync'd); or
- `cloud-storage`: objects `users/{uid}/images/{id}.png` and `users/{uid}/analyses/{id}.json` in the bucket
  BRANET_STORAGE_BUCKET (an upload is all or nothing: no `.part` is needed).
Either way the bytes are written before their document and removed only after it is deleted. A write that
surely did not reach Firestore removes its bytes at once; one that timed out (it may still land) is undone by a
background thread once Firestore answers: its documents deleted, then its bytes (never a document without its
bytes). Objects that could not be deleted at once (Cloud Storage unreachable) are retried by the same thread. A
stop before that leaves bytes that a later start's repair removes when their document does not exist (`.part`
leftovers too; objects only once older than `sweep_age_s`, since other replicas share the bucket).

Every call to Firestore or Cloud Storage is bounded by BRANET_FIREBASE_TIMEOUT_S (transient errors are retried
within it); past it, or when the service is unreachable, `FirestoreUnavailable` (503 `storage_unavailable`,
naming the service): nothing of the request was kept."""
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, Literal

import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
# What the pinned google-cloud-storage's own DEFAULT_RETRY retries (private, but the library's definition).
from google.cloud.storage.retry import _should_retry as storage_transient

from server.store import (DuplicateRequest, ImageRecord, StorageError, User, fsync_dir, now, storage_error,
                          write_durably)

log = logging.getLogger("branet.store")
FILE = re.compile(r"^([0-9a-f]{32})\.(png|json|part)$")
SAFE_UID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
OBJECT = re.compile(r"^users/([^/]+)/(images|analyses)/([0-9a-f]{32})\.(png|json)$")
Service = Literal["firestore", "storage"]
SERVICE_NAMES: dict[str, str] = {"firestore": "the history database (Firestore)",
                                 "storage": "the image store (Cloud Storage)"}
# Cloud Storage and this server's HTTP client: the failures that mean "unreachable or too slow", not a bug.
STORAGE_DOWN = (requests.ConnectionError, requests.Timeout, gexc.RetryError, gexc.ServiceUnavailable,
                gexc.InternalServerError, gexc.BadGateway, gexc.GatewayTimeout, gexc.TooManyRequests,
                gexc.DeadlineExceeded, TimeoutError)


class FirestoreUnavailable(StorageError):
    status, code = 503, "storage_unavailable"

    def __init__(self, timeout_s: float, writing: bool, service: Service = "firestore"):
        super().__init__(f"{SERVICE_NAMES[service]} did not answer within {timeout_s:g} s"
                         + (": nothing was stored" if writing else "") + "; try again shortly")


class _Deadline:
    """One operation's time left: each call gets it as its timeout and as its retry's deadline."""

    def __init__(self, store: "FirestoreStore", writing: bool, service: Service = "firestore"):
        self.store, self.writing, self.service = store, writing, service
        self.end = time.monotonic() + store.timeout_s

    def _left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0.05:
            raise FirestoreUnavailable(self.store.timeout_s, self.writing, self.service)
        return left

    def kw(self) -> dict:
        left = self._left()
        return {"timeout": left, "retry": gretry.Retry(predicate=gretry.if_transient_error, initial=0.05,
                                                        maximum=0.5, multiplier=2, timeout=left)}

    def storage_kw(self) -> dict:
        """The same bound for google-cloud-storage (HTTP): its own idea of transient (connection refused or
        reset, 408, 429, 5xx) is retried, quickly, within the time left."""
        left = self._left()
        return {"timeout": left, "retry": gretry.Retry(predicate=storage_transient, initial=0.05, maximum=0.5,
                                                        multiplier=2, timeout=left)}


def _firestore_error(err: BaseException, store: "FirestoreStore", writing: bool,
                     service: Service = "firestore") -> StorageError | None:
    down = STORAGE_DOWN if service == "storage" else (
        gexc.RetryError, gexc.DeadlineExceeded, gexc.ServiceUnavailable, gexc.InternalServerError, gexc.Unknown,
        gexc.Aborted, gexc.ResourceExhausted, gexc.Cancelled, TimeoutError)
    if isinstance(err, down):
        return FirestoreUnavailable(store.timeout_s, writing, service)
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
    """`bucket`: a google.cloud.storage Bucket for BRANET_BYTES_STORE=cloud-storage, None for files under `home`."""

    def __init__(self, client: firestore.Client, home: Path, timeout_s: float = 5.0, repair: bool = True,
                 bucket=None, sweep_age_s: float = 3600.0):
        self.db, self.home, self.timeout_s = client, Path(home), timeout_s
        self.bucket, self.sweep_age_s = bucket, sweep_age_s
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

    def _bytes_at(self, uid: str, kind: str, item_id: str) -> PurePath:
        """Where an item's bytes live: a file under home, or (Cloud Storage) the object's name in the bucket, by
        the same path as its document (users/{uid}/...), so that storage.rules can match the owner."""
        ext = "png" if kind == "images" else "json"
        if self.bucket is not None:
            return PurePosixPath("users", uid, kind, f"{item_id}.{ext}")
        return self._folder(uid) / f"{item_id}.{ext}"

    def _ensure_folder(self, user: User) -> None:
        if self.bucket is not None:
            return
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

    def _call(self, writing: bool, fn, service: Service = "firestore"):
        """Run `fn(deadline)` against Firestore (or Cloud Storage); unreachable or too slow -> FirestoreUnavailable
        naming the service."""
        deadline = _Deadline(self, writing, service)
        try:
            return fn(deadline)
        except (StorageError, DuplicateRequest):
            raise
        except Exception as err:
            mapped = _firestore_error(err, self, writing, service)
            if mapped is None:
                raise
            log.warning("branet.store: %s: %s: %s", "Cloud Storage" if service == "storage" else "Firestore",
                        type(err).__name__, err)
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

    # bytes: files or objects
    def _put_bytes(self, items: list[tuple[PurePath, bytes]]) -> None:
        if self.bucket is None:
            for path, data in items:
                self._write_file(path, data)
            return

        def upload(deadline: _Deadline) -> None:
            def one(name: PurePath, data: bytes) -> None:
                content_type = "image/png" if name.suffix == ".png" else "application/json"
                self.bucket.blob(str(name)).upload_from_string(data, content_type=content_type,
                                                               **deadline.storage_kw())
            # An analysis' objects go up side by side: the write is on the clinician's wait (issue 22's 5%)
            with ThreadPoolExecutor(max_workers=len(items)) as pool:
                for done in [pool.submit(one, name, data) for name, data in items]:
                    done.result()
        self._call(True, upload, "storage")

    def read_bytes(self, at: PurePath) -> bytes | None:
        """An item's bytes; None when they are gone."""
        if self.bucket is None:
            try:
                return Path(at).read_bytes()
            except FileNotFoundError:
                return None

        def download(deadline: _Deadline) -> bytes | None:
            try:
                return self.bucket.blob(str(at)).download_as_bytes(**deadline.storage_kw())
            except gexc.NotFound:
                return None
        return self._call(False, download, "storage")

    def _delete_bytes(self, places: list[PurePath], deadline: _Deadline | None = None) -> None:
        """Files go at once; objects within `deadline` (raises when Cloud Storage does not answer)."""
        if self.bucket is None:
            for path in places:
                self._unlink(Path(path))
            return
        for name in places:
            try:
                self.bucket.blob(str(name)).delete(**deadline.storage_kw())
            except gexc.NotFound:
                pass

    def _drop_bytes(self, places: list[PurePath]) -> None:
        """Remove the bytes of documents that do not exist (any more): objects that cannot be deleted now (Cloud
        Storage unreachable) are left to the background thread, never to fail the request."""
        if self.bucket is None:
            self._delete_bytes(places)
            return
        try:
            self._call(True, lambda d: self._delete_bytes(places, d), "storage")
        except StorageError:
            self._undo_later([], None, "", places)

    def image_png(self, record: ImageRecord) -> bytes | None:
        """The stored image's PNG bytes; None when they are gone (HistoryStore)."""
        return self.read_bytes(record.file)

    def _create(self, uid: str, items: list[tuple[str, str, dict, PurePath, bytes]], key_table: str,
                request_key: str | None) -> None:
        """Items (table, id, document, bytes' place, bytes), all or nothing: the bytes first (files durably, or
        objects), then the documents and the request key's claim (on the last item, the one `key_table` names)
        in one batch. A taken key: the bytes go and DuplicateRequest carries the first request's item. Another
        failure: the bytes go at once if the write surely did not reach Firestore, else (a timeout: it may still
        land) _undo_later."""
        refs = [self._user(uid).collection(table).document(item_id) for table, item_id, *_ in items]
        claimed_id = items[-1][1]
        key_ref = self._key_ref(uid, key_table, request_key) if request_key is not None else None
        places = [place for *_, place, _ in items]
        try:
            self._put_bytes([(place, data) for *_, place, data in items])
        except BaseException:
            if self.bucket is None:
                self._delete_bytes(places)
            else:  # Cloud Storage is down or slow: an upload may still land; removed once it answers
                self._undo_later([], None, "", places)
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
            self._drop_bytes(places)
            if key_ref is None:
                raise
            raise DuplicateRequest(self.image_for_key(User(uid, uid), request_key) if key_table == "images"
                                   else self.analysis_for_key(User(uid, uid), request_key)) from None
        except BaseException as err:
            if not _may_have_landed(err):
                self._drop_bytes(places)
            else:  # Firestore is slow, not gone: undone in the background, not in this request's time
                self._undo_later(refs, key_ref, claimed_id, places)
            raise

    def _undo_later(self, refs: list, key_ref, claimed_id: str, places: list[PurePath]) -> None:
        """A write that timed out may still land: its documents are deleted (and only then its bytes) by a
        background thread that retries every second until Firestore (and Cloud Storage) answer. Until then the
        bytes stay (never a document without its bytes); a stop before it is done leaves them to a later start's
        repair. With no documents (`refs` empty) only the bytes are deleted."""
        with self._undo_lock:
            self._undos.append([refs, key_ref, claimed_id, places])
            log.warning("branet.store: %s will be undone once %s answers", [p.name for p in places],
                        "Firestore" if refs else "Cloud Storage")
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
                refs, key_ref, claimed_id, places = item

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
                    if refs or key_ref is not None:
                        self._call(True, undo)
                        item[0], item[1] = [], None  # the documents are gone: only the bytes are left to do
                    self._call(True, lambda d: self._delete_bytes(places, d), "storage")
                except Exception as err:  # noqa: BLE001 - retried
                    log.debug("branet.store: undo not done yet: %s", err)
                    continue
                with self._undo_lock:
                    self._undos.remove(item)
                log.warning("branet.store: undid the write of %s", [p.name for p in places])
            self._closing.wait(1.0)

    def repair(self) -> dict[str, list[str]]:
        """Bytes without their document (a crash between writing the bytes and the document, or deleting a
        document and its bytes) and `.part` leftovers are deleted. Call it only while no other process writes
        this home. Objects in Cloud Storage are shared by every replica: only those older than `sweep_age_s`
        (far longer than any write takes) are candidates, so a write in flight elsewhere is never swept."""
        candidates: list[tuple[PurePath, Any]] = []
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
        if self.bucket is not None:
            candidates += self._old_objects()
        orphans: list[PurePath] = []
        for start in range(0, len(candidates), 100):
            chunk = candidates[start:start + 100]
            docs = self._call(False, lambda d, c=chunk: list(self.db.get_all([ref for _, ref in c], **d.kw())))
            existing = {doc.reference.path for doc in docs if doc.exists}
            orphans += [place for place, ref in chunk if ref.path not in existing]
        files = [p for p in orphans if isinstance(p, Path)]
        objects = [p for p in orphans if not isinstance(p, Path)]
        for path in files + partial:
            path.unlink(missing_ok=True)
        for folder in {p.parent for p in files + partial}:
            fsync_dir(folder)
        for name in objects:
            self._call(True, lambda d, n=name: self._delete_bytes([n], d), "storage")
        report = {"files_without_documents": [p.name for p in files], "partial_files": [p.name for p in partial]}
        if self.bucket is not None:
            report["objects_without_documents"] = [str(p) for p in objects]
        if orphans or partial:
            log.warning("branet.store: start-up repair (Firestore): deleted %d file(s) without a document %s, %d "
                        "partial write(s) %s and %d Cloud Storage object(s) without a document %s", len(files),
                        report["files_without_documents"], len(partial), report["partial_files"], len(objects),
                        [str(p) for p in objects])
        return report

    def _old_objects(self) -> list[tuple[PurePath, Any]]:
        """The bucket's users/{uid}/{images|analyses}/{id} objects older than sweep_age_s, with their document."""
        cutoff = time.time() - self.sweep_age_s

        def listing(deadline: _Deadline) -> list:
            return list(self.bucket.client.list_blobs(self.bucket, prefix="users/", **deadline.storage_kw()))
        found = []
        for blob in self._call(False, listing, "storage"):
            match = OBJECT.match(blob.name)
            if match is None or blob.time_created is None or blob.time_created.timestamp() > cutoff:
                continue
            found.append((PurePosixPath(blob.name), self._user(match[1]).collection(match[2]).document(match[3])))
        return found

    # images
    def _record(self, uid: str, data: dict) -> ImageRecord:
        place = PurePosixPath(data["object"]) if data.get("object") else self.home / data["file"]
        return ImageRecord(data["id"], uid, data["sha256"], data["modality"], data["width"], data["height"],
                           place, data["created"])

    def add_image(self, user: User, sha256: str, modality: str, width: int, height: int, png: bytes,
                  request_key: str | None = None) -> ImageRecord:
        self._ensure_folder(user)
        record = self.new_image(user, sha256, modality, width, height)
        self._create(user.id, [self._image_item(record, png, request_key)], "images", request_key)
        return record

    def _image_item(self, record: ImageRecord, png: bytes, request_key: str | None) -> tuple:
        doc = {"id": record.id, "sha256": record.sha256, "modality": record.modality, "width": record.width,
               "height": record.height, "created": record.created, "request_key": request_key}
        if isinstance(record.file, Path):
            doc["file"] = str(record.file.relative_to(self.home))
        else:  # the object's name in this server's bucket (BRANET_STORAGE_BUCKET)
            doc["object"] = str(record.file)
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
            self._drop_bytes([record.file])

    # analyses
    def _analysis_item(self, user: User, image_id: str, summary: dict, result: dict,
                       request_key: str | None) -> tuple:
        analysis_id = result["id"]
        stripped, pictures = _pictures(result)
        doc = {"id": analysis_id, "image_id": image_id, "created": result["created"], "seq": self._next_seq(),
               "summary": summary, "request_key": request_key, "result": json.dumps(stripped)}
        return ("analyses", analysis_id, doc, self._bytes_at(user.id, "analyses", analysis_id),
                json.dumps(pictures).encode())

    def add_analysis(self, user: User, image_id: str, summary: dict, result: dict,
                     request_key: str | None = None) -> str:
        self._create(user.id, [self._analysis_item(user, image_id, summary, result, request_key)], "analyses",
                     request_key)
        return result["id"]

    def new_image(self, user: User, sha256: str, modality: str, width: int, height: int) -> ImageRecord:
        """The record an image will have, not stored yet (add_analysis_with_image stores it)."""
        image_id = uuid.uuid4().hex
        return ImageRecord(image_id, user.id, sha256, modality, width, height,
                           self._bytes_at(user.id, "images", image_id), now())

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
        raw = self.read_bytes(self._bytes_at(uid, "analyses", data["id"]))
        if raw is None:
            log.warning("branet.store: the pictures of analysis %s are missing (%s)", data["id"],
                        f"bucket {self.bucket.name}" if self.bucket is not None else self.files_dir)
            return None
        return _with_pictures(result, json.loads(raw))

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
            self._drop_bytes([self._bytes_at(user.id, "analyses", analysis_id)] + ([image.file] if image else []))
        return deleted


def client(project_id: str, credentials=None) -> firestore.Client:
    """A Firestore client (with FIRESTORE_EMULATOR_HOST set, the emulator's: anonymous, no credentials needed)."""
    return firestore.Client(project=project_id, credentials=credentials)
