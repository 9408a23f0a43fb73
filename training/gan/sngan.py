"""SNGAN training and synthesis: the Python API behind `train-gan` and `synthesize`.

    generator = train_gan(images, labels, GanConfig(), out_dir)        # uint8 (N,128,128), 0/1 labels
    x, y = synthesize(generator, n_per_class=1000, seed=0)              # uint8 (2000,128,128), labels
    save_generator(generator, path); generator = load_generator(path)

train_gan writes into out_dir, every epoch: losses.json (per-epoch mean D/G hinge losses and logits),
losses.png, grid_epochNNN.png (8x8 samples from a fixed noise: rows alternate benign / malignant,
each benign row and the malignant row under it share their noise), and checkpoint.pt (G, D, both
optimisers, epoch, RNG states; written atomically). With resume=True a run continues from
checkpoint.pt; a checkpoint written for another config or other images is an error, not a restart.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models.manifest import state_mismatch
from models.sngan import (GanConfig, Generator, build_discriminator, build_generator, hinge_d_loss,
                          hinge_g_loss)
from training.common.device import bf16_native, default_device

__all__ = ["GanConfig", "Generator", "CheckpointError", "GeneratorFileError", "train_gan", "synthesize",
           "generate", "save_generator", "load_generator", "sample_grid", "save_grid", "class_grid", "to_uint8"]

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "branet-sngan-checkpoint/1"
GENERATOR_FORMAT = "branet-sngan-generator/1"
GRID_ROWS = GRID_COLS = 8
LOSS_KEYS = ("d_loss", "g_loss", "d_real", "d_fake")  # per-epoch means in losses.json


class CheckpointError(RuntimeError):
    """checkpoint.pt is unreadable, or was written for another config / other images."""


class GeneratorFileError(RuntimeError):
    """A generator file is missing, corrupt or does not fit the architecture it declares."""


# --------------------------------------------------------------------------------------------- helpers

def _amp_enabled(config: GanConfig, device: torch.device) -> bool:
    return config.amp and bf16_native(device)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1] (N,1,H,W) -> uint8 (N,H,W); inverse of models.preprocessing.normalize."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)[:, 0].cpu().numpy()


def _from_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(127.5).sub(1.0)[:, None]


def save_grid(images: np.ndarray, path: Path, cols: int = GRID_COLS, pad: int = 2) -> Path:
    """uint8 (N,H,W) -> one PNG, row-major, `pad` white pixels between tiles."""
    n, h, w = images.shape
    rows = max(1, math.ceil(n / cols))
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = im
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(canvas).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def class_grid(images: np.ndarray, labels: np.ndarray, rows: int = GRID_ROWS, cols: int = GRID_COLS,
               n_classes: int = 2) -> np.ndarray:
    """Up to rows x cols images arranged so that row r shows class r % n_classes (for previews)."""
    picked = []
    for r in range(rows):
        idx = np.flatnonzero(labels == r % n_classes)[(r // n_classes) * cols:(r // n_classes + 1) * cols]
        row = [images[i] for i in idx] + [np.zeros(images.shape[1:], np.uint8)] * (cols - len(idx))
        picked += row
    return np.stack(picked)


def _grid_inputs(latent_dim: int, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise/labels of the 8x8 grid: row r is class r % C; the C rows of one noise block share z."""
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    blocks = math.ceil(GRID_ROWS / n_classes)
    z_blocks = torch.randn(blocks, GRID_COLS, latent_dim, generator=gen)
    z = torch.stack([z_blocks[r // n_classes] for r in range(GRID_ROWS)]).reshape(-1, latent_dim)
    y = torch.tensor([r % n_classes for r in range(GRID_ROWS) for _ in range(GRID_COLS)])
    return z, y


@torch.no_grad()
def sample_grid(generator: Generator, seed: int = 0) -> np.ndarray:
    """The 8x8 preview, uint8 (64,128,128): rows alternate classes (benign, malignant, ...), each pair of
    rows shares its noise; fixed for a given seed (train_gan uses config.seed for its per-epoch grids)."""
    z, y = _grid_inputs(generator.latent_dim, generator.n_classes, seed)
    dev = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    try:
        return to_uint8(generator(z.to(dev), y.to(dev)))
    finally:
        generator.train(was_training)


def _data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _atomic_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def _plot_losses(history: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ep = [h["epoch"] for h in history]
    ax1.plot(ep, [h["d_loss"] for h in history], label="D hinge loss")
    ax1.plot(ep, [h["g_loss"] for h in history], label="G hinge loss")
    ax1.set_xlabel("epoch")
    ax1.legend()
    ax2.plot(ep, [h["d_real"] for h in history], label="mean D(x, y)")
    ax2.plot(ep, [h["d_fake"] for h in history], label="mean D(G(z), y)")
    ax2.axhline(0, color="gray", lw=0.5)
    ax2.set_xlabel("epoch")
    ax2.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=100, format="png")
    tmp.replace(path)


def _check_inputs(images: np.ndarray, labels: np.ndarray, config: GanConfig) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (128, 128):
        raise ValueError(f"images must be uint8 (N,128,128), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
    counts = np.bincount(labels, minlength=config.n_classes) if labels.size else np.zeros(config.n_classes)
    if labels.size and (labels.min() < 0 or labels.max() >= config.n_classes):
        raise ValueError(f"labels must lie in 0..{config.n_classes - 1}")
    if (counts[:config.n_classes] == 0).any():
        raise ValueError(f"every class needs at least one image (per-class counts: {counts.tolist()})")
    return images, labels


# --------------------------------------------------------------------------------------------- checkpoint

def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, config: GanConfig, fingerprint: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage, pickle errors: all mean "not a checkpoint"
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e} "
                              f"(delete it or pass --no-resume to start over)") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an SNGAN checkpoint of this project "
                              f"(delete it or pass --no-resume to start over)")
    try:
        saved = GanConfig.model_validate(state["config"])
    except Exception as e:
        raise CheckpointError(f"{path} holds an invalid config: {e}") from e
    mine, theirs = config.resume_key(), saved.resume_key()
    diff = [f"{k}: checkpoint {theirs.get(k)!r}, now {mine.get(k)!r}" for k in mine if mine.get(k) != theirs.get(k)]
    if diff:
        raise CheckpointError(f"{path} was written with a different config ({'; '.join(diff)}); "
                              f"resume with the same settings, or pass --no-resume / another --out")
    if state.get("data") != fingerprint:
        raise CheckpointError(f"{path} was trained on other images (fingerprint {state.get('data')}, "
                              f"now {fingerprint}); pass --no-resume or another --out")
    return state


# --------------------------------------------------------------------------------------------- training

def train_gan(images: np.ndarray, labels: np.ndarray, config: GanConfig, out_dir: Path,
              resume: bool = True, progress: bool = True, *, device: str | torch.device | None = None,
              log: Callable[[str], None] = print) -> Generator:
    """Train the class-conditional SNGAN on uint8 ROIs (N,128,128) with labels 0 benign / 1 malignant.

    Returns the generator (eval mode, on `device`). See the module docstring for what lands in out_dir.
    """
    images, labels = _check_inputs(images, labels, config)
    dev = torch.device(device) if device is not None else default_device()
    amp = _amp_enabled(config, dev)
    memory_format = torch.channels_last if amp else torch.contiguous_format
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT
    fingerprint = _data_fingerprint(images, labels)
    iters = config.iters_per_epoch or max(1, math.ceil(len(images) / config.batch_size))

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(config.seed)
        G = build_generator(config).to(dev, memory_format=memory_format)
        D = build_discriminator(config).to(dev, memory_format=memory_format)
    opt_g = torch.optim.Adam(G.parameters(), lr=config.lr, betas=config.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=config.lr, betas=config.betas)
    rng = np.random.default_rng(config.seed)
    noise_gen = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    start = 0

    if resume and ckpt_path.exists():
        state = _load_checkpoint(ckpt_path, config, fingerprint)
        try:
            G.load_state_dict(state["G"])
            D.load_state_dict(state["D"])
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            rng.bit_generator.state = state["np_rng"]
            noise_gen.set_state(state["torch_rng"])
        except Exception as e:
            raise CheckpointError(f"checkpoint {ckpt_path} does not fit this model: {e}") from e
        start, history = int(state["epoch"]), list(state["history"])
        log(f"resuming from {ckpt_path} at epoch {start}/{config.epochs}")
    elif ckpt_path.exists():
        log(f"not resuming: starting over, {ckpt_path} will be overwritten")

    by_class = [np.flatnonzero(labels == c) for c in range(config.n_classes)]
    x_all = torch.from_numpy(images).to(dev)  # uint8 on the device; converted per batch
    per_class = [config.batch_size // config.n_classes + (c < config.batch_size % config.n_classes)
                 for c in range(config.n_classes)]

    def balanced_labels() -> np.ndarray:
        return rng.permutation(np.repeat(np.arange(config.n_classes), per_class))

    def real_batch() -> tuple[torch.Tensor, torch.Tensor]:
        y = balanced_labels()
        idx = np.empty(len(y), np.int64)
        for c in range(config.n_classes):
            where = np.flatnonzero(y == c)
            idx[where] = rng.choice(by_class[c], size=len(where), replace=len(where) > len(by_class[c]))
        x = _from_uint8(x_all[torch.from_numpy(idx).to(dev)])
        if config.augment:
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5).to(dev)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.contiguous(memory_format=memory_format), torch.from_numpy(y).to(dev)

    def noise(n: int) -> torch.Tensor:
        return torch.randn(n, config.latent_dim, generator=noise_gen).to(dev)

    if start >= config.epochs:
        log(f"{ckpt_path}: already trained for {start} epochs (asked for {config.epochs}); nothing to do")
    G.train()
    D.train()
    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        sums = torch.zeros(4, dtype=torch.float64, device=dev)  # d_loss, g_loss, d_real, d_fake
        bar = tqdm(range(iters), desc=f"SNGAN epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
        for _ in bar:
            for _ in range(config.n_dis):
                x, y = real_batch()
                with torch.no_grad(), _autocast(dev, amp):
                    fake = G(noise(len(y)), y)
                with _autocast(dev, amp):  # two calls: minibatch-std groups must not mix real and fake
                    real_logits = D(x, y).float()
                    fake_logits = D(fake.contiguous(memory_format=memory_format), y).float()
                loss_d = hinge_d_loss(real_logits, fake_logits)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
            y = torch.from_numpy(balanced_labels()).to(dev)
            D.requires_grad_(False)  # the G step needs gradients through D, not for D's weights
            with _autocast(dev, amp):
                g_logits = D(G(noise(len(y)), y).contiguous(memory_format=memory_format), y).float()
            loss_g = hinge_g_loss(g_logits)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            D.requires_grad_(True)
            sums += torch.stack([loss_d.detach(), loss_g.detach(), real_logits.detach().mean(),
                                 fake_logits.detach().mean()]).double()  # no device sync per step
            if progress:
                bar.set_postfix(d=f"{loss_d.item():.3f}", g=f"{loss_g.item():.3f}")
        means = (sums / iters).tolist()
        record = {"epoch": epoch, "iterations": iters, **dict(zip(LOSS_KEYS, means)),
                  "seconds": round(time.perf_counter() - t0, 3)}
        if not all(math.isfinite(v) for v in means):
            raise FloatingPointError(f"SNGAN diverged at epoch {epoch}: {record}")
        history.append(record)
        save_grid(sample_grid(G, config.seed), out_dir / f"grid_epoch{epoch:03d}.png")
        _save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "config": config.model_dump(mode="json"), "epoch": epoch,
            "data": fingerprint, "history": history,
            "G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "np_rng": rng.bit_generator.state, "torch_rng": noise_gen.get_state(),
        })
        _atomic_json(history, out_dir / "losses.json")
        _plot_losses(history, out_dir / "losses.png")
        log(f"epoch {epoch}/{config.epochs}: D {record['d_loss']:.3f}  G {record['g_loss']:.3f}  "
            f"D(real) {record['d_real']:+.2f}  D(fake) {record['d_fake']:+.2f}  {record['seconds']:.1f} s")
    if history:  # losses.json always mirrors the checkpoint, also when nothing was left to train
        _atomic_json(history, out_dir / "losses.json")
    G = G.to(memory_format=torch.contiguous_format).eval()
    G.gan_config = config  # type: ignore[attr-defined]  # picked up by save_generator
    return G


