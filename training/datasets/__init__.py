"""Step 1, datasets: raw dataset folders in, RoiRecords out (one per lesion or normal image).

In: a folder holding any of the known public sets (BUSI, BUS-BRA, UDIAT, mini-MIAS, INbreast, CBIS-DDSM,
VinDr-Mammo, or plain class folders). Out: lists of `roi_table.RoiRecord` (image, box, mask, label,
site, patient group), the schema every later step reads.

`roi_table` holds that schema and the table `prepare` writes from it (rois.csv); `imaging` and `grouping`
are the adapters' shared image reading and near-duplicate grouping.

An adapter module has NAME, `find(root) -> [dataset roots]` and `read(root, warn) -> [RoiRecord]`.
`warn` receives one message per problem, naming the file; the adapter skips what it cannot use.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

ADAPTER_MODULES = [
    "training.datasets.busi",
    "training.datasets.busbra",
    "training.datasets.mias",
    "training.datasets.cbis_ddsm",
    "training.datasets.inbreast",
    "training.datasets.vindr",
    "training.datasets.udiat",
    "training.datasets.folders",
]


def adapters() -> list[ModuleType]:
    return [importlib.import_module(m) for m in ADAPTER_MODULES]


def known_layouts() -> str:
    return ", ".join(a.NAME for a in adapters())


def discover(root: Path) -> list[tuple[ModuleType, Path]]:
    """Every (adapter, dataset root) found under `root`, in adapter order."""
    found = []
    for adapter in adapters():
        for r in adapter.find(Path(root)):
            found.append((adapter, r))
    return found
