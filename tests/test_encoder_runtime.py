"""The SAM image encoders on an inference runtime (models/encoder_runtime.py, issue 28): the same
numbers as PyTorch on real BUSI images, refusal of a changed exported file, and the settings."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from models.encoder_runtime import ENCODERS_DIR, RECORD, EncoderSettingError, choose, load_decoder, load_encoder
from models.manifest import WeightsError
from models.sam import load_sam
from models.segmentation import Prompt, SamSegmenter

STAGES = ("layer0", "layer1", "layer2", "layer3")
IMAGES = ("benign/benign (4).png", "malignant/malignant (2).png")


@pytest.fixture(scope="module")
def litemedsam():
    return load_sam("litemedsam")


def _image_and_box(busi_dir, rel):
    rgb = np.asarray(Image.open(busi_dir / rel).convert("RGB"))
    ys, xs = np.nonzero(np.asarray(Image.open(busi_dir / rel.replace(".png", "_mask.png")).convert("L")))
    return rgb, [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def torch_path(litemedsam):
    return SamSegmenter(litemedsam, stages=STAGES, runtime="torch")


@pytest.fixture(scope="module")
def references(torch_path, busi_dir):
    return {rel: torch_path.encode(_image_and_box(busi_dir, rel)[0]) for rel in IMAGES}


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_the_runtime_gives_pytorchs_embedding_stages_and_masks(litemedsam, torch_path, references, busi_dir, runtime):
    on_runtime = SamSegmenter(litemedsam, stages=STAGES, runtime=runtime)
    assert on_runtime.encoder is not None and torch_path.encoder is None
    assert on_runtime.decoder is not None and torch_path.decoder is None
    for rel in IMAGES:
        rgb, box = _image_and_box(busi_dir, rel)
        ref, got = references[rel], on_runtime.encode(rgb)
        assert (got.runtime, got.precision, ref.runtime) == (runtime, "f32", "torch")
        assert (got.original_size, got.input_size) == (ref.original_size, ref.input_size)
        assert got.features.shape == ref.features.shape == (1, 256, 64, 64)
        torch.testing.assert_close(got.features, ref.features, atol=1e-3, rtol=1e-3)
        assert set(got.stages) == set(ref.stages) == set(STAGES)
        for name in STAGES:
            assert got.stages[name].shape == ref.stages[name].shape
            torch.testing.assert_close(got.stages[name], ref.stages[name], atol=1e-3, rtol=1e-3)
        prompt = Prompt(box=box)
        assert _dice(on_runtime.predict(got, prompt).mask, torch_path.predict(ref, prompt).mask) >= 0.99
        # the decoder alone, on PyTorch's embedding: points, a negative point with a box
        x0, y0, x1, y1 = box
        centre = [(x0 + x1) / 2, (y0 + y1) / 2]
        for prompt in (Prompt(box=box), Prompt(points=[[*centre, 1], [x0 + 2, y0 + 2, 0]]),
                       Prompt(points=[[*centre, 1]])):
            a, b = on_runtime.predict(ref, prompt), torch_path.predict(ref, prompt)
            assert _dice(a.mask, b.mask) >= 0.999 and abs(a.score - b.score) < 1e-3
        # the probe's IoU token still comes from PyTorch's decoder head
        np.testing.assert_allclose(on_runtime.iou_token(ref, box), torch_path.iou_token(ref, box), atol=1e-5)


def test_mobilesam_on_the_runtime_answers_points_like_pytorch(busi_dir):
    sam = load_sam("mobilesam")
    rgb, (x0, y0, x1, y1) = _image_and_box(busi_dir, IMAGES[0])
    prompt = Prompt(points=[[(x0 + x1) / 2, (y0 + y1) / 2, 1]])
    torch_path, on_runtime = SamSegmenter(sam, runtime="torch"), SamSegmenter(sam, runtime="openvino")
    ref, got = torch_path.encode(rgb), on_runtime.encode(rgb)
    torch.testing.assert_close(got.features, ref.features, atol=1e-3, rtol=1e-3)
    assert _dice(on_runtime.predict(got, prompt).mask, torch_path.predict(ref, prompt).mask) >= 0.99


def test_the_runtime_keeps_torchs_thread_count(litemedsam):
    encoder = SamSegmenter(litemedsam, runtime="openvino").encoder
    x = torch.zeros(1, 3, 256, 256)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        encoder(x)
        assert encoder.threads == 1
    finally:
        torch.set_num_threads(before)
    encoder(x)
    assert encoder.threads == before


@pytest.fixture
def copied_encoders(tmp_path):
    for path in ENCODERS_DIR.iterdir():
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def _flip_a_byte(path):
    with open(path, "r+b") as f:
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 1]))


def test_a_changed_exported_encoder_refuses_to_start(litemedsam, copied_encoders):
    assert load_encoder(litemedsam, "openvino", "f32", copied_encoders) is not None
    _flip_a_byte(copied_encoders / "litemedsam.onnx")
    with pytest.raises(WeightsError, match=r"changed.*run `make install`"):
        load_encoder(litemedsam, "openvino", "f32", copied_encoders)


def test_a_changed_exported_decoder_refuses_to_start(litemedsam, copied_encoders):
    assert load_decoder(litemedsam, "onnxruntime", copied_encoders) is not None
    assert load_decoder(litemedsam, "torch", copied_encoders) is None
    _flip_a_byte(copied_encoders / "litemedsam-decoder.onnx")
    with pytest.raises(WeightsError, match=r"changed.*run `make install`"):
        load_decoder(litemedsam, "openvino", copied_encoders)


def test_an_encoder_exported_from_another_checkpoint_or_missing_refuses(litemedsam, copied_encoders):
    record = json.loads((copied_encoders / RECORD).read_text())
    record["litemedsam"]["checkpoint_sha256"] = "0" * 64
    (copied_encoders / RECORD).write_text(json.dumps(record))
    with pytest.raises(WeightsError, match=r"exported from checkpoint 000000000000.*run `make install`"):
        load_encoder(litemedsam, "onnxruntime", "f32", copied_encoders)
    (copied_encoders / "litemedsam.onnx").unlink()
    with pytest.raises(WeightsError, match=r"missing.*run `make install`"):
        load_encoder(litemedsam, "openvino", "f32", copied_encoders)


def test_the_runtime_setting_refuses_a_value_it_does_not_offer(litemedsam, monkeypatch):
    monkeypatch.setenv("BRANET_ENCODER_RUNTIME", "tensorrt")
    with pytest.raises(EncoderSettingError, match=r"BRANET_ENCODER_RUNTIME='tensorrt'.*openvino, onnxruntime, torch"):
        SamSegmenter(litemedsam)
    monkeypatch.setenv("BRANET_ENCODER_RUNTIME", "onnxruntime")
    monkeypatch.setenv("BRANET_ENCODER_PRECISION", "bf16")
    with pytest.raises(EncoderSettingError, match=r"bf16 is not offered on onnxruntime"):
        SamSegmenter(litemedsam)
    monkeypatch.setenv("BRANET_ENCODER_PRECISION", "int4")
    with pytest.raises(EncoderSettingError, match=r"BRANET_ENCODER_PRECISION='int4'"):
        choose("cpu")


def test_the_server_setting_is_checked_and_the_defaults_follow_the_device(monkeypatch):
    from pydantic import ValidationError

    from server.settings import Settings
    with pytest.raises(ValidationError, match="encoder_runtime"):
        Settings(encoder_runtime="tensorrt")
    monkeypatch.delenv("BRANET_ENCODER_RUNTIME", raising=False)
    monkeypatch.delenv("BRANET_ENCODER_PRECISION", raising=False)
    assert choose("cuda") == ("torch", "f32")
    assert choose("cpu") == ("openvino", "f32")  # the install check passed on this machine


def test_the_server_names_the_encoder_runtime_in_models_and_in_each_result(api, alice, busi_dir):
    record = json.loads((ENCODERS_DIR / RECORD).read_text())
    engine = api.services.engine
    served = api.get("/v1/models", headers=alice).json()
    assert served["sam"]
    for sam in served["sam"]:
        assert (sam["encoder_runtime"], sam["encoder_precision"]) == ("openvino", "f32")
        assert sam["encoder_sha256"] == record[engine.segmenters[sam["name"]].encoder.name]["sha256"]
    rel = "benign/benign (4).png"
    _, box = _image_and_box(busi_dir, rel)
    res = api.post("/v1/analyses", files={"file": ("scan.png", (busi_dir / rel).read_bytes())},
                   data={"modality": "us", "prompt": json.dumps({"box": box})}, headers=alice)
    assert res.status_code == 201, res.text
    seg = res.json()["segmentation"]
    assert (seg["encoder_runtime"], seg["encoder_precision"]) == ("openvino", "f32")
    again = api.get(f"/v1/analyses/{res.json()['id']}", headers=alice).json()
    assert again["segmentation"]["encoder_runtime"] == "openvino"
