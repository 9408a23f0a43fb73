"""Automatic lesion finding (issue 24): `{}` runs the committed lesion localiser (models/localiser.py) on the box
route's embedding and outlines its best box with the box route's SAM; no lesion is a 422 with the score; the
paper's generator stays available as `{"auto": "sam-amg"}`. Real weights, real BUSI images, real servers."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import sqlite3
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from models.manifest import WeightsError, read_manifest, write_manifest
from server.engine import Engine
from server.launcher import BRANET, branet
from server.settings import Settings
from tests.live_server import live_server

# Single lesions of BUSI (benign and malignant, a few sizes): the mean Dice of the automatic outlines against the
# expert masks (a miss counts 0) must exceed LESION_DICE (a randomly initialised localiser scored below it here), and
# every answer must keep the contract.
LESIONS = ("benign (3)", "malignant (1)", "malignant (5)")
LESION_DICE = 0.5
LESION = LESIONS[0]  # for the CLI
NORMALS = ("normal (1)", "normal (2)")  # normal images: no_lesion_found with its score, or a result (contract)
NORMAL_EMPTY = NORMALS[0]
BOUND_S = 60.0  # an automatic answer on this shared 2-core CPU, with a training job beside it


WEIGHTS = Settings().weights  # what the servers here serve: the committed models/weights (BRANET_WEIGHTS)


def busi_case(busi_dir, name: str) -> tuple[bytes, np.ndarray | None]:
    folder = busi_dir / name.split(" ")[0]
    mask_path = folder / f"{name}_mask.png"
    mask = np.asarray(Image.open(mask_path).convert("L")) > 0 if mask_path.is_file() else None
    return (folder / f"{name}.png").read_bytes(), mask


def png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def mask_of(segmentation: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(segmentation["mask_png"])))) > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def stored(api) -> tuple[int, int, int]:
    db = sqlite3.connect(api.home / "branet.sqlite3")
    counts = [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("images", "analyses")]
    db.close()
    return counts[0], counts[1], len(list((api.home / "images").glob("*/*")))


def analyze(api, headers, data: bytes, prompt: dict | None = None, modality: str = "us"):
    form = {"modality": modality} | ({"prompt": json.dumps(prompt)} if prompt is not None else {})
    return api.post("/v1/analyses", files={"file": ("scan.png", data)}, data=form, headers=headers)


@pytest.fixture(scope="module")
def served(api, alice) -> dict:
    """GET /v1/models: the committed localiser-us must be served (the committed weights hold it)."""
    return api.get("/v1/models", headers=alice).json()


@pytest.fixture(scope="module")
def localiser(served) -> dict:
    found = {entry["modality"]: entry for entry in served["localisers"]}
    assert "us" in found, f"no US localiser served: {served['localisers']}"
    return found["us"]


def test_the_committed_localiser_is_served_on_the_box_routes_sam(served, localiser):
    entry = read_manifest(WEIGHTS).localisers["localiser-us"]
    assert localiser["sha256"] == entry.sha256 and localiser["name"] == entry.name
    assert localiser["sam"] == served["routes"]["us"]["box"] == "litemedsam"
    assert 0 < localiser["threshold"] < 1 and localiser["threshold"] == entry.threshold
    assert localiser["id"] == "localiser-us-v1"
    assert [v["id"] for v in served["versions"]["localiser-us"]] == ["localiser-us-v1"]


def check_found(seg: dict, localiser: dict) -> None:
    """The contract of a localiser result: auto, ranked candidates at or above the threshold, the first outlined."""
    assert seg["prompt"] == "auto" and seg["auto_mode"] == "localiser" and seg["sam_model"] == localiser["sam"]
    scores = [c["score"] for c in seg["candidates"]]
    assert scores == sorted(scores, reverse=True) and len(scores) >= 1
    assert all(s >= localiser["threshold"] for s in scores)
    assert seg["lesion_score"] == scores[0] and seg["lesion_threshold"] == localiser["threshold"]
    # The outline is SAM's answer to the first candidate's box: its centre lies in that box.
    x0, y0, x1, y1 = seg["candidates"][0]["box"]
    ys, xs = np.nonzero(mask_of(seg))
    assert x0 <= xs.mean() < x1 and y0 <= ys.mean() < y1
    assert seg["timings_ms"]["locate"] > 0 and "decode" in seg["timings_ms"]


def check_not_found(error: dict, localiser: dict) -> None:
    assert error["code"] == "no_lesion_found"
    assert error["threshold"] == localiser["threshold"] and 0 <= error["score"] < error["threshold"]
    assert f"score {error['score']:.2f} < {error['threshold']:.2f}" in error["message"]
    assert "draw a box" in error["message"]


def test_empty_prompt_finds_and_outlines_real_lesions(api, alice, busi_dir, localiser):
    dices = {}
    for name in LESIONS:
        data, truth = busi_case(busi_dir, name)
        image = api.post("/v1/images", files={"file": ("b.png", data)}, data={"modality": "us"}, headers=alice).json()
        before = stored(api)
        res = api.post("/v1/analyses", json={"image_id": image["image_id"], "prompt": {}}, headers=alice)
        if res.status_code == 422:  # a missed lesion: an honest answer, Dice 0
            check_not_found(res.json()["error"], localiser)
            assert stored(api) == before
            dices[name] = 0.0
            continue
        assert res.status_code == 201, res.text
        result = res.json()
        seg = result["segmentation"]
        check_found(seg, localiser)
        # The upload computed the box route's embedding: the automatic analysis did not encode again.
        assert seg["timings_ms"]["encode"] == 0.0
        assert result["models"]["localiser"] == {"name": localiser["name"], "sha256": localiser["sha256"],
                                                 "version": localiser["sha256"][:12], "id": localiser["id"]}
        assert api.get(f"/v1/analyses/{result['id']}", headers=alice).json() == result
        # The segment route answers the same automatic outline.
        again = api.post(f"/v1/images/{image['image_id']}/segment", json={"prompt": {"auto": "localiser"}},
                         headers=alice)
        assert again.status_code == 200, again.text
        assert again.json()["candidates"] == seg["candidates"] and again.json()["box"] == seg["box"]
        dices[name] = dice(mask_of(seg), truth)
    print(f"Dice with the expert masks (a miss 0): {dices}")
    assert sum(dices.values()) / len(dices) > LESION_DICE, dices


def test_normal_images_answer_with_their_score_either_way(api, alice, busi_dir, localiser):
    for name in NORMALS:
        data, _ = busi_case(busi_dir, name)
        before = stored(api)
        res = analyze(api, alice, data, {})
        if res.status_code == 422:
            check_not_found(res.json()["error"], localiser)
            assert stored(api) == before  # neither the image nor an analysis
        else:  # a false "lesion found": the result says how sure it was, against the threshold
            assert res.status_code == 201, res.text
            check_found(res.json()["segmentation"], localiser)
            assert stored(api)[:2] == (before[0] + 1, before[1] + 1)


def test_no_lesion_found_carries_the_score_and_stores_nothing(tmp_path, busi_dir):
    """The committed localiser served with its threshold raised to 1 (nothing reaches it): every automatic answer
    is no_lesion_found, on both routes, with the image's real best score."""
    from fastapi.testclient import TestClient

    from server.app import create_app

    def unreachable(manifest, _):
        entry = manifest.localisers["localiser-us"]
        manifest.localisers["localiser-us"] = entry.model_copy(update={"threshold": 1.0})
    settings = _weights_copy(tmp_path, unreachable).model_copy(update={"create_dev_user": False})
    data, _ = busi_case(busi_dir, LESION)
    with TestClient(create_app(settings)) as api:
        api.home = settings.home
        headers = {"Authorization": f"Bearer {api.app.state.users.add_user('dora')[1]}"}
        (served,) = api.get("/v1/models", headers=headers).json()["localisers"]
        assert served["threshold"] == 1.0
        before = stored(api)
        res = analyze(api, headers, data, {})
        assert res.status_code == 422, res.text
        error = res.json()["error"]
        check_not_found(error, served)
        assert stored(api) == before
        image = api.post("/v1/images", files={"file": ("n.png", data)}, data={"modality": "us"}, headers=headers).json()
        seg = api.post(f"/v1/images/{image['image_id']}/segment", json={"prompt": {}}, headers=headers)
        assert seg.status_code == 422 and seg.json()["error"] == error


