"""Which lesions a run uses (`select`) and the cross-validation folds every later step shares (`folds_of`):
the classifier's CV, the SAM decoder's cross-fitting, the per-fold SNGANs and the SAM probe all split the
same lesions the same way for the same seed."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from training.datasets.roi_table import RoiRecord, lesions


def select(records: list[RoiRecord], modality: str, limit: int | None) -> list[RoiRecord]:
    """The lesions of `modality`; with `limit`, the first N per class of each site (source)."""
    chosen = lesions(records, modality)
    if limit:
        sites = sorted({r.source for r in chosen}, key=[r.source for r in chosen].index)
        chosen = [r for s in sites for label in ("benign", "malignant")
                  for r in [r for r in chosen if r.source == s and r.label == label][:limit]]
    return chosen


def folds_of(records: list[RoiRecord], folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group-aware folds (a group, e.g. a BUS-BRA patient `busbra:<Case>`, never straddles folds),
    stratified by site (source) and label, so every fold holds each site's share of each class.
    One site: stratified by label alone, the very splits of the single-site runs."""
    sites = {s: i for i, s in enumerate(sorted({r.source for r in records}))}
    strata = np.array([2 * sites[r.source] + r.target for r in records])
    groups = np.array([r.group for r in records])
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(strata)), strata, groups))
