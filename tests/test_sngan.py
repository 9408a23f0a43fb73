"""SNGAN: losses, spectral norm, projection discriminator, train-gan / synthesize / fid end to end."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.sngan import Discriminator, GanConfig, Generator, hinge_d_loss, hinge_g_loss
from training.gan.fid import FEATURE_EXTRACTOR, fid_kid, frechet_distance, kernel_inception_distance
from training.gan.sngan import CheckpointError, load_generator, synthesize, train_gan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """The development machine has 2 cores shared with a training job: 2 threads would thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------------------- losses

def test_hinge_losses_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.5])
    # relu(1 - real) = [0, 0.5, 2] -> 2.5/3; relu(1 + fake) = [0, 1, 2.5] -> 3.5/3
    assert hinge_d_loss(real, fake).item() == pytest.approx(2.5 / 3 + 3.5 / 3)
    assert hinge_g_loss(fake).item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)
    # a discriminator that is right with margin pays nothing
    assert hinge_d_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -7.0])).item() == 0.0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------- networks

def _weight_layers(module: nn.Module):
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding))]


def test_every_discriminator_layer_is_spectrally_normalised(one_thread):
    torch.manual_seed(0)
    D = Discriminator(ndf=4)
    layers = _weight_layers(D)
    assert len(layers) >= 8 and any(isinstance(m, nn.Embedding) for m in layers)
    for m in layers:
        assert torch.nn.utils.parametrize.is_parametrized(m, "weight"), m
        assert type(m.parametrizations.weight[0]).__name__ == "_SpectralNorm", m
    D.train()
    with torch.no_grad():
        for _ in range(30):  # each training-mode access runs one power iteration
            for m in layers:
                m.weight
        for m in layers:
            w = m.weight
            sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item()
            assert sigma == pytest.approx(1.0, abs=0.05), (m, sigma)


def test_projection_discriminator_depends_on_the_label(one_thread):
    torch.manual_seed(0)
    D = Discriminator(ndf=4).eval()
    x = torch.rand(3, 1, 128, 128) * 2 - 1
    with torch.no_grad():
        d0 = D(x, torch.zeros(3, dtype=torch.long))
        d1 = D(x, torch.ones(3, dtype=torch.long))
    assert d0.shape == (3,)
    assert (d0 - d1).abs().min() > 1e-4


def test_generator_shape_and_range(one_thread):
    torch.manual_seed(0)
    G = Generator(latent_dim=100, n_classes=2, ngf=4).eval()
    with torch.no_grad():
        out = G(torch.randn(5, 100) * 3, torch.tensor([0, 1, 0, 1, 1]))
    assert out.shape == (5, 1, 128, 128)
    assert out.min() >= -1 and out.max() <= 1 and out.std() > 0


# ------------------------------------------------------------------------------------------- API

def test_resume_matches_an_uninterrupted_run_and_rejects_another_config(tmp_path, one_thread):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 128, 128), dtype=np.uint8)
    labels = np.array([0] * 8 + [1] * 4)
    cfg = GanConfig.quick(ngf=4, ndf=4)
    straight = train_gan(images, labels, cfg.model_copy(update={"epochs": 3}), tmp_path / "a", progress=False,
                         log=lambda m: None)
    train_gan(images, labels, cfg, tmp_path / "b", progress=False, log=lambda m: None)
    logs = []
    resumed = train_gan(images, labels, cfg.model_copy(update={"epochs": 3}), tmp_path / "b", progress=False,
                        log=logs.append)
    assert any("resuming" in m and "epoch 2" in m for m in logs)
    assert [h["epoch"] for h in json.loads((tmp_path / "b" / "losses.json").read_text())] == [1, 2, 3]
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    with pytest.raises(CheckpointError, match=r"different config.*ngf"):
        train_gan(images, labels, cfg.model_copy(update={"ngf": 8}), tmp_path / "b", progress=False)
    with pytest.raises(CheckpointError, match="other images"):
        train_gan(images[::-1].copy(), labels, cfg, tmp_path / "b", progress=False)
    (tmp_path / "b" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        train_gan(images, labels, cfg, tmp_path / "b", progress=False)
    x, y = synthesize(resumed, 3, seed=1)
    assert x.shape == (6, 128, 128) and x.dtype == np.uint8 and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(synthesize(resumed, 3, seed=1)[0], x)


# ------------------------------------------------------------------------------------------- FID / KID

def test_fid_formula_matches_scipy_sqrtm_and_kid_is_unbiased():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 32))
    b = rng.standard_normal((50, 32)) @ rng.standard_normal((32, 32)) * 0.5 + 0.3
    assert frechet_distance(a, b, "gram") == pytest.approx(frechet_distance(a, b, "sqrtm"), rel=1e-6)
    assert abs(frechet_distance(a, a, "gram")) < 1e-8
    same = kernel_inception_distance(rng.standard_normal((200, 32)), rng.standard_normal((200, 32)), subsets=20,
                                     subset_size=100)
    assert abs(same[0]) < 3 * same[1] + 1e-3  # same distribution: ~0, not biased upwards
    assert kernel_inception_distance(a, b, subsets=5, subset_size=30)[0] > 0.1