BAD = {
    "unknown mode": ({"auto": "x"}, "auto"),
    "auto with a box": ({"auto": "localiser", "box": [10, 10, 60, 60]}, "give it without box"),
    "auto with points": ({"auto": "sam-amg", "points": [[20, 20, 1]]}, "give it without points"),
    "auto null with a box and points": ({"box": [1, 1, 9, 9], "points": [[5, 5, 1]]}, "not box and points"),
}


@pytest.fixture(scope="module")
def normal_image(api, alice, busi_dir) -> dict:
    data, _ = busi_case(busi_dir, NORMAL_EMPTY)
    res = api.post("/v1/images", files={"file": ("n.png", data)}, data={"modality": "us"}, headers=alice)
    assert res.status_code == 201, res.text
    return res.json()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_automatic_prompts_are_invalid_prompt(api, alice, busi_dir, normal_image, case):
    prompt, message = BAD[case]
    before = stored(api)
    multipart = analyze(api, alice, busi_case(busi_dir, NORMAL_EMPTY)[0], prompt)
    stored_json = api.post("/v1/analyses", json={"image_id": normal_image["image_id"], "prompt": prompt}, headers=alice)
    segment = api.post(f"/v1/images/{normal_image['image_id']}/segment", json={"prompt": prompt}, headers=alice)
    for res in (multipart, stored_json, segment):
        assert res.status_code == 422, res.text
        assert res.json()["error"]["code"] == "invalid_prompt" and message in res.json()["error"]["message"], res.text
    assert stored(api) == before


