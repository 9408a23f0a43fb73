"""One table of lesion ROIs for every dataset: what `prepare` writes and everything else reads."""
from __future__ import annotations

import csv
import os
import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable

LABELS = ("benign", "malignant", "normal")
MODALITIES = ("us", "dm")


@dataclass
class RoiRecord:
    image_path: str          # absolute path of the image
    modality: str            # us | dm
    label: str               # benign | malignant | normal
    source: str              # dataset name, e.g. busi, mias
    group: str               # images sharing a group never cross folds (patient / near duplicate)
    x0: float | None = None  # lesion box in pixels (x1, y1 exclusive); None for normal images
    y0: float | None = None
    x1: float | None = None
    y1: float | None = None
    mask_paths: str = ""     # ';'-joined lesion masks, when the source has them
    lesion_id: str = ""      # unique id of this lesion (an image may hold several)
    note: str = ""           # source-specific detail (MIAS class, BI-RADS, ...)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r} for {self.image_path}")
        if self.label not in LABELS:
            raise ValueError(f"unknown label {self.label!r} for {self.image_path}")
        if not self.lesion_id:
            self.lesion_id = f"{self.source}:{Path(self.image_path).stem}"

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        if self.x0 is None:
            return None
        return (self.x0, self.y0, self.x1, self.y1)  # type: ignore[return-value]

    @property
    def target(self) -> int:
        return 1 if self.label == "malignant" else 0


COLUMNS = [f.name for f in fields(RoiRecord)]


def write_table(records: Iterable[RoiRecord], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # parallel processes may prepare the same folder at once
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in records:
            w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    tmp.replace(path)
    return path


def read_table(path: Path) -> list[RoiRecord]:
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            kw: dict = dict(row)
            for k in ("x0", "y0", "x1", "y1"):
                kw[k] = float(kw[k]) if kw[k] not in ("", None) else None
            out.append(RoiRecord(**kw))
    return out


def lesions(records: Iterable[RoiRecord], modality: str | None = None) -> list[RoiRecord]:
    """Benign/malignant rows with a box: what the classifier trains and is evaluated on."""
    return [r for r in records if r.label != "normal" and r.box is not None
            and (modality is None or r.modality == modality)]


@dataclass
class Summary:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> label -> lesions
    images: dict[str, int] = field(default_factory=dict)              # source -> distinct images
    groups: dict[str, int] = field(default_factory=dict)              # source -> distinct groups
    warnings: list[str] = field(default_factory=list)


def summarize(records: list[RoiRecord], warnings: list[str] | None = None) -> Summary:
    s = Summary(warnings=list(warnings or []))
    by_source: dict[str, Counter] = {}
    for r in records:
        by_source.setdefault(r.source, Counter())[r.label] += 1
    s.counts = {k: dict(sorted(v.items())) for k, v in sorted(by_source.items())}
    s.images = {src: len({r.image_path for r in records if r.source == src}) for src in s.counts}
    s.groups = {src: len({r.group for r in records if r.source == src}) for src in s.counts}
    return s


def summary_markdown(s: Summary) -> str:
    lines = ["| source | benign | malignant | normal | images | groups |", "|---|---|---|---|---|---|"]
    for src, c in s.counts.items():
        lines.append(f"| {src} | {c.get('benign', 0)} | {c.get('malignant', 0)} | {c.get('normal', 0)} "
                     f"| {s.images[src]} | {s.groups[src]} |")
    if s.warnings:
        lines += ["", f"{len(s.warnings)} warnings:", *[f"- {w}" for w in s.warnings]]
    return "\n".join(lines) + "\n"


def write_summary(s: Summary, out_dir: Path) -> None:
    (out_dir / "summary.json").write_text(json.dumps(asdict(s), indent=2) + "\n")
    (out_dir / "summary.md").write_text(summary_markdown(s))
