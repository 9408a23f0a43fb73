import pytest
import torch

from models.classifier import ARCHITECTURE, build_classifier
from models.manifest import Manifest, ModelEntry, WeightsError, load_classifier, save_classifier, write_manifest


def _write(tmp_path, model):
    sha = save_classifier(model, tmp_path / "c.safetensors")
    write_manifest(Manifest(models={"c": ModelEntry(name="c", file="c.safetensors", sha256=sha,
                                                     architecture=ARCHITECTURE, modality="us")}), tmp_path)
    return sha


def test_roundtrip_is_fp16_and_predicts_the_same(tmp_path):
    torch.manual_seed(0)
    model = build_classifier().eval()
    _write(tmp_path, model)
    loaded, entry = load_classifier("c", tmp_path)
    x = torch.randn(2, 1, 128, 128)
    assert torch.allclose(model(x), loaded(x), atol=5e-2)
    assert (tmp_path / "c.safetensors").stat().st_size < 25e6  # fp16: ~22 MB


def test_sha256_mismatch_is_rejected(tmp_path):
    _write(tmp_path, build_classifier())
    with open(tmp_path / "c.safetensors", "r+b") as f:
        f.seek(-10, 2)
        f.write(b"\x00" * 10)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_classifier("c", tmp_path)


def test_missing_file_and_wrong_shape_are_named(tmp_path):
    _write(tmp_path, build_classifier())
    with pytest.raises(WeightsError, match="not in"):
        load_classifier("other", tmp_path)
    _write(tmp_path, build_classifier(num_classes=3))
    with pytest.raises(WeightsError, match="does not fit"):
        load_classifier("c", tmp_path)
    (tmp_path / "c.safetensors").unlink()
    with pytest.raises(WeightsError, match="weight file missing"):
        load_classifier("c", tmp_path)
