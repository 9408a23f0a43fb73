"""The history in Firestore (BRANET_STORE=firestore): a HistoryStore like server.store.Store.

Documents (everything the API returns but image bytes):
- `users/{uid}/images/{id}`: sha256, modality, width, height, created, request_key, file.
- `users/{uid}/analyses/{id}`: the summary the history lists (`summary`), `seq` (the cursor: microseconds,
  increasing per process), `created`, `image_id`, `request_key`, and the full result as JSON (`result`: Firestore
  arrays cannot nest, prompts and boxes do) without its pictures.
- `users/{uid}/request_keys/{images|analyses}:{key}`: the Idempotency-Key's claim, created in the same batch
  as what it names (a second create fails: the first request's answer is returned).

Bytes (BRANET_BYTES_STORE, server.firestore_bytes): the image and an analysis' pictures (the result's `*_png`
fields), as files in the server's data folder or as Cloud Storage objects. Either way the bytes are written before
their document and removed only after it is deleted. A write that surely did not reach Firestore removes its bytes
at once; one that timed out (it may still land) is undone by a background thread once Firestore answers: its
documents deleted, then its bytes (never a document without its bytes). Objects that could not be deleted at once
(Cloud Storage unreachable) are retried by the same thread. A stop before that leaves bytes that a later start's
repair removes when their document does not exist (`.part` leftovers too; objects only once older than
`sweep_age_s`, since other replicas share the bucket).

Every call to Firestore or Cloud Storage is bounded by BRANET_FIREBASE_TIMEOUT_S (transient errors are retried
within it, server.firebase_calls); past it, or when the service is unreachable, `FirestoreUnavailable` (503
`storage_unavailable`, naming the service): nothing of the request was kept."""
from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path, PurePath, PurePosixPath

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from server.firebase_calls import Deadline, Service, bounded, may_have_landed
from server.firestore_bytes import FileBytes, ObjectBytes
from server.store import DuplicateRequest, ImageRecord, StorageError, User, now

