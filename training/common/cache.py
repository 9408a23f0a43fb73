"""The on-disk cache every step shares (BRANET_CACHE, default .cache/branet): prepared tables, ROI crops,
SAM masks and embeddings, the SAM probe's features. Each user keys its own entries by what they depend on."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("BRANET_CACHE", ".cache/branet"))
