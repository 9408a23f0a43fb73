"""The app end to end in Debian's chromium (playwright-core) against a real `branet serve` with the
real models and the web export in mobile/dist: mobile/e2e/app.e2e.mjs drives it (phone and tablet),
then /docs and /redoc; any request to a non-loopback address fails the run. Screenshots of every
step land in .cache/test-output/app-e2e/. `make test` builds the export and installs chromium first.
A second run is against a server with Firebase sign-in and the history in Firestore, on the real emulators
(tests/firebase_emulators.py): sign up through the Firebase JS SDK, analyse, history, delete, sign in again."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.preprocessing import box_of_mask
from server.launcher import branet
from tests.firebase_emulators import PROJECT, auth_emulator, firestore_emulator
from tests.live_server import live_server, require_app

ROOT = Path(__file__).resolve().parents[1]
MOBILE = ROOT / "mobile"
OUT = ROOT / ".cache" / "test-output" / "app-e2e"
PASSWORD = "correct horse 42"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_app()
    home = tmp_path_factory.mktemp("e2e-home")
    branet(home, "users", "add", "clinician", "--password-stdin", stdin=PASSWORD + "\n")
    with live_server(home, BRANET_APP_DIR=str(MOBILE / "dist")) as port:
        yield f"http://127.0.0.1:{port}", home


def e2e_env(busi_dir, tmp_path, base: str, username: str) -> dict:
    folder = busi_dir / "malignant"
    image = folder / "malignant (6).png"
    mask = np.asarray(Image.open(folder / "malignant (6)_mask.png").convert("L")) > 0
    width, height = Image.open(image).size
    big = tmp_path / "too-big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(10 * 1024 * 1024 + 1024))
    return {**os.environ, "BASE_URL": base, "USERNAME": username, "PASSWORD": PASSWORD, "IMAGE": str(image),
            "IMAGE_W": str(width), "IMAGE_H": str(height), "BOX": ",".join(str(int(v)) for v in box_of_mask(mask)),
            "BIG_FILE": str(big), "OUT": str(OUT)}


def test_the_app_in_a_real_browser(server, busi_dir, tmp_path):
    base, home = server
    env = e2e_env(busi_dir, tmp_path, base, "clinician")
    run = subprocess.run(["node", "e2e/app.e2e.mjs"], cwd=MOBILE, env=env, capture_output=True, text=True, timeout=900)
    print(run.stdout)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\nserver log:\n{(home / 'server.log').read_text()[-3000:]}"
    shots = sorted(p.name for p in OUT.glob("*.png"))
    assert {"phone-08-classified.png", "tablet-08-classified.png", "docs-swagger.png", "docs-redoc.png"} <= set(shots)


def test_the_app_with_firebase_sign_in_on_the_emulators(busi_dir, tmp_path):
    if not (MOBILE / "dist" / "index.html").exists():
        pytest.fail("mobile/dist is missing: run `make app` (make test does)")
    home = tmp_path / "home"
    home.mkdir()
    with firestore_emulator(tmp_path) as firestore, auth_emulator(tmp_path) as auth:
        server_env = {"BRANET_AUTH": "firebase", "BRANET_STORE": "firestore", "BRANET_FIREBASE_PROJECT_ID": PROJECT,
                      "BRANET_FIREBASE_EMULATORS": "true", "BRANET_FIREBASE_API_KEY": "fake-api-key",
                      "FIRESTORE_EMULATOR_HOST": firestore.host, "FIREBASE_AUTH_EMULATOR_HOST": auth.host,
                      "BRANET_APP_DIR": str(MOBILE / "dist")}
        with live_server(home, **server_env) as port:
            env = {**e2e_env(busi_dir, tmp_path, f"http://127.0.0.1:{port}", "clinician@example.com"),
                   "AUTH": "firebase"}
            run = subprocess.run(["node", "e2e/app.e2e.mjs"], cwd=MOBILE, env=env, capture_output=True, text=True,
                                 timeout=600)
            print(run.stdout)
            assert run.returncode == 0, (f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\nserver log:\n"
                                         f"{(home / 'server.log').read_text()[-3000:]}\nauth emulator:\n{auth.tail()}")
    assert (OUT / "firebase-phone-14-signed-in-again.png").exists()


def test_the_app_types_match_the_server_api():
    """The app's OpenAPI copy (its types are generated from it) is the server's: they cannot drift."""
    run = subprocess.run([sys.executable, str(MOBILE / "scripts" / "openapi.py"), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
