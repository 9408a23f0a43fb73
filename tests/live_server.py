"""A real `branet serve` in its own process (a fresh BRANET_HOME, a free port), for the tests that need
what an in-process TestClient cannot show: a browser, a socket, a process that starts and stops."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from server.launcher import ServerDidNotStart, free_port, server_env, start

MOBILE = Path(__file__).resolve().parents[1] / "mobile"


def require_app() -> None:
    """The browser tests' prerequisites, or a failure naming the make target that provides each (never a skip)."""
    for needed, how in [(MOBILE / "dist" / "index.html", "make app"), (MOBILE / "node_modules" / "playwright-core", "make app"),
                        (Path(shutil.which("chromium") or "/nonexistent"), "make chromium")]:
        if not needed.exists():
            pytest.fail(f"{needed} is missing: run `{how}` (make test does)")


@contextmanager
def live_server(home: Path, **env: str) -> Iterator[int]:
    """`branet serve` on a free port until its models are loaded; yields the port. Its log: home/server.log."""
    port = free_port()
    with (home / "server.log").open("w") as log:
        try:
            proc = start(port, server_env(home, **env), log)
        except ServerDidNotStart as e:
            pytest.fail(str(e))
        try:
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=30)
