"""Automatic lesion finding in the app, end to end (issue 24): a real `branet serve` with the real
committed weights, its lesion localiser included, and the web export in mobile/dist; Debian's chromium
(playwright-core) runs mobile/e2e/auto.e2e.mjs. Before the browser starts, the test asks the API itself
what the served localiser says about BUSI images and picks two (a lesion image with several
candidates where it has one, a normal image with no lesion found: see LESION_IMAGES and NORMAL_IMAGES),
and hands the API's answers to the browser run, which checks that the app shows exactly them: "found automatically" with the localiser's score and
threshold, the numbered candidate boxes, another candidate analysed on the same stored image, and
"no lesion found" with its score and one tap to draw a box. Afterwards the history, read through the
API, holds what the browser did. Screenshots: .cache/test-output/app-e2e/auto-*.png."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image

from server.launcher import branet
from tests.live_server import live_server, require_app

ROOT = Path(__file__).resolve().parents[1]
MOBILE = ROOT / "mobile"
OUT = ROOT / ".cache" / "test-output" / "app-e2e"
PASSWORD = "correct horse 42"
# The images are chosen by asking the served localiser, in this order: the first lesion image on which it
# ranks more than one candidate (else the first where it finds the lesion), the first normal image on which
# it finds no lesion. Whatever is chosen, the browser must show exactly what the API answered for it.
LESION_IMAGES = [f"malignant/malignant ({i}).png" for i in (6, 1, 2, 3, 4, 5)] + [f"benign/benign ({i}).png" for i in (1, 2, 3, 4)]
NORMAL_IMAGES = [f"normal/normal ({i}).png" for i in range(1, 13)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_app()
    home = tmp_path_factory.mktemp("auto-e2e-home")
    token = branet(home, "users", "add", "clinician", "--password-stdin", stdin=PASSWORD + "\n").strip().splitlines()[-1]
    with live_server(home, BRANET_APP_DIR=str(MOBILE / "dist")) as port:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as api:
            yield base, home, api


def score_pair(score: float, threshold: float) -> tuple[str, str]:
    """A score and its threshold as the app writes them (mobile/src/api/auto.ts scorePair): two decimals,
    more when two would show them as equal."""
    for digits in (2, 3):
        pair = f"{score:.{digits}f}", f"{threshold:.{digits}f}"
        if pair[0] != pair[1]:
            return pair
    return f"{score:.4f}", f"{threshold:.4f}"


def automatic(api: httpx.Client, path: Path) -> httpx.Response:
    """What the server answers to an upload of `path` analysed with the automatic prompt `{}`."""
    up = api.post("/v1/images", files={"file": (path.name, path.read_bytes(), "image/png")}, data={"modality": "us"})
    assert up.status_code in (200, 201), up.text
    return api.post("/v1/analyses", json={"image_id": up.json()["image_id"], "prompt": {}})


def test_automatic_lesion_finding_in_a_real_browser(server, busi_dir):
    base, home, api = server
    localisers = api.get("/v1/models").json().get("localisers", [])
    assert any(loc["modality"] == "us" for loc in localisers), f"no ultrasound lesion localiser is served: {localisers}"

    # what the served localiser says, straight from the API
    answers = {}
    for name in LESION_IMAGES:
        answer = automatic(api, busi_dir / name)
        answers[name] = answer
        if answer.status_code == 201:
            api.delete(f"/v1/analyses/{answer.json()['id']}")
            if len(answer.json()["segmentation"]["candidates"] or []) >= 2:
                break
    found_names = [n for n, a in answers.items() if a.status_code == 201]
    assert found_names, f"the localiser found no lesion on any of {LESION_IMAGES}: {[a.text[:200] for a in answers.values()]}"
    several = [n for n in found_names if len(answers[n].json()["segmentation"]["candidates"] or []) >= 2]
    lesion_name = (several or found_names)[0]
    lesion, found = busi_dir / lesion_name, answers[lesion_name]
    seg = found.json()["segmentation"]
    assert seg["prompt"] == "auto" and seg["auto_mode"] == "localiser", seg
    candidates = seg["candidates"]
    assert candidates and seg["lesion_score"] >= seg["lesion_threshold"], seg
    print(f"lesion image {lesion_name}: {len(candidates)} candidate(s), score {seg['lesion_score']:.3f} "
          f"(threshold {seg['lesion_threshold']:.3f})")

    for name in NORMAL_IMAGES:
        none = automatic(api, busi_dir / name)
        if none.status_code == 422:
            break
        if none.status_code == 201:
            api.delete(f"/v1/analyses/{none.json()['id']}")
    assert none.status_code == 422, f"the localiser found a lesion on every one of {NORMAL_IMAGES}"
    normal = busi_dir / name
    error = none.json()["error"]
    assert error["code"] == "no_lesion_found" and error["score"] < error["threshold"], error
    print(f"normal image {name}: no lesion found, score {error['score']:.3f} (threshold {error['threshold']:.3f})")
    score, threshold = score_pair(error["score"], error["threshold"])
    message = f"No lesion found automatically — score {score}, needs {threshold}. If you see one, draw a box around it."

    env = {**os.environ, "BASE_URL": base, "USERNAME": "clinician", "PASSWORD": PASSWORD, "OUT": str(OUT),
           "LESION_IMAGE": str(lesion), "LESION_W": str(Image.open(lesion).width),
           "FINDER_NAME": found.json()["models"]["localiser"]["name"],
           "LESION_SCORE": str(seg["lesion_score"]), "LESION_THRESHOLD": str(seg["lesion_threshold"]),
           "LESION_CANDIDATES": json.dumps([[*c["box"], c["score"]] for c in candidates]),
           "NORMAL_IMAGE": str(normal), "NO_LESION_MESSAGE": message, "VIEWPORT": "phone"}
    run = subprocess.run(["node", "e2e/auto.e2e.mjs"], cwd=MOBILE, env=env, capture_output=True, text=True, timeout=600)
    print(run.stdout)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\nserver log:\n{(home / 'server.log').read_text()[-3000:]}"

    # the history holds what the browser did: the automatic analysis, and candidate 2 analysed as a box
    # of the same stored image; the image with no lesion stored no analysis
    items = api.get("/v1/analyses", params={"limit": 50}).json()["items"]
    analyses = [api.get(f"/v1/analyses/{item['id']}").json() for item in items]
    auto = [a for a in analyses if a["segmentation"]["prompt"] == "auto"]
    boxes = [a for a in analyses if a["segmentation"]["prompt"] == "box"]
    assert len(auto) == 1 and len(boxes) == 1 and len(analyses) == 2, [a["segmentation"]["prompt"] for a in analyses]
    assert boxes[0]["image_id"] == auto[0]["image_id"]
    assert auto[0]["segmentation"]["candidates"] == candidates
    assert (OUT / "auto-phone-08-draw-a-box-instead.png").exists()
