"""`branet serve` as a child process on a free port, for what an in-process app cannot show: a socket, a
browser, a process that starts, is killed and starts again; and a second US model version to deploy on it.
The tests (tests/live_server.py, tests/test_admin_models.py) and the benchmarks (bench/soak.py, serve.py,
swap.py) use it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable

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


def spawn(port: int, env: dict[str, str], log: IO, command: tuple[str, ...] = (BRANET,)) -> subprocess.Popen:
    """`branet serve` (or `command` + `serve`, e.g. a wrapper that instruments it) on 127.0.0.1:`port` with
    `env`, its output into `log`; not waited for (`wait_ready`), so that several can start together."""
    return subprocess.Popen([*command, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(proc: subprocess.Popen, port: int, log: IO, timeout_s: float = 240) -> None:
    """Until /readyz says ready (the models are loaded); ServerDidNotStart (the server stopped) if it exits
    first or is not ready within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json().get("ready"):
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise ServerDidNotStart(f"server exited: {_tail(log)}")
        time.sleep(0.25)
    stop(proc)
    raise ServerDidNotStart(f"server not ready within {timeout_s:g} s: {_tail(log)}")


def start(port: int, env: dict[str, str], log: IO, timeout_s: float = 240,
          command: tuple[str, ...] = (BRANET,)) -> subprocess.Popen:
    """`spawn`, then `wait_ready`."""
    proc = spawn(port, env, log, command)
    wait_ready(proc, port, log, timeout_s)
    return proc


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


def us_classifier_variant(out: Path, change: Callable, weights: Path | None = None) -> Path:
    """A folder as `python -m training export` writes it, in `out`: the committed classifier-us with
    `change(model)` applied under no_grad (e.g. its last layer scaled: another sha256, still a working model),
    its SAM probe, and the manifest holding that one entry."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from models.classifier import build_classifier
    from models.manifest import WEIGHTS_DIR, read_manifest, save_classifier
    weights = Path(weights or WEIGHTS_DIR)
    manifest = read_manifest(weights)
    entry = manifest.models["classifier-us"]
    model = build_classifier(in_channels=entry.input.channels, num_classes=2, members=entry.members)
    model.load_state_dict({k: v.float() for k, v in load_file(str(weights / entry.file)).items()})
    with torch.no_grad():
        change(model)
    out.mkdir(parents=True, exist_ok=True)
    sha = save_classifier(model, out / entry.file)
    shutil.copyfile(weights / entry.sam_probe.file, out / entry.sam_probe.file)
    manifest.models = {"classifier-us": entry.model_copy(update={"sha256": sha})}
    manifest.localisers = {}
    (out / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return out
