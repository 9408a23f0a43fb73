"""The server as a process: refuses to start without verified weights, users, the CLI, restarts."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from models.manifest import WEIGHTS_DIR, WeightsError
from models.preprocessing import box_of_mask
from models.sam import load_sam
from server.engine import Engine
from server.settings import Settings

BRANET = [sys.executable, "-m", "server.cli"]


def test_missing_classifier_weights_refuse_to_start_naming_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text((WEIGHTS_DIR / "manifest.json").read_text())
    with pytest.raises(WeightsError, match="weight file missing: .*classifier-"):
        Engine(Settings(weights=tmp_path, home=tmp_path / "home")).load()


def test_sam_checkpoint_is_verified(tmp_path):
    fake = tmp_path / "mobile_sam.pt"
    fake.write_bytes(b"not the checkpoint")
    with pytest.raises(WeightsError, match=f"mobilesam checkpoint {fake} has sha256"):
        load_sam("mobilesam", fake)
    with pytest.raises(WeightsError, match="checkpoint missing"):
        load_sam("mobilesam", tmp_path / "absent.pt")
    with pytest.raises(WeightsError, match="needs a checkpoint path"):
        load_sam("vit_b")
    with pytest.raises(WeightsError, match="unknown SAM model 'sam3'"):
        load_sam("sam3")


def test_cli_refuses_to_serve_without_a_manifest(tmp_path):
    res = subprocess.run(BRANET + ["serve", "--port", "8765"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "BRANET_WEIGHTS": str(tmp_path), "BRANET_HOME": str(tmp_path / "h")})
    assert res.returncode == 1 and f"weight manifest not found: {tmp_path}" in res.stderr


def test_users_add_prints_the_token_alone(tmp_path):
    env = {**os.environ, "BRANET_HOME": str(tmp_path)}
    res = subprocess.run(BRANET + ["users", "add", "alice", "--admin", "--no-password"], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0 and re.fullmatch(r"bn_[A-Za-z0-9_-]{40,}\n", res.stdout)
    again = subprocess.run(BRANET + ["users", "add", "alice", "--no-password"], capture_output=True, text=True,
                           env=env)
    assert again.returncode == 1 and "exists already" in again.stderr
    db = (tmp_path / "branet.sqlite3").read_bytes()
    assert res.stdout.strip().encode() not in db  # only the hash is stored


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, home, port):
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(BRANET + ["serve", "--port", str(port), "--log-level", "warning"],
                                     env={**os.environ, "BRANET_HOME": str(home)},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise TimeoutError("server did not become ready")

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=60)
        return err


@pytest.mark.slow
def test_served_process_analyses_from_the_cli_and_keeps_history_across_restarts(tmp_path, busi_dir):
    home, port = tmp_path / "home", _free_port()
    server = Server(home, port)
    err = server.stop()
    token = re.search(r"token \(shown once\): (bn_\S+)", err).group(1)  # first start: the dev user

    server = Server(home, port)
    image = busi_dir / "malignant" / "malignant (5).png"
    box = box_of_mask(np.asarray(Image.open(busi_dir / "malignant" / "malignant (5)_mask.png")) > 0)
    overlay = tmp_path / "overlay.png"
    res = subprocess.run(BRANET + ["analyze", str(image), "--modality", "us", "--box", *map(str, box),
                                   "--server", server.url, "--token", token, "--overlay", str(overlay)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "p(malignant)" in res.stdout and "Research use only. Not for clinical diagnosis." in res.stdout
    assert Image.open(overlay).size == Image.open(image).size
    bad = subprocess.run(BRANET + ["analyze", str(image), "--modality", "us", "--server", server.url,
                                   "--token", "bn_wrong"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "401" in bad.stderr
    assert "token (shown once)" not in server.stop()  # the dev user is created once

    server = Server(home, port)
    try:
        history = httpx.get(f"{server.url}/v1/analyses", headers={"Authorization": f"Bearer {token}"}).json()
        assert len(history["items"]) == 1
        analysis_id = history["items"][0]["id"]
        assert res.stdout.count(analysis_id) == 1
    finally:
        server.stop()