log = logging.getLogger("branet.store")


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
        self.sweep_age_s = sweep_age_s
        # Files are checked by the repair even when the bytes go to a bucket: a server switched to Cloud Storage
        # may still have files of writes that never finished.
        self.files = FileBytes(self.home)
        self.bytes: FileBytes | ObjectBytes = self.files if bucket is None else ObjectBytes(bucket, timeout_s)
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

    # documents
    def _user(self, uid: str):
        return self.db.collection("users").document(uid)

    def _doc(self, uid: str, kind: str, item_id: str):
        return self._user(uid).collection(kind).document(item_id)

    def _key_ref(self, uid: str, table: str, request_key: str):
        return self._user(uid).collection("request_keys").document(f"{table}:{request_key}")

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._last_seq = max(time.time_ns() // 1000, self._last_seq + 1)
            return self._last_seq

    def _call(self, writing: bool, fn, service: Service = "firestore"):
        return bounded(self.timeout_s, writing, fn, service)

    def _drop_bytes(self, places: list[PurePath]) -> None:
        """Remove the bytes of documents that do not exist (any more); what cannot go now (Cloud Storage
        unreachable) is left to the background thread, never to fail the request."""
        left = self.bytes.drop(places)
        if left:
            self._undo_later([], None, "", left)

    def image_png(self, record: ImageRecord) -> bytes | None:
        """The stored image's PNG bytes; None when they are gone (HistoryStore)."""
        return self.bytes.read(record.file)

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
            self.bytes.put([(place, data) for *_, place, data in items])
        except BaseException:
            if self.bytes.uploads_may_land:  # Cloud Storage is down or slow: removed once it answers
                self._undo_later([], None, "", places)
            else:
                self.bytes.delete(places)
            raise

        def write(deadline: Deadline) -> None:
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
            if not may_have_landed(err):
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

                def undo(deadline: Deadline) -> None:
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
                    self._call(True, lambda d: self.bytes.delete(places, d), "storage")
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
        candidates, partial = self.files.leftovers()
        if isinstance(self.bytes, ObjectBytes):
            candidates += self.bytes.older_than(self.sweep_age_s)
        orphans: list[PurePath] = []
        for start in range(0, len(candidates), 100):
            chunk = [(place, self._doc(uid, kind, item_id)) for place, uid, kind, item_id in
                     candidates[start:start + 100]]
            docs = self._call(False, lambda d, c=chunk: list(self.db.get_all([ref for _, ref in c], **d.kw())))
            existing = {doc.reference.path for doc in docs if doc.exists}
            orphans += [place for place, ref in chunk if ref.path not in existing]
        files = [p for p in orphans if isinstance(p, Path)]
        objects = [p for p in orphans if not isinstance(p, Path)]
        self.files.remove(files + partial)
        for name in objects:
            self._call(True, lambda d, n=name: self.bytes.delete([n], d), "storage")
        report = {"files_without_documents": [p.name for p in files], "partial_files": [p.name for p in partial]}
        if isinstance(self.bytes, ObjectBytes):
            report["objects_without_documents"] = [str(p) for p in objects]
        if orphans or partial:
            log.warning("branet.store: start-up repair (Firestore): deleted %d file(s) without a document %s, %d "
                        "partial write(s) %s and %d Cloud Storage object(s) without a document %s", len(files),
                        report["files_without_documents"], len(partial), report["partial_files"], len(objects),
                        [str(p) for p in objects])
        return report

    # images
    def _record(self, uid: str, data: dict) -> ImageRecord:
        place = PurePosixPath(data["object"]) if data.get("object") else self.home / data["file"]
        return ImageRecord(data["id"], uid, data["sha256"], data["modality"], data["width"], data["height"],
                           place, data["created"])

    def add_image(self, user: User, sha256: str, modality: str, width: int, height: int, png: bytes,
                  request_key: str | None = None) -> ImageRecord:
        self.bytes.claim(user.id)
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
        snap = self._call(False, lambda d: self._doc(user.id, "images", image_id).get(**d.kw()))
        return self._record(user.id, snap.to_dict()) if snap.exists else None

    def image_for_key(self, user: User, request_key: str) -> ImageRecord | None:
        key = self._call(False, lambda d: self._key_ref(user.id, "images", request_key).get(**d.kw()))
        return self.get_image(user, key.get("id")) if key.exists else None

    def delete_image(self, user: User, image_id: str) -> None:
        ref = self._doc(user.id, "images", image_id)

        def delete(deadline: Deadline) -> ImageRecord | None:
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
        return ("analyses", analysis_id, doc, self.bytes.place(user.id, "analyses", analysis_id),
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
                           self.bytes.place(user.id, "images", image_id), now())

    def add_analysis_with_image(self, user: User, record: ImageRecord, png: bytes, summary: dict, result: dict,
                                request_key: str | None = None) -> str:
        """A one-call analysis and its new image (from new_image) in one atomic write, bytes included: both or
        neither. DuplicateRequest (nothing written) when the user already used `request_key` for an analysis."""
        self.bytes.claim(user.id)
        self._create(user.id, [self._image_item(record, png, None),
                               self._analysis_item(user, record.id, summary, result, request_key)],
                     "analyses", request_key)
        return result["id"]

    def _full(self, uid: str, data: dict) -> dict | None:
        result = json.loads(data["result"])
        raw = self.bytes.read(self.bytes.place(uid, "analyses", data["id"]))
        if raw is None:
            log.warning("branet.store: the pictures of analysis %s are missing (%s)", data["id"], self.bytes.where)
            return None
        return _with_pictures(result, json.loads(raw))

    def analysis_for_key(self, user: User, request_key: str) -> dict | None:
        key = self._call(False, lambda d: self._key_ref(user.id, "analyses", request_key).get(**d.kw()))
        return self.get_analysis(user, key.get("id")) if key.exists else None

    def list_analyses(self, user: User, limit: int, before: int | None = None) -> tuple[list[dict], int | None]:
        """Newest first; the page and the cursor (a `seq`) of the next one, None at the end."""
        def page(deadline: Deadline):
            query = self._user(user.id).collection("analyses")
            if before is not None:
                query = query.where(filter=FieldFilter("seq", "<", before))
            query = query.order_by("seq", direction=firestore.Query.DESCENDING).limit(limit + 1)
            return [snap.to_dict() for snap in query.get(**deadline.kw())]
        docs = self._call(False, page)
        return [d["summary"] for d in docs[:limit]], (docs[limit - 1]["seq"] if len(docs) > limit else None)

    def get_analysis(self, user: User, analysis_id: str) -> dict | None:
        snap = self._call(False, lambda d: self._doc(user.id, "analyses", analysis_id).get(**d.kw()))
        return self._full(user.id, snap.to_dict()) if snap.exists else None

    def delete_analysis(self, user: User, analysis_id: str) -> bool:
        """Delete the analysis, and its image when no other analysis of the user refers to it."""
        analyses = self._user(user.id).collection("analyses")

        def delete(deadline: Deadline) -> tuple[bool, ImageRecord | None]:
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
                image_snap = self._doc(user.id, "images", data["image_id"]).get(**deadline.kw())
                if image_snap.exists:
                    image = self._record(user.id, image_snap.to_dict())
                    batch.delete(image_snap.reference)
                    if image_snap.get("request_key") is not None:
                        batch.delete(self._key_ref(user.id, "images", image_snap.get("request_key")))
            batch.commit(**deadline.kw())
            return True, image
        deleted, image = self._call(True, delete)
        if deleted:
            self._drop_bytes([self.bytes.place(user.id, "analyses", analysis_id)] + ([image.file] if image else []))
        return deleted


def client(project_id: str, credentials=None) -> firestore.Client:
    """A Firestore client (with FIRESTORE_EMULATOR_HOST set, the emulator's: anonymous, no credentials needed)."""
    return firestore.Client(project=project_id, credentials=credentials)
