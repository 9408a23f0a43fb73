"""What the server serves: the verified classifiers named in models/weights/manifest.json."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.manifest import WEIGHTS_DIR, ModelEntry, WeightsError, load_classifier, read_manifest

SERVED = {"us": "classifier-us", "dm": "classifier-dm"}


@dataclass
class Registry:
    # BRANET_WEIGHTS points the server at another exported weights folder (default: the committed ones).
    weights_dir: Path = field(default_factory=lambda: Path(os.environ.get("BRANET_WEIGHTS", WEIGHTS_DIR)))
    classifiers: dict[str, tuple[torch.nn.Module, ModelEntry]] = field(default_factory=dict)

    def load(self) -> None:
        """Load every served classifier; raises WeightsError naming the missing or bad file."""
        read_manifest(self.weights_dir)
        for modality, name in SERVED.items():
            self.classifiers[modality] = load_classifier(name, self.weights_dir)

    @property
    def ready(self) -> bool:
        return set(self.classifiers) == set(SERVED)

    def describe(self) -> list[dict]:
        return [{"modality": m, "name": e.name, "sha256": e.sha256, "architecture": e.architecture,
                 "regime": e.regime, "members": e.members, "threshold": e.threshold, "metrics": e.metrics}
                for m, (_, e) in sorted(self.classifiers.items())]


__all__ = ["Registry", "WeightsError", "SERVED"]
