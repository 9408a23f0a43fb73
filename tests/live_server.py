"""A real `branet serve` in its own process (a fresh BRANET_HOME, a free port), for the tests that need
what an in-process TestClient cannot show: a browser, a socket, a process that starts and stops."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from server.launcher import ServerDidNotStart, free_port, server_env, start


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
