"""Class-conditional SNGAN for 128x128 gray lesion ROIs (values in [-1, 1]).

Generator (the "standard CNN" of SNGAN, conditioned at the input): [z (latent_dim) ; embed(y)] ->
linear -> 4x4 x 16 ngf -> four (4x4 stride-2 transposed conv, BN, ReLU) blocks -> 64x64 x ngf ->
4x4 stride-2 transposed conv -> 128x128 x 1 -> tanh.

Discriminator: projection discriminator (Miyato & Koyama 2018): h = sum-pooled features of x,
D(x, y) = linear(h) + sum(embed(y) * h). Every conv, linear and embedding layer carries spectral
normalisation (Miyato et al. 2018; torch.nn.utils.parametrizations.spectral_norm, one power iteration
per training-mode forward); there is no batch norm in D. Two additions to the CIFAR "standard CNN",
neither with weights: LeakyReLU slope 0.2 instead of 0.1, and a minibatch-standard-deviation channel
before the last block (Karras et al. 2018). On BUSI (647 ROIs) the plain version gave one image per
class whatever z (still so after 336 generator updates), and on a toy set its D went flat around the
fakes so that G stopped learning; with both changes the samples varied with z after ~300 updates.

Losses are the hinge losses of SNGAN / BigGAN. Channel widths are small so that training runs on a
2-core CPU. Measured on the development machine (Xeon with AMX, 1 torch thread, a training job on the
other core), batch 32, ngf = ndf = 16: one D update 0.19 s + one G update 0.11 s = 0.29 s with bf16
autocast (0.60 s in fp32); a full iteration with n_dis = 2 takes ~0.48 s, an epoch of the 647 BUSI
ROIs (21 iterations) ~10 s. ngf = ndf = 32 would cost 0.90 s per D+G update.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

IMAGE_SIZE = 128
BASE_SIZE = 4          # the generator starts from a 4x4 map; 5 doublings reach 128
G_MULTS = (16, 8, 4, 2, 1)     # generator channels (x ngf) at 4, 8, 16, 32, 64; then 1 channel at 128
D_MULTS = (1, 2, 4, 8, 16)     # discriminator channels (x ndf) at 64, 32, 16, 8, 4


class GanConfig(BaseModel):
    """Everything that defines one SNGAN run. Changing any field but `epochs` breaks resuming."""
    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(100, ge=1)
    n_classes: int = Field(2, ge=1)
    ngf: int = Field(16, ge=1, description="generator width: channels at 64x64 (x16 at 4x4)")
    ndf: int = Field(16, ge=1, description="discriminator width: channels at 64x64 (x16 at 4x4)")
    lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    batch_size: int = Field(32, ge=2)
    epochs: int = Field(200, ge=1)
    iters_per_epoch: int | None = Field(
        None, ge=1, description="generator updates per epoch; None: ceil(N / batch_size), so that the "
                                "generator makes one pass worth of batches per epoch (D sees n_dis passes)")
    n_dis: int = Field(2, ge=1, description="discriminator updates per generator update")
    seed: int = 0
    augment: bool = Field(True, description="random horizontal flips of real ROIs (no vertical flips: "
                                            "depth runs top to bottom in ultrasound)")
    amp: bool = Field(True, description="bf16 autocast + channels_last where the device runs bf16 natively "
                                        "(CUDA, or a CPU with AVX512-BF16/AMX): ~2x faster on this CPU")

    @classmethod
    def quick(cls, **overrides: Any) -> "GanConfig":
        """A tiny run that proves the pipeline end to end in seconds (not a usable generator)."""
        return cls(**{**dict(epochs=2, iters_per_epoch=2, batch_size=8, n_dis=1), **overrides})

    def resume_key(self) -> dict[str, Any]:
        """The fields a checkpoint must agree on to be resumed (all but the number of epochs)."""
        return self.model_dump(exclude={"epochs"})


class Generator(nn.Module):
    def __init__(self, latent_dim: int = 100, n_classes: int = 2, ngf: int = 16, embed_dim: int | None = None):
        super().__init__()
        self.latent_dim, self.n_classes, self.ngf = latent_dim, n_classes, ngf
        embed_dim = embed_dim or latent_dim
        self.embed_dim = embed_dim
        chans = [ngf * m for m in G_MULTS]
        self.embed = nn.Embedding(n_classes, embed_dim)
        self.fc = nn.Linear(latent_dim + embed_dim, chans[0] * BASE_SIZE * BASE_SIZE)
        self.bn0 = nn.BatchNorm2d(chans[0])
        blocks: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.ConvTranspose2d(chans[-1], 1, 4, stride=2, padding=1)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def arch(self) -> dict[str, int]:
        return {"latent_dim": self.latent_dim, "n_classes": self.n_classes, "ngf": self.ngf,
                "embed_dim": self.embed_dim}

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(y)], dim=1))
        h = F.relu(self.bn0(h.view(len(z), -1, BASE_SIZE, BASE_SIZE)))
        return torch.tanh(self.to_image(self.blocks(h)).float())


def _sn(layer: nn.Module) -> nn.Module:
    """Xavier init, then spectral norm (its power iteration starts from the final weights)."""
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return spectral_norm(layer)


class MinibatchStd(nn.Module):
    """Karras et al. 2018: appends the mean (over channels and positions) of the per-feature standard
    deviation within groups of `group` consecutive samples as one more channel, so that D can see a
    collapsed batch. Groups never straddle a batch boundary that is a multiple of the group size."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = max(d for d in range(1, min(self.group, n) + 1) if n % d == 0)
        y = x.float().view(n // g, g, c, h, w)
        y = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (n // g,)
        y = y.repeat_interleave(g).view(n, 1, 1, 1).expand(n, 1, h, w).to(x.dtype)
        return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    def __init__(self, n_classes: int = 2, ndf: int = 16, mbstd_group: int = 4, slope: float = 0.2):
        super().__init__()
        self.n_classes, self.ndf = n_classes, ndf
        chans = [ndf * m for m in D_MULTS]
        layers: list[nn.Module] = []
        cin = 1
        for i, cout in enumerate(chans):
            # 4x4 stride-2 halves the size (128 -> 64 -> ... -> 4); from 16x16 on a 3x3 conv adds depth.
            if i == len(chans) - 1 and mbstd_group > 1:
                layers.append(MinibatchStd(mbstd_group))
                cin += 1
            layers += [_sn(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(slope)]
            if i >= 2:
                layers += [_sn(nn.Conv2d(cout, cout, 3, padding=1)), nn.LeakyReLU(slope)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.linear = _sn(nn.Linear(cin, 1))
        self.embed = _sn(nn.Embedding(n_classes, cin))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        with torch.autocast(device_type=h.device.type, enabled=False):  # the head in fp32 under AMP
            h = h.float().sum(dim=(2, 3))  # global sum pooling, as in SNGAN
            return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - D(x, y))) + mean(relu(1 + D(G(z), y)))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean(D(G(z), y))."""
    return -fake_logits.mean()


def build_generator(config: GanConfig) -> Generator:
    return Generator(latent_dim=config.latent_dim, n_classes=config.n_classes, ngf=config.ngf)


def build_discriminator(config: GanConfig) -> Discriminator:
    return Discriminator(n_classes=config.n_classes, ndf=config.ndf)
