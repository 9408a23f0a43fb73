"""Where a step trains: the device, and whether bf16 autocast pays there (the classifier, the SNGAN and the
SAM decoder fine-tuning all ask)."""
from __future__ import annotations

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 autocast runs on hardware that computes in bf16 (a GPU with bf16, a CPU with AMX or
    AVX-512 BF16): there it is several times faster; elsewhere (an AVX2-only CPU) it is emulated and many
    times slower than float32, so training runs in float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False