def test_fid_of_real_rois_against_themselves_and_noise(busi_dir, one_thread):
    from PIL import Image
    paths = sorted((busi_dir / "benign").glob("benign (1[0-9]).png"))[:6]
    real = np.stack([np.asarray(Image.open(p).convert("L").resize((128, 128))) for p in paths])
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    m_self = fid_kid(real, real, device="cpu")
    m_noise = fid_kid(real, noise, device="cpu")
    assert m_self["feature_extractor"] == FEATURE_EXTRACTOR and m_self["n_real"] == m_self["n_fake"] == 6
    assert abs(m_self["fid"]) < 1e-3
    assert m_noise["fid"] > 100 and m_noise["kid_mean"] > 0.1
    assert m_self["kid_mean"] < 0.25 * m_noise["kid_mean"]  # unbiased: ~0 (noisy on 3-image subsets)
    assert m_self["kid_subset_size"] == 3 and m_self["kid_std"] > 0


# ------------------------------------------------------------------------------------------- commands

@pytest.fixture(scope="module")
def tiny_busi(busi_dir, tmp_path_factory) -> Path:
    """8 benign + 8 malignant real BUSI image/mask pairs in the BUSI layout."""
    root = tmp_path_factory.mktemp("busi16")
    for cls in ("benign", "malignant"):
        (root / cls).mkdir()
        for i in range(1, 9):
            for p in (busi_dir / cls).glob(f"{cls} ({i})*.png"):
                if p.stem == f"{cls} ({i})" or p.stem.startswith(f"{cls} ({i})_mask"):
                    shutil.copy(p, root / cls / p.name)
    return root


@pytest.mark.slow
def test_train_gan_quick_end_to_end_resume_synthesize_fid(tiny_busi, tmp_path):
    out = tmp_path / "gan"
    res = _cli("train-gan", "--rois", str(tiny_busi), "--modality", "us", "--out", str(out), "--quick",
               "--threads", "1", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "16 us lesion ROIs: 8 benign, 8 malignant" in res.stdout
    for name in ("grid_epoch001.png", "grid_epoch002.png", "losses.png", "checkpoint.pt", "samples.png",
                 "generator.safetensors", "generator.json"):
        assert (out / name).is_file(), name
    losses = json.loads((out / "losses.json").read_text())
    assert [h["epoch"] for h in losses] == [1, 2]
    assert all(math.isfinite(h["d_loss"]) and math.isfinite(h["g_loss"]) for h in losses)
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["fid"]) and metrics["fid"] > 0
    assert math.isfinite(metrics["kid_mean"]) and math.isfinite(metrics["kid_std"])
    assert metrics["n_real"] == metrics["n_fake"] == 16
    from PIL import Image
    assert Image.open(out / "grid_epoch002.png").size == (8 * 130 + 2, 8 * 130 + 2)

    # resume: one more epoch on top of the checkpoint, not a fresh start
    res = _cli("train-gan", "--rois", str(tiny_busi), "--modality", "us", "--out", str(out), "--quick",
               "--epochs", "3", "--threads", "1", "--no-progress", "--fid-n", "4")
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stdout and "epoch 2/3" in res.stdout
    assert [h["epoch"] for h in json.loads((out / "losses.json").read_text())] == [1, 2, 3]
    assert (out / "grid_epoch003.png").is_file()
    # another config on the same checkpoint: a clear error, exit 2
    res = _cli("train-gan", "--rois", str(tiny_busi), "--modality", "us", "--out", str(out), "--quick",
               "--batch-size", "4", "--threads", "1", "--no-progress")
    assert res.returncode == 2 and "different config" in res.stderr and "batch_size" in res.stderr

    gen = out / "generator.safetensors"
    assert load_generator(gen).ngf == GanConfig().ngf
    npz = tmp_path / "syn" / "fake.npz"
    res = _cli("synthesize", "--generator", str(gen), "--n-per-class", "5", "--out", str(npz), "--threads", "1")
    assert res.returncode == 0, res.stderr
    with np.load(npz) as z:
        assert z["images"].shape == (10, 128, 128) and z["images"].dtype == np.uint8
        assert z["labels"].tolist() == [0] * 5 + [1] * 5
    assert npz.with_suffix(".png").is_file()

    res = _cli("fid", "--real", str(tiny_busi), "--modality", "us", "--fake", str(npz),
               "--out", str(tmp_path / "fid.json"), "--threads", "1")
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "fid.json").read_text())
    assert m["n_real"] == 16 and m["n_fake"] == 10 and math.isfinite(m["fid"])


def test_bad_generator_and_checkpoint_files_exit_2(tmp_path, tiny_busi):
    bad = tmp_path / "generator.safetensors"
    bad.write_bytes(b"\x00garbage, not safetensors")
    res = _cli("synthesize", "--generator", str(bad), "--n-per-class", "2", "--out", str(tmp_path / "x.npz"))
    assert res.returncode == 2 and str(bad) in res.stderr
    missing = tmp_path / "nope.safetensors"
    res = _cli("synthesize", "--generator", str(missing), "--n-per-class", "2", "--out", str(tmp_path / "x.npz"))
    assert res.returncode == 2 and "not found" in res.stderr and str(missing) in res.stderr
    out = tmp_path / "gan"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"truncated")
    res = _cli("train-gan", "--rois", str(tiny_busi), "--modality", "us", "--out", str(out), "--quick",
               "--threads", "1", "--no-progress")
    assert res.returncode == 2 and str(out / "checkpoint.pt") in res.stderr
    res = _cli("fid", "--real", str(tiny_busi), "--modality", "us", "--fake", str(tmp_path / "x.npz"),
               "--out", str(tmp_path / "m.json"))
    assert res.returncode == 2 and str(tmp_path / "x.npz") in res.stderr
