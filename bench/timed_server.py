"""`branet serve` with its history store and sign-in timed, for bench/store_share.py (`bench/serve.py --store`).

    BRANET_BENCH_TIMINGS=FILE .venv/bin/python bench/timed_server.py serve --port PORT ...

The real server (server.cli), unchanged but for this: every call the server makes to its history store (the
HistoryStore methods of server.store.Store and server.firestore_store.FirestoreStore) and to its sign-in check
(a local bearer's lookup in SQLite, or verify_id_token against Firebase Authentication) appends one JSON line to
FILE: {"kind": "store" | "auth", "name": method, "t0": wall-clock start (time.time()), "s": seconds}. A call made
inside another timed call (FirestoreStore.image_for_key inside a duplicate write, say) is not counted twice.
Nothing is replaced: the same code runs, on the same emulators or files."""
from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server import firebase as firebase_mod  # noqa: E402
from server import firestore_store, store  # noqa: E402

HISTORY = ("add_image", "get_image", "image_for_key", "delete_image", "add_analysis", "add_analysis_with_image",
           "analysis_for_key", "list_analyses", "get_analysis", "delete_analysis")
_out = open(os.environ["BRANET_BENCH_TIMINGS"], "a", buffering=1)  # noqa: SIM115 - for the process' life
_lock, _depth = threading.Lock(), threading.local()


def timed(kind: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        depth = getattr(_depth, "n", 0)
        _depth.n = depth + 1
        t0, start = time.time(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds = time.perf_counter() - start
            _depth.n = depth
            if depth == 0:
                with _lock:
                    _out.write(json.dumps({"kind": kind, "name": fn.__name__, "t0": t0, "s": seconds}) + "\n")
    return wrapper


def instrument() -> None:
    for cls in (store.Store, firestore_store.FirestoreStore):
        for name in HISTORY:
            if hasattr(cls, name):
                setattr(cls, name, timed("store", getattr(cls, name)))
    for name in ("user_for_token", "session_for_token"):
        setattr(store.Store, name, timed("auth", getattr(store.Store, name)))
    firebase_mod.FirebaseUsers.identity_for_bearer = timed("auth", firebase_mod.FirebaseUsers.identity_for_bearer)


if __name__ == "__main__":
    instrument()
    from server.cli import main
    sys.exit(main(sys.argv[1:]))
