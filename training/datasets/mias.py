"""mini-MIAS (Suckling et al. 1994): `Info.txt` + `all-mias/mdbNNN.pgm` (or lossless .png copies).

Lesions are circles (X, Y, RADIUS) with the origin at the bottom-left: row = height - Y. The ROI
box is the circle's bounding square. Rows without coordinates are skipped with a warning; the
left/right films of one woman, mdb(2k-1) and mdb(2k), share a group.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from PIL import Image

from training.datasets.roi_table import RoiRecord

NAME = "mias"
MODALITY = "dm"
SEVERITY = {"B": "benign", "M": "malignant"}
REF_RE = re.compile(r"^mdb(\d+)$")


def find(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("Info.txt") if (p.parent / "all-mias").is_dir()})


def _image_file(root: Path, ref: str) -> Path | None:
    for ext in (".pgm", ".png"):
        p = root / "all-mias" / f"{ref}{ext}"
        if p.is_file():
            return p
    return None


def read(root: Path, warn: Callable[[str], None]) -> list[RoiRecord]:
    info = root / "Info.txt"
    records: list[RoiRecord] = []
    sizes: dict[Path, tuple[int, int] | None] = {}
    absent = 0
    seen_lesions: dict[str, int] = {}
    for lineno, line in enumerate(info.read_text(errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].upper() == "REFNUM":
            continue
        ref = parts[0]
        m = REF_RE.match(ref)
        if not m or len(parts) < 3:
            warn(f"{info}:{lineno}: unreadable row {line.strip()!r}; skipped")
            continue
        path = _image_file(root, ref)
        if path is None:
            absent += 1
            continue
        if path not in sizes:
            try:
                with Image.open(path) as im:
                    im.load()
                    sizes[path] = im.size
            except Exception as e:
                warn(f"{path}: unreadable image ({e}); skipped")
                sizes[path] = None
        if sizes[path] is None:
            continue
        width, height = sizes[path]
        group = f"{NAME}:patient{(int(m.group(1)) + 1) // 2:03d}"
        cls = parts[2].upper()
        common = dict(image_path=str(path.resolve()), modality=MODALITY, source=NAME, group=group)
        if cls == "NORM":
            records.append(RoiRecord(label="normal", lesion_id=f"{NAME}:{ref}", note="NORM", **common))
            continue
        if len(parts) < 4 or parts[3].upper() not in SEVERITY:
            warn(f"{info}:{lineno}: {ref} has unknown severity {parts[3] if len(parts) > 3 else ''!r}; skipped")
            continue
        label = SEVERITY[parts[3].upper()]
        if len(parts) < 7:
            warn(f"{info}:{lineno}: {ref} ({cls} {parts[3]}) has no coordinates; skipped")
            continue
        try:
            x, y, r = (float(v) for v in parts[4:7])
        except ValueError:
            warn(f"{info}:{lineno}: {ref} has non-numeric coordinates {parts[4:7]}; skipped")
            continue
        cy = height - y
        x0, y0, x1, y1 = max(0.0, x - r), max(0.0, cy - r), min(float(width), x + r), min(float(height), cy + r)
        if not (x1 > x0 and y1 > y0):
            warn(f"{info}:{lineno}: {ref} circle ({x}, {y}, r={r}) lies outside the {width}x{height} image; skipped")
            continue
        n = seen_lesions[ref] = seen_lesions.get(ref, 0) + 1
        records.append(RoiRecord(label=label, x0=x0, y0=y0, x1=x1, y1=y1, lesion_id=f"{NAME}:{ref}:{n}",
                                 note=cls, **common))
    if absent:
        warn(f"{info}: {absent} rows name images not present under {root / 'all-mias'}; skipped")
    return records
