"""BUS-BRA (Gómez-Flores et al. 2024): `Images/bus_NNNN-V.png`, `Masks/mask_NNNN-V.png`, `bus_data.csv`.

`bus_data.csv` lists one image per row: `ID` (bus_NNNN-V), `Case` (the patient), `Pathology`
(benign / malignant, biopsy-proven), `Histology`, `BIRADS`, `BBOX` and more. The box comes from the
expert mask (the mask is what SAM and the crops use); the CSV's `BBOX` is checked against it. BBOX is
`[x, y, w, h]` in MATLAB's convention, which the real file follows for all 902 images: x, y are the
1-based first column and row, w and h the last minus the first, so (x0, y0, x1, y1 exclusive) =
(x - 1, y - 1, x + w, y + h). A BBOX off by more than BBOX_TOLERANCE pixels is a warning (the mask
still wins). The CSV's Width/Height are not checked: two real rows (bus_0912-l, bus_0990-l) say 354
rows for images and masks of 352; the files are the truth.

Every image of one patient (`Case`) shares the group `busbra:<Case>`, so the left/right views of one
lesion never straddle folds. The source (site) is `busbra`.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

from training.datasets.imaging import mask_box
from training.datasets.roi_table import RoiRecord

NAME = "busbra"
MODALITY = "us"
CSV_NAME = "bus_data.csv"
PATHOLOGY = {"benign": "benign", "malignant": "malignant"}
BBOX_TOLERANCE = 2  # pixels, on each side


def find(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob(CSV_NAME)
                   if (p.parent / "Images").is_dir() and (p.parent / "Masks").is_dir()})


def mask_name(image_id: str) -> str:
    """bus_0001-l -> mask_0001-l.png"""
    return f"mask_{image_id.removeprefix('bus_')}.png"


def bbox_of_csv(text: str) -> tuple[int, int, int, int]:
    """'[x,y,w,h]' (MATLAB convention, see module doc) -> (x0, y0, x1, y1 exclusive)."""
    values = json.loads(text)
    if not (isinstance(values, list) and len(values) == 4 and all(isinstance(v, (int, float)) for v in values)):
        raise ValueError(f"not [x, y, width, height]: {text!r}")
    x, y, w, h = (int(round(v)) for v in values)
    return x - 1, y - 1, x + w, y + h


def read(root: Path, warn: Callable[[str], None]) -> list[RoiRecord]:
    table = root / CSV_NAME
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = [(f"{table}:{reader.line_num}", {(k or "").strip(): (v or "").strip() for k, v in r.items()})
                    for r in reader]
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        warn(f"{table}: unreadable ({e}); skipped")
        return []
    missing = {"ID", "Case", "Pathology"} - {h.strip() for h in header}
    if missing:
        warn(f"{table}: no column {', '.join(sorted(missing))} (header {header}); skipped")
        return []
    records: list[RoiRecord] = []
    listed: set[str] = set()
    for where, row in rows:
        image_id, case = row.get("ID", ""), row.get("Case", "")
        if not image_id:
            warn(f"{where}: row without an ID; skipped")
            continue
        if image_id in listed:
            warn(f"{where}: {image_id} listed twice; skipped")
            continue
        listed.add(image_id)
        pathology = row.get("Pathology", "")
        label = PATHOLOGY.get(pathology.lower())
        if label is None:
            warn(f"{where}: {image_id} has unknown Pathology {pathology!r} (expected benign or malignant); skipped")
            continue
        if not case:
            warn(f"{where}: {image_id} has no Case (patient id); skipped")
            continue
        image, mask = root / "Images" / f"{image_id}.png", root / "Masks" / mask_name(image_id)
        if not image.is_file():
            warn(f"{image}: image of {where} not found; skipped")
            continue
        box = mask_box(image, mask, label, warn)
        if box is None:
            continue
        if row.get("BBOX"):
            try:
                listed_box = bbox_of_csv(row["BBOX"])
            except ValueError as e:
                warn(f"{where}: {image_id} BBOX unreadable ({e}); the mask's box is used")
            else:
                if max(abs(a - b) for a, b in zip(box, listed_box)) > BBOX_TOLERANCE:
                    warn(f"{where}: {image_id} BBOX {row['BBOX']} is {listed_box} (x0, y0, x1, y1) but the mask "
                         f"{mask.name} spans {box}; the mask's box is used")
        note = "; ".join(v for v in (row.get("Histology", ""),
                                     f"BI-RADS {row['BIRADS']}" if row.get("BIRADS") else "") if v)
        records.append(RoiRecord(
            image_path=str(image.resolve()), modality=MODALITY, label=label, source=NAME, group=f"{NAME}:{case}",
            x0=box[0], y0=box[1], x1=box[2], y1=box[3], mask_paths=str(mask.resolve()),
            lesion_id=f"{NAME}:{image_id}", note=note))
    for image in sorted((root / "Images").glob("*.png")):
        if image.stem not in listed:
            warn(f"{image}: not listed in {table}; skipped")
    return records
