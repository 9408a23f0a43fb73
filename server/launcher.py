"""`branet serve` as a child process on a free port, for what an in-process app cannot show: a socket, a
browser, a process that starts, is killed and starts again. The tests (tests/live_server.py) and the
benchmarks (bench/soak.py) start their servers with it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

BRANET = str(Path(sys.executable).with_name("branet"))  # the console script of this environment


class ServerDidNotStart(RuntimeError):
    """The server exited, or was not ready in time; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment with BRANET_HOME = `home` and no dev user, plus `extra`."""
    return {**os.environ, "BRANET_HOME": str(home), "BRANET_CREATE_DEV_USER": "false", **extra}


def branet(home: Path, *args: str, stdin: str | None = None) -> str:
    """Run the `branet` CLI on this home; its stdout."""
    return subprocess.run([BRANET, *args], input=stdin, env=server_env(home), check=True, capture_output=True,
                          text=True).stdout


def start(home: Path, port: int, env: dict[str, str], log: IO, timeout_s: float = 240,
          command: tuple[str, ...] = (BRANET,)) -> subprocess.Popen:
    """`branet serve` (or `command` + `serve`, e.g. a wrapper that instruments it) on 127.0.0.1:`port` with
    `env`, its output into `log`, once /readyz says ready (its models are loaded); ServerDidNotStart if it
    exits first or is not ready within `timeout_s`."""
    proc = subprocess.Popen([*command, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json().get("ready"):
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise ServerDidNotStart(f"server exited: {_tail(log)}")
        time.sleep(0.5)
    stop(proc)
    raise ServerDidNotStart(f"server not ready within {timeout_s:g} s: {_tail(log)}")


def stop(proc: subprocess.Popen | None, timeout_s: float = 60) -> None:
    """Terminate the server and wait for it; kill it if it does not go within `timeout_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _tail(log: IO) -> str:
    log.flush()
    return Path(log.name).read_text()[-2000:]
