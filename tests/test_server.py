"""The server starts only with verified weights and says what it serves."""
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from models.manifest import WEIGHTS_DIR, WeightsError
from server.registry import Registry


def test_served_weights_load_and_are_described():
    import server.app as app_module
    with TestClient(app_module.app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"ready": True, "models": ["dm", "us"]}
        body = client.get("/v1/models").json()
    assert body["notice"] == "Research use only. Not for clinical diagnosis."
    by_modality = {c["modality"]: c for c in body["classifiers"]}
    assert by_modality["us"]["name"] == "classifier-us" and len(by_modality["us"]["sha256"]) == 64
    assert 0 < by_modality["us"]["threshold"] < 1


def test_missing_weights_refuse_to_start_naming_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text((WEIGHTS_DIR / "manifest.json").read_text())
    with pytest.raises(WeightsError, match="weight file missing: .*classifier-"):
        Registry(weights_dir=tmp_path).load()


def test_cli_refuses_to_serve_without_a_manifest(tmp_path):
    res = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--port", "8765"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "BRANET_WEIGHTS": str(tmp_path)})
    assert res.returncode == 1 and f"weight manifest not found: {tmp_path}" in res.stderr