# --------------------------------------------------------------------------------------------- synthesis

@torch.no_grad()
def generate(generator: Generator, labels: np.ndarray, seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """One uint8 128x128 ROI per label (eval-mode generator; the noise comes from `seed` on the CPU, so it is the same on any device)."""
    labels = np.asarray(labels, dtype=np.int64)
    dev = next(generator.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(labels), generator.latent_dim, generator=gen)
    y = torch.from_numpy(labels)
    was_training = generator.training
    generator.eval()
    out = np.empty((len(labels), 128, 128), np.uint8)
    try:
        for i in range(0, len(labels), batch_size):
            out[i:i + batch_size] = to_uint8(generator(z[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)))
    finally:
        generator.train(was_training)
    return out


def synthesize(generator: Generator, n_per_class: int, seed: int = 0, batch_size: int = 256
               ) -> tuple[np.ndarray, np.ndarray]:
    """n_per_class synthetic ROIs of every class: (uint8 (C*n,128,128), int64 labels, class-sorted)."""
    labels = np.repeat(np.arange(generator.n_classes, dtype=np.int64), n_per_class)
    return generate(generator, labels, seed=seed, batch_size=batch_size), labels


# --------------------------------------------------------------------------------------------- files

def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_generator(generator: Generator, path: Path, config: GanConfig | None = None,
                   extra: dict[str, Any] | None = None) -> Path:
    """fp16 safetensors (architecture in its metadata) + a JSON beside it (same stem) with the config."""
    path = Path(path)
    config = config or getattr(generator, "gan_config", None)
    meta = {"format": GENERATOR_FORMAT, "arch": generator.arch(),
            "config": config.model_dump(mode="json") if config is not None else None, **(extra or {})}
    state = {k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in generator.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": GENERATOR_FORMAT, "arch": json.dumps(generator.arch())})
    tmp.replace(path)
    _atomic_json(meta, _sidecar(path))
    return path


def load_generator(path: Path, device: str | torch.device = "cpu") -> Generator:
    """The generator saved by save_generator: float32, eval mode. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise GeneratorFileError(f"generator file not found: {path}")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise GeneratorFileError(f"cannot read generator file {path}: {e}") from e
    arch_json = meta.get("arch")
    if arch_json is None and _sidecar(path).is_file():
        try:
            arch_json = json.dumps(json.loads(_sidecar(path).read_text())["arch"])
        except (ValueError, KeyError) as e:
            raise GeneratorFileError(f"{_sidecar(path)} is not a generator description: {e}") from e
    if arch_json is None:
        raise GeneratorFileError(f"{path} does not say which generator it holds (no 'arch' metadata "
                                 f"and no {_sidecar(path).name} beside it)")
    try:
        generator = Generator(**json.loads(arch_json))
    except (ValueError, TypeError) as e:
        raise GeneratorFileError(f"{path}: unusable architecture {arch_json!r}: {e}") from e
    expected = generator.state_dict()
    mismatch = state_mismatch(generator, state)
    if mismatch:
        raise GeneratorFileError(f"generator file {path} does not fit its architecture {arch_json}: {mismatch}")
    generator.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    config_path = _sidecar(path)
    if config_path.is_file():
        try:
            cfg = json.loads(config_path.read_text()).get("config")
            if cfg:
                generator.gan_config = GanConfig.model_validate(cfg)  # type: ignore[attr-defined]
        except ValueError:
            pass  # the config is informative only; the weights and architecture are what matter
    return generator.to(device).eval()
