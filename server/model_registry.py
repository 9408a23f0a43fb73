"""The versioned models folder (BRANET_MODELS_DIR, default HOME/models): every deployed version of each role,
which one is active, and an append-only audit log. It survives restarts and is shared by replicas.

    versions/<id>/version.json   what the version is (role, sha256, who deployed it and when)
    versions/<id>/manifest.json  its manifest entry (and SAM decoders), as `python -m training export` writes
    versions/<id>/*.safetensors  its files (a committed version instead names the folder it lives in)
    active.json                  per role the active id and the ids it replaced (rollback), with a serial
    audit.jsonl                  one JSON line per upload, refusal, activation, rollback
    .staging/                    uploads being validated; renamed into versions/ only once every check passed

A version is written whole into .staging and renamed into versions/ (one rename), and active.json is replaced
by a rename too, so a reader (another replica polling it) never sees half of either. Writers on several
replicas take an exclusive flock on `.lock`. Versions are never changed once written.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from models.manifest import LocaliserEntry, Manifest, ModelEntry, WeightsError, read_manifest

CLASSIFIER_ROLES = ("classifier-us", "classifier-dm")
LOCALISER_ROLES = ("localiser-us", "localiser-dm")  # optional: a modality without one answers `{}` with sam-amg
ROLES = CLASSIFIER_ROLES + LOCALISER_ROLES
SYSTEM = "system"  # the actor of what a start does on its own (registering the committed weights)
STAGING_MAX_AGE_S = 3600  # a staging folder older than this is a crashed upload's leftover


def role_modality(role: str) -> str:
    return role.rsplit("-", 1)[-1]


def is_localiser(role: str) -> bool:
    return role in LOCALISER_ROLES


def role_entry(manifest: Manifest, role: str) -> ModelEntry | LocaliserEntry | None:
    """The manifest's entry for `role`: a classifier in `models`, a localiser in `localisers`; None if absent."""
    return (manifest.localisers if is_localiser(role) else manifest.models).get(role)


def entry_files(entry: ModelEntry | LocaliserEntry) -> dict[str, str]:
    """The entry's own files (a classifier's SAM probe included) and their sha256."""
    files = {entry.file: entry.sha256}
    probe = getattr(entry, "sam_probe", None)
    return files | ({probe.file: probe.sha256} if probe else {})


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class VersionInfo(BaseModel):
    id: str
    role: str
    sha256: str = Field(description="the classifier (or localiser) file's sha256")
    files: dict[str, str] = Field(description="every file of the version and its sha256")
    source: Literal["committed", "upload"]
    weights_dir: str | None = Field(None, description="a committed version: the folder it lives in")
    deployed_by: str
    deployed_at: str
    gate: dict[str, Any] | None = None


class RoleState(BaseModel):
    active: str
    previous: list[str] = []  # the ids it replaced, newest last: rollback goes back one
    activated_by: str = SYSTEM
    activated_at: str = ""


class ActiveState(BaseModel):
    serial: int = 0  # +1 on every change: a replica that saw this serial serves this state
    roles: dict[str, RoleState] = {}
    activations: dict[str, dict[str, str]] = {}  # version id -> {"by", "at"} of its latest activation


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


