"""Where the Firestore store keeps bytes (BRANET_BYTES_STORE): the image as `{image id}.png`, an analysis'
pictures (mask, ROI, heat map) as `{analysis id}.json`. One class per place, the same methods:

- `FileBytes` (`local`): files in the server's data folder (BRANET_HOME/firestore/{uid}/), with the file protocol
  of the SQLite store: written to `.part`, fsync'd, renamed (folder fsync'd).
- `ObjectBytes` (`cloud-storage`): objects `users/{uid}/images/{id}.png` and `users/{uid}/analyses/{id}.json`
  in the bucket BRANET_STORAGE_BUCKET, named as their documents so that storage.rules can match the owner. An
  upload is all or nothing (no `.part`), every call is bounded (server.firebase_calls), and a failed upload may
  still land (`uploads_may_land`): the store then removes it once Cloud Storage answers, not at once.

`leftovers` lists what the store's start-up repair checks against the documents: (place, uid, kind, id)."""
from __future__ import annotations

import hashlib
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePath, PurePosixPath

from google.api_core import exceptions as gexc

from server.firebase_calls import Deadline, bounded
from server.store import StorageError, fsync_dir, storage_error, write_durably

log = logging.getLogger("branet.store")
FILE = re.compile(r"^([0-9a-f]{32})\.(png|json|part)$")
SAFE_UID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
OBJECT = re.compile(r"^users/([^/]+)/(images|analyses)/([0-9a-f]{32})\.(png|json)$")
Leftover = tuple[PurePath, str, str, str]  # place, uid, kind ("images" | "analyses"), item id


def extension(kind: str) -> str:
    return "png" if kind == "images" else "json"


class FileBytes:
    uploads_may_land = False

    def __init__(self, home: Path):
        self.folder = Path(home) / "firestore"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.where = str(self.folder)

    def _user_folder(self, uid: str) -> Path:
        return self.folder / (uid if SAFE_UID.match(uid) else hashlib.sha256(uid.encode()).hexdigest())

    def place(self, uid: str, kind: str, item_id: str) -> Path:
        return self._user_folder(uid) / f"{item_id}.{extension(kind)}"

    def claim(self, uid: str) -> None:
        """A uid that is not safe as a folder name gets a hashed folder, noted in `.uid` for the repair."""
        folder = self._user_folder(uid)
        if folder.name != uid and not (folder / ".uid").exists():
            self._write(folder / ".uid", uid.encode())

    def put(self, items: list[tuple[PurePath, bytes]]) -> None:
        for path, data in items:
            self._write(Path(path), data)

    def read(self, at: PurePath) -> bytes | None:
        try:
            return Path(at).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, places: list[PurePath], deadline: Deadline | None = None) -> None:
        """At once; a file that cannot be removed is left to the next start-up repair."""
        for path in places:
            try:
                Path(path).unlink(missing_ok=True)
            except OSError as err:
                log.warning("branet.store: could not remove %s (%s): the next start-up repair will", path.name, err)

    def drop(self, places: list[PurePath]) -> list[PurePath]:
        """Delete; returns what is left for later (nothing: files go at once)."""
        self.delete(places)
        return []

    def leftovers(self) -> tuple[list[Leftover], list[Path]]:
        """Every item file, and the `.part` files of writes that never finished."""
        items: list[Leftover] = []
        partial: list[Path] = []
        for folder in sorted(p for p in self.folder.iterdir() if p.is_dir()):
            uid_file = folder / ".uid"
            uid = uid_file.read_text() if uid_file.is_file() else folder.name
            for path in sorted(folder.iterdir()):
                match = FILE.match(path.name)
                if match is None or not path.is_file():
                    continue
                if match[2] == "part":
                    partial.append(path)
                else:
                    items.append((path, uid, "images" if match[2] == "png" else "analyses", match[1]))
        return items, partial

    @staticmethod
    def remove(paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        for folder in {p.parent for p in paths}:
            fsync_dir(folder)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(path.parent.parent)
            write_durably(path, data)
        except OSError as err:
            raise storage_error(err) or err


class ObjectBytes:
    uploads_may_land = True

    def __init__(self, bucket, timeout_s: float):
        self.bucket, self.timeout_s = bucket, timeout_s
        self.where = f"bucket {bucket.name}"

    def place(self, uid: str, kind: str, item_id: str) -> PurePosixPath:
        return PurePosixPath("users", uid, kind, f"{item_id}.{extension(kind)}")

    def claim(self, uid: str) -> None:
        pass

    def put(self, items: list[tuple[PurePath, bytes]]) -> None:
        def upload(deadline: Deadline) -> None:
            def one(name: PurePath, data: bytes) -> None:
                content_type = "image/png" if name.suffix == ".png" else "application/json"
                self.bucket.blob(str(name)).upload_from_string(data, content_type=content_type,
                                                               **deadline.storage_kw())
            # An analysis' objects go up side by side: the write is on the clinician's wait (issue 22's 5%)
            with ThreadPoolExecutor(max_workers=len(items)) as pool:
                for done in [pool.submit(one, name, data) for name, data in items]:
                    done.result()
        bounded(self.timeout_s, True, upload, "storage")

    def read(self, at: PurePath) -> bytes | None:
        def download(deadline: Deadline) -> bytes | None:
            try:
                return self.bucket.blob(str(at)).download_as_bytes(**deadline.storage_kw())
            except gexc.NotFound:
                return None
        return bounded(self.timeout_s, False, download, "storage")

    def delete(self, places: list[PurePath], deadline: Deadline) -> None:
        """Within `deadline` (raises when Cloud Storage does not answer)."""
        for name in places:
            try:
                self.bucket.blob(str(name)).delete(**deadline.storage_kw())
            except gexc.NotFound:
                pass

    def drop(self, places: list[PurePath]) -> list[PurePath]:
        """Delete now if Cloud Storage answers; returns what is left for later (never fails the request)."""
        try:
            bounded(self.timeout_s, True, lambda d: self.delete(places, d), "storage")
        except StorageError:
            return places
        return []

    def older_than(self, age_s: float) -> list[Leftover]:
        """The bucket's users/{uid}/{images|analyses}/{id} objects created more than `age_s` ago: other replicas
        share the bucket, and a write in flight there is far younger."""
        cutoff = time.time() - age_s

        def listing(deadline: Deadline) -> list:
            return list(self.bucket.client.list_blobs(self.bucket, prefix="users/", **deadline.storage_kw()))
        found: list[Leftover] = []
        for blob in bounded(self.timeout_s, False, listing, "storage"):
            match = OBJECT.match(blob.name)
            if match is None or blob.time_created is None or blob.time_created.timestamp() > cutoff:
                continue
            found.append((PurePosixPath(blob.name), match[1], match[2], match[3]))
        return found
