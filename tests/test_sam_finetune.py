"""finetune-sam on real BUSI lesions: cross-fitted masks -> classifier on them -> served fine-tuned SAM."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.manifest import WEIGHTS_DIR, WeightsError, read_manifest
from models.sam import load_sam
from tests.test_train_classifier import run_training
from training.segmentation.outline import solidity
from training.segmentation.sam_finetune import frame_box, frame_mask


def test_solidity_tells_a_star_from_a_disc():
    yy, xx = np.mgrid[:101, :101] - 50.0
    disc = xx ** 2 + yy ** 2 <= 40 ** 2
    angle, radius = np.arctan2(yy, xx), np.hypot(xx, yy)
    star = radius <= 25 + 15 * np.cos(5 * angle)
    assert solidity(disc) > 0.95 and solidity(star) < 0.85
    assert np.isnan(solidity(np.zeros((8, 8), bool)))


def test_expert_mask_and_box_land_in_the_decoder_frame_together():
    mask = np.zeros((300, 600), bool)
    mask[60:120, 300:420] = True
    framed = frame_mask(mask, (128, 256))  # longest side 600 -> 256
    ys, xs = np.nonzero(framed)
    x0, y0, x1, y1 = frame_box((300, 60, 420, 120), (300, 600), (128, 256))[0].tolist()
    assert framed.shape == (256, 256) and not framed[128:].any()  # padded below the image
    assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1 and abs(ys.min() - y0) <= 1


@pytest.fixture(scope="module")
def finetuned(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sam-ft")
    run_training("finetune-sam", "--rois", str(data_dir / "busi"), "--modality", "us", "--limit", "3",
                 "--epochs", "1", "--folds", "2", "--out", str(out))
    return out


def test_cross_fitted_masks_report_and_final_decoder(finetuned):
    report = json.loads((finetuned / "report.json").read_text())
    rows = {r["masks"]: r for r in report["rows"]}
    assert set(rows) == {"expert", "litemedsam zero-shot", "litemedsam fine-tuned (out-of-fold)"}
    assert rows["expert"]["dice_mean"] == 1.0
    assert 0.3 < rows["litemedsam fine-tuned (out-of-fold)"]["dice_mean"] <= 1.0
    assert (finetuned / "outline.png").stat().st_size > 10_000
    oof = np.load(finetuned / "oof_masks.npz")
    assert len(oof["lesion_ids"]) == 6 and all(f"m{i}" in oof for i in range(6))
    assert json.loads((finetuned / "decoder.json").read_text())["base"] == "litemedsam"


def test_exported_decoder_is_verified_and_served(finetuned, data_dir, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(WEIGHTS_DIR, served)
    run_training("export", "--sam-decoder", str(finetuned), "--to", str(served))
    entry = read_manifest(served).sam_decoders["litemedsam-us"]
    sam = load_sam("litemedsam-us", weights_dir=served)
    state = load_file(str(served / entry.file))
    assert torch.equal(sam.model.mask_decoder.output_upscaling[0].weight, state["output_upscaling.0.weight"].float())
    base = load_sam("litemedsam")
    assert torch.equal(sam.model.image_encoder.neck[0].weight, base.model.image_encoder.neck[0].weight)
    assert not torch.equal(sam.model.mask_decoder.output_upscaling[0].weight,
                           base.model.mask_decoder.output_upscaling[0].weight)
    # A changed byte is caught by the sha256 before loading.
    blob = bytearray((served / entry.file).read_bytes())
    blob[-1] ^= 0xFF
    (served / entry.file).write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_sam("litemedsam-us", weights_dir=served)


def test_classifier_trains_on_the_cross_fitted_masks_and_routes_boxes_to_that_sam(finetuned, data_dir, tmp_path):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    out = tmp_path / "us-ft"
    run_training("train-classifier", "--served-as", "--rois", str(data_dir / "busi"), "--modality", "us", "--quick",
                 "--limit", "3", "--roi-source", "sam", "--mask-channel", "--sam", "litemedsam-us",
                 "--sam-masks", str(finetuned / "oof_masks.npz"), "--out", str(out))
    served = tmp_path / "served"
    shutil.copytree(WEIGHTS_DIR, served)
    run_training("export", "--from", str(out / "weights"), "--sam-decoder", str(finetuned), "--to", str(served))
    assert read_manifest(served).models["classifier-us"].input.sam == "litemedsam-us"
    app = create_app(Settings(home=tmp_path / "home", weights=served, create_dev_user=False))
    with TestClient(app) as client:
        token = app.state.users.add_user("t")[1]
        auth = {"Authorization": f"Bearer {token}"}
        routes = client.get("/v1/models", headers=auth).json()["routes"]
        image = data_dir / "busi" / "Dataset_BUSI_with_GT" / "malignant" / "malignant (7).png"
        res = client.post("/v1/analyses", files={"file": ("m.png", image.read_bytes())},
                          data={"modality": "us", "prompt": '{"box": [100, 60, 300, 220]}'}, headers=auth)
    assert routes["us"]["box"] == routes["us"]["mask"] == "litemedsam-us"
    assert routes["dm"]["box"] == "litemedsam" and routes["us"]["points"] == "mobilesam"
    assert res.status_code == 201, res.text
    assert res.json()["segmentation"]["sam_model"] == "litemedsam-us"


def test_masks_file_for_other_lesions_is_refused(finetuned, data_dir):
    from training.rois.prepare import prepared
    from training.rois.sources import SamViews
    from training.rois.splits import select
    records = select(prepared(data_dir / "busi"), "us", 4)  # 8 lesions; the file holds 6
    with pytest.raises(ValueError, match="holds no masks for these 8 lesions"):
        SamViews(records, masks_file=finetuned / "oof_masks.npz")
