"""A real `branet serve` in its own process (a fresh BRANET_HOME, a free port), for the tests that need
what an in-process TestClient cannot show: a browser, a socket, a process that starts and stops."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

BRANET = str(Path(sys.executable).with_name("branet"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "BRANET_HOME": str(home), "BRANET_CREATE_DEV_USER": "false", **extra}


def branet(home: Path, *args: str, stdin: str | None = None) -> str:
    """Run the `branet` CLI on this home; its stdout."""
    return subprocess.run([BRANET, *args], input=stdin, env=server_env(home), check=True, capture_output=True,
                          text=True).stdout


@contextmanager
def live_server(home: Path, **env: str) -> Iterator[int]:
    """`branet serve` on a free port until its models are loaded; yields the port. Its log: home/server.log."""
    port = free_port()
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([BRANET, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            env=server_env(home, **env), stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(240):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json().get("ready"):
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"server exited: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