def test_a_modality_without_a_localiser_keeps_the_generator(api, alice, served, mias_dir):
    data = png_of(Image.open(mias_dir / "all-mias" / "mdb001.png").convert("L").resize((128, 128)))
    if any(entry["modality"] == "dm" for entry in served["localisers"]):  # then `{}` on DM is the localiser
        res = analyze(api, alice, data, {}, modality="dm")
        assert res.status_code == 201 or res.json()["error"]["code"] == "no_lesion_found", res.text
        assert res.status_code != 201 or res.json()["segmentation"]["auto_mode"] == "localiser"
        return
    res = analyze(api, alice, data, {"auto": "localiser"}, modality="dm")
    assert res.status_code == 422, res.text
    error = res.json()["error"]
    assert error["code"] == "invalid_prompt" and "dm images" in error["message"] and "score" not in error
    # `{}` on DM: the paper's generator, as before (4x4 grid in these tests)
    res = api.post("/v1/images", files={"file": ("m.png", data)}, data={"modality": "dm"}, headers=alice).json()
    seg = api.post(f"/v1/images/{res['image_id']}/segment", json={"prompt": {}}, headers=alice)
    assert seg.status_code == 200 or seg.json()["error"]["code"] == "no_lesion_found", seg.text
    assert seg.status_code != 200 or (seg.json()["auto_mode"] == "sam-amg" and seg.json()["sam_model"] == "mobilesam")


@pytest.mark.parametrize("size", [(512, 400), (16, 16)])
def test_blank_and_tiny_images_answer_in_bounded_time_without_5xx(api, alice, size, localiser):
    before = stored(api)
    start = time.perf_counter()
    res = analyze(api, alice, png_of(Image.new("L", size)), {})
    seconds = time.perf_counter() - start
    assert seconds < BOUND_S and res.status_code in (201, 422), res.text
    if res.status_code == 422:
        error = res.json()["error"]
        assert error["code"] == "no_lesion_found", error
        assert 0 <= error["score"] < error["threshold"] == localiser["threshold"]
        assert stored(api) == before
    else:  # a result: the localiser's contract holds
        seg = res.json()["segmentation"]
        assert seg["auto_mode"] == "localiser" and seg["candidates"][0]["score"] >= localiser["threshold"]
    # A tiny image that is not blank: a found lesion or no_lesion_found, never a 5xx.
    speckle = np.random.default_rng(0).integers(0, 255, size[::-1], dtype=np.uint8)
    res = analyze(api, alice, png_of(Image.fromarray(speckle)), {})
    assert res.status_code in (201, 422), res.text
    assert res.status_code == 201 or res.json()["error"]["code"] == "no_lesion_found"


