"""Weight files as served: their sha256, and the one error every loader raises.

Loading never falls back to a random network: a missing file or a sha256 mismatch raises WeightsError
naming the file and what is wrong. Used by the manifest, the SAM loaders and the exported encoders.
"""
from __future__ import annotations

import hashlib
from pathlib import Path


class WeightsError(RuntimeError):
    """The served weights are missing, corrupt or do not fit the architecture."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_file(path: Path, sha256: str, what: str) -> Path:
    """`path` once it exists and has the manifest's sha256; WeightsError naming `what` otherwise."""
    if not path.is_file():
        raise WeightsError(f"{what} missing: {path} (listed in the manifest)")
    digest = sha256_file(path)
    if digest != sha256:
        raise WeightsError(f"sha256 mismatch for {path}: manifest says {sha256}, file is {digest}")
    return path
