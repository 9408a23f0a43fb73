"""The real Firebase emulators for the tests: server/firebase_emulators.py (shared with bench/serve.py), with
pytest.fail as what a missing emulator, one that exits or one not up in time does: the test fails with the
command that installs it or the end of the emulator's log, never a skip."""
from __future__ import annotations

from pathlib import Path

import pytest

from server.firebase_emulators import (BUCKET, PROJECT, AuthRest, Emulator, EmulatorError,  # noqa: F401
                                       FirestoreEmulator, StorageEmulator)
from server.firebase_emulators import auth_emulator as _auth_emulator
from server.firebase_emulators import firestore_emulator as _firestore_emulator
from server.firebase_emulators import storage_emulator as _storage_emulator


def firestore_emulator(workdir: Path, port: int | None = None) -> FirestoreEmulator:
    """Not started yet: `with firestore_emulator(dir) as fs:`, or `.start()`; the rules are firestore.rules."""
    return _firestore_emulator(workdir, port, fail=pytest.fail)


def auth_emulator(workdir: Path, port: int | None = None) -> Emulator:
    return _auth_emulator(workdir, port, fail=pytest.fail)


def storage_emulator(workdir: Path, port: int | None = None) -> StorageEmulator:
    return _storage_emulator(workdir, port, fail=pytest.fail)