class ModelRegistry:
    def __init__(self, root: Path, committed: Path | None = None):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / ".staging"
        self.active_path = self.root / "active.json"
        self.audit_path = self.root / "audit.jsonl"
        # This checkout's committed weights folder. A committed version whose sha256 it holds is read from it,
        # not from the folder recorded when the version was registered: a models folder (BRANET_HOME) outlives
        # a checkout, and several checkouts share one (a moved clone, CI clones, a second install).
        self.committed = Path(committed).resolve() if committed else None
        self._committed_sha: dict[str, str] | None = None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive among every process on this folder (replicas included)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # reading
    def active(self) -> ActiveState:
        try:
            return ActiveState.model_validate_json(self.active_path.read_text())
        except FileNotFoundError:
            return ActiveState()

    def serial(self) -> int:
        return self.active().serial

    def version(self, version_id: str) -> VersionInfo | None:
        if "/" in version_id or version_id.startswith("."):
            return None
        try:
            return VersionInfo.model_validate_json((self.versions_dir / version_id / "version.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def versions(self, role: str | None = None) -> list[VersionInfo]:
        if not self.versions_dir.is_dir():
            return []
        found = [v for d in self.versions_dir.iterdir() if (v := self.version(d.name)) is not None]
        return sorted((v for v in found if role in (None, v.role)), key=lambda v: (v.role, _number(v.id)))

    def weights_dir(self, version: VersionInfo) -> Path:
        """Where its manifest and files are."""
        if version.source == "committed" and self.committed is not None \
                and self.committed_sha256().get(version.role) == version.sha256:
            return self.committed
        return Path(version.weights_dir) if version.weights_dir else self.versions_dir / version.id

    def committed_sha256(self) -> dict[str, str]:
        """Per role the sha256 of the entry in this checkout's committed weights (read once)."""
        if self._committed_sha is None:
            try:
                manifest = read_manifest(self.committed) if self.committed else None
            except WeightsError:
                manifest = None
            self._committed_sha = {role: entry.sha256 for role in ROLES
                                   if manifest and (entry := role_entry(manifest, role)) is not None}
        return self._committed_sha

    def entry(self, version: VersionInfo) -> ModelEntry | LocaliserEntry:
        entry = role_entry(read_manifest(self.weights_dir(version)), version.role)
        if entry is None:
            raise KeyError(version.role)
        return entry

    def active_dirs(self) -> dict[str, tuple[VersionInfo, Path]]:
        """Per role the active version and its weights folder."""
        out = {}
        for role, state in self.active().roles.items():
            version = self.version(state.active)
            if version is None:
                raise WeightsError(f"{self.active_path} names version {state.active} for {role}, which is not in "
                                   f"{self.versions_dir}")
            out[role] = (version, self.weights_dir(version))
        return out

    # writing
    def register_committed(self, weights: Path) -> list[str]:
        """The committed weights as a version of each role (once per sha256), active where the role has none
        yet or where the active one is an earlier committed version no admin chose. Returns what changed."""
        manifest = read_manifest(weights)  # WeightsError when the committed folder has no manifest
        self.committed, self._committed_sha = Path(weights).resolve(), None
        if self._settled(manifest):
            return []  # nothing to write: a read-only models folder (a replica's) starts too
        changed = []
        with self.lock():
            state = self.active()
            known = {(v.role, v.sha256): v for v in self.versions() if v.source == "committed"}
            for role in ROLES:
                entry = role_entry(manifest, role)
                if entry is None:
                    continue
                version = known.get((role, entry.sha256))
                if version is None:
                    files = entry_files(entry)
                    staging = self.new_staging()
                    version = self._commit(staging, VersionInfo(
                        id="", role=role, sha256=entry.sha256, files=files, source="committed",
                        weights_dir=str(Path(weights).resolve()), deployed_by=SYSTEM, deployed_at=now()))
                    self.append_audit({"action": "register", "actor": SYSTEM, "role": role, "version": version.id,
                                       "sha256": entry.sha256, "message": f"committed weights in {weights}"})
                    changed.append(version.id)
                current = state.roles.get(role)
                automatic = current is not None and current.activated_by == SYSTEM and current.active != version.id \
                    and (cur := self.version(current.active)) is not None and cur.source == "committed"
                if current is None or automatic:
                    state = self._activated(state, role, version.id, SYSTEM)
                    self.append_audit({"action": "activate", "actor": SYSTEM, "role": role, "version": version.id,
                                       "sha256": entry.sha256, "message": "the committed weights"})
            if changed or state.serial != self.active().serial:
                write_atomic(self.active_path, state.model_dump_json(indent=1))
        return changed

    def _settled(self, manifest: Manifest) -> bool:
        """Every committed entry registered, and active where it would be made active."""
        state = self.active()
        known = {(v.role, v.sha256): v.id for v in self.versions() if v.source == "committed"}
        for role in ROLES:
            entry = role_entry(manifest, role)
            if entry is None:
                continue
            current = state.roles.get(role)
            version_id = known.get((role, entry.sha256))
            if version_id is None or current is None:
                return False
            if current.activated_by == SYSTEM and current.active != version_id:
                return False
        return True

    def new_staging(self) -> Path:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        path = self.staging_dir / uuid.uuid4().hex
        path.mkdir()
        return path

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def clean_staging(self) -> int:
        """Remove uploads a crash left half-written (old enough not to be another replica's live upload)."""
        if not self.staging_dir.is_dir():
            return 0
        old = [p for p in self.staging_dir.iterdir() if time.time() - p.stat().st_mtime > STAGING_MAX_AGE_S]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        return len(old)

    def commit_upload(self, staging: Path, version: VersionInfo) -> VersionInfo:
        """A validated upload in `staging` becomes a version (id assigned here): one rename."""
        with self.lock():
            return self._commit(staging, version)

    def _commit(self, staging: Path, version: VersionInfo) -> VersionInfo:
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        n = 1 + max((_number(v.id) for v in self.versions(version.role)), default=0)
        version = version.model_copy(update={"id": f"{version.role}-v{n}"})
        write_atomic(staging / "version.json", version.model_dump_json(indent=1))
        for name in os.listdir(staging):
            if name != "version.json":
                with open(staging / name, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(staging)
        staging.rename(self.versions_dir / version.id)
        _fsync_dir(self.versions_dir)
        return version

    def activate(self, role: str, version_id: str, actor: str, rollback: bool = False) -> ActiveState:
        """Make `version_id` the role's active version (rollback: drop the current one from the history)."""
        with self.lock():
            state = self.active()
            if rollback:
                current = state.roles[role]
                state.roles[role] = RoleState(active=version_id, previous=current.previous[:-1],
                                              activated_by=actor, activated_at=now())
                state.activations[version_id] = {"by": actor, "at": state.roles[role].activated_at}
                state.serial += 1
            else:
                state = self._activated(state, role, version_id, actor)
            write_atomic(self.active_path, state.model_dump_json(indent=1))
            return state

    @staticmethod
    def _activated(state: ActiveState, role: str, version_id: str, actor: str) -> ActiveState:
        current = state.roles.get(role)
        previous = [*current.previous, current.active] if current and current.active != version_id else (
            current.previous if current else [])
        at = now()
        state = state.model_copy(deep=True)
        state.roles[role] = RoleState(active=version_id, previous=previous[-50:], activated_by=actor, activated_at=at)
        state.activations[version_id] = {"by": actor, "at": at}
        state.serial += 1
        return state

    # the audit log
    def append_audit(self, event: dict[str, Any]) -> dict[str, Any]:
        """One line, appended and fsync'd (O_APPEND: replicas' lines never interleave within a line)."""
        event = {"at": now(), **event}
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(event, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return event

    def audit(self, limit: int | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.audit_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        events = [json.loads(line) for line in lines if line.strip()]
        return events[-limit:] if limit else events


def _number(version_id: str) -> int:
    tail = version_id.rsplit("-v", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def manifest_for_role(manifest: Manifest, role: str) -> Manifest:
    """What a version of `role` keeps: its entry and the SAM decoders it names."""
    if is_localiser(role):
        return Manifest(localisers={role: manifest.localisers[role]})
    entry = manifest.models[role]
    sams = {entry.input.sam, entry.sam_probe.sam if entry.sam_probe else None}
    return Manifest(models={role: entry}, sam_decoders={k: v for k, v in manifest.sam_decoders.items() if k in sams})
