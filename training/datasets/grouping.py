"""Group ids: images that must stay in the same fold (same patient, same scan, near duplicates)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image


class UnionFind:
    def __init__(self, items: Iterable[str]):
        self.parent = {i: i for i in items}

    def find(self, x: str) -> str:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> dict[str, str]:
        return {k: self.find(k) for k in self.parent}


def fingerprints(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(16x16 difference hash as 256 bools, 64x64 z-normalised thumbnail) of a gray image."""
    img = Image.fromarray(gray)
    small = np.asarray(img.resize((17, 16), Image.Resampling.BILINEAR), dtype=np.float32)
    dhash = (small[:, 1:] > small[:, :-1]).ravel()
    thumb = np.asarray(img.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32).ravel()
    thumb = (thumb - thumb.mean()) / (thumb.std() + 1e-6)
    return dhash, thumb


def near_duplicate_pairs(keys: list[str], hashes: np.ndarray, thumbs: np.ndarray,
                         max_hamming: int = 8, min_corr: float = 0.95) -> list[tuple[str, str]]:
    """Pairs whose dhash Hamming distance <= max_hamming or 64x64 correlation > min_corr.

    The same rule as the 'weak' level of shared/data/busi/near_duplicates.csv: it also joins
    neighbouring frames of one lesion, which must not be split across folds either.
    """
    if len(keys) < 2:
        return []
    h = hashes.astype(np.float32)
    hamming = h @ (1 - h).T + (1 - h) @ h.T
    corr = thumbs @ thumbs.T / thumbs.shape[1]
    close = (hamming <= max_hamming) | (corr > min_corr)
    i, j = np.nonzero(np.triu(close, k=1))
    return [(keys[a], keys[b]) for a, b in zip(i, j)]


def group_ids(keys: list[str], pairs: Iterable[tuple[str, str]], prefix: str) -> dict[str, str]:
    uf = UnionFind(keys)
    for a, b in pairs:
        if a in uf.parent and b in uf.parent:
            uf.union(a, b)
    return {k: f"{prefix}:{Path(root).stem}" for k, root in uf.groups().items()}