def test_sam_amg_is_still_the_papers_generator_by_name(api, alice, busi_dir):
    # tests/test_api.py checks its outline on a lesion; here the segment route, on a small normal image.
    data, _ = busi_case(busi_dir, NORMAL_EMPTY)
    small = png_of(Image.open(io.BytesIO(data)).convert("L").resize((160, 120)))
    image = api.post("/v1/images", files={"file": ("s.png", small)}, data={"modality": "us"}, headers=alice).json()
    res = api.post(f"/v1/images/{image['image_id']}/segment", json={"prompt": {"auto": "sam-amg"}}, headers=alice)
    assert res.status_code in (200, 422), res.text
    if res.status_code == 200:
        body = res.json()
        assert body["auto_mode"] == "sam-amg" and body["sam_model"] == "mobilesam" and body["candidates"] is None
        assert "auto_segment" in body["timings_ms"] and "locate" not in body["timings_ms"]
    else:  # the generator's own no-lesion answer carries no localiser score
        error = res.json()["error"]
        assert error["code"] == "no_lesion_found" and "score" not in error


def _weights_copy(tmp_path, change) -> Settings:
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS, weights)
    manifest = read_manifest(weights)
    change(manifest, weights)
    write_manifest(manifest, weights)
    return Settings(weights=weights, home=tmp_path / "home")


def test_a_localiser_not_on_the_box_routes_sam_refuses_to_start(tmp_path):
    def elsewhere(manifest, _):
        entry = manifest.localisers["localiser-us"]
        manifest.localisers["localiser-us"] = entry.model_copy(update={"sam": "mobilesam"})
    with pytest.raises(WeightsError, match="localiser localiser-us .* reads mobilesam's embedding .* box route is "
                                           "litemedsam"):
        Engine(_weights_copy(tmp_path, elsewhere)).load()


def test_a_corrupt_localiser_file_refuses_to_start_naming_it(tmp_path):
    def corrupt(manifest, weights):
        path = weights / manifest.localisers["localiser-us"].file
        data = bytearray(path.read_bytes())
        data[-100] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"sha256 mismatch for .*/weights/localiser-us\.safetensors"):
        Engine(_weights_copy(tmp_path, corrupt)).load()


def test_cli_analyze_without_a_box_prints_the_candidates_or_no_lesion_honestly(tmp_path, busi_dir):
    home = tmp_path / "home"
    home.mkdir()
    token = branet(home, "users", "add", "carol", "--no-password").strip()
    name = read_manifest(WEIGHTS).localisers["localiser-us"].name
    with live_server(home) as port:
        url = f"http://127.0.0.1:{port}"
        for path in (busi_dir / "benign" / f"{LESION}.png", busi_dir / "normal" / f"{NORMAL_EMPTY}.png"):
            out = subprocess.run([BRANET, "analyze", str(path), "--modality", "us", "--server", url, "--token", token,
                                  "--overlay", str(tmp_path / "o.png")], capture_output=True, text=True, timeout=300)
            if out.returncode == 0:  # found: the ranked candidates, then the result
                assert f"found automatically by {name}" in out.stdout and "  1. box [" in out.stdout, out.stdout
                assert "p(malignant)" in out.stdout and (tmp_path / "o.png").is_file()
                (tmp_path / "o.png").unlink()
            else:  # not found: the score against the threshold, exit status 3, no overlay
                assert out.returncode == 3, out.stderr
                said = re.fullmatch(r"no lesion found: best score (\d\.\d\d) < threshold (\d\.\d\d); give --box X0 Y0 "
                                    r"X1 Y1 if you see one\n", out.stdout)
                assert said and float(said[1]) < float(said[2]), out.stdout
                assert not (tmp_path / "o.png").exists()
