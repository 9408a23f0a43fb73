"""UDIAT "Dataset B" (Yap et al. 2018): `original/NNNNNN.png` + `GT/NNNNNN.png` masks + `DatasetB.xlsx`.

The spreadsheet lists `Image` (a number: 1 means 000001.png) and `Type` (Benign / Malignant).
A `labels.csv` (columns image,type) converted from it wins where present, because it was made on
purpose; else the .xlsx is read with openpyxl if installed (not a dependency), else the set is
skipped with a warning saying how to fix it.
The box is the mask's nonzero pixels. There are no patient ids, so each image is its own group.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable


from training.datasets import imaging
from training.datasets.imaging import mask_box
from training.datasets.roi_table import RoiRecord

NAME = "udiat"
MODALITY = "us"
TYPES = {"benign": "benign", "malignant": "malignant"}
CSV_NAMES = ("labels.csv", "DatasetB.csv")
XLSX = "DatasetB.xlsx"


def find(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("original") if p.is_dir() and (p.parent / "GT").is_dir()})


def _image_id(value: object) -> str:
    """1, 1.0, '000001' or '000001.png' -> '000001'."""
    s = str(value).strip()
    s = s.rsplit(".", 1)[0] if s.lower().endswith((".png", ".bmp", ".jpg")) else s
    try:
        return f"{int(float(s)):06d}"
    except ValueError:
        return s


def _labels(root: Path, warn: Callable[[str], None]) -> tuple[Path, list[tuple[str, str, str]]] | None:
    """(label file, [(where, image id, type)]) from labels.csv, else from DatasetB.xlsx via openpyxl."""
    for name in CSV_NAMES:
        path = root / name
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                out = []
                for r in reader:
                    row = {(k or "").strip().lower(): (v or "").strip() for k, v in r.items()}
                    out.append((f"{path}:{reader.line_num}", row.get("image", ""), row.get("type", "")))
            return path, out
    xlsx = root / XLSX
    if not xlsx.is_file():
        warn(f"{root}: no {XLSX} or {CSV_NAMES[0]} (columns image,type) with the labels; skipped")
        return None
    openpyxl = imaging.optional("openpyxl")
    if openpyxl is None:
        warn(f"{xlsx}: reading .xlsx needs the openpyxl package, which is not installed; install it or save "
             f"the sheet as {root / CSV_NAMES[0]} with columns image,type; skipped")
        return None
    try:
        sheet = openpyxl.load_workbook(xlsx, read_only=True, data_only=True).worksheets[0]
        rows = list(sheet.iter_rows(values_only=True))
    except Exception as e:
        warn(f"{xlsx}: unreadable spreadsheet ({e}); skipped")
        return None
    header = [str(c or "").strip().lower() for c in rows[0]] if rows else []
    if "image" not in header or "type" not in header:
        warn(f"{xlsx}: first row has no Image and Type columns ({header}); skipped")
        return None
    i, t = header.index("image"), header.index("type")
    return xlsx, [(f"{xlsx}:{n}", str(r[i] if r[i] is not None else ""), str(r[t] if r[t] is not None else ""))
                  for n, r in enumerate(rows[1:], start=2) if any(c is not None for c in r)]


def read(root: Path, warn: Callable[[str], None]) -> list[RoiRecord]:
    labels = _labels(root, warn)
    if labels is None:
        return []
    label_path, rows = labels
    records: list[RoiRecord] = []
    listed: set[str] = set()
    for where, raw_id, kind in rows:
        image_id = _image_id(raw_id)
        if not image_id:
            continue
        if image_id in listed:
            warn(f"{where}: image {image_id} listed twice; skipped")
            continue
        listed.add(image_id)
        label = TYPES.get(kind.strip().lower())
        if label is None:
            warn(f"{where}: image {image_id} has unknown type {kind!r}; skipped")
            continue
        image, mask = root / "original" / f"{image_id}.png", root / "GT" / f"{image_id}.png"
        if not image.is_file():
            warn(f"{image}: image listed in {where} not found; skipped")
            continue
        box = mask_box(image, mask, label, warn)
        if box is None:
            continue
        records.append(RoiRecord(
            image_path=str(image.resolve()), modality=MODALITY, label=label, source=NAME, group=f"{NAME}:{image_id}",
            x0=box[0], y0=box[1], x1=box[2], y1=box[3], mask_paths=str(mask.resolve()),
            lesion_id=f"{NAME}:{image_id}", note=kind.strip()))
    for image in sorted((root / "original").glob("*.png")):
        if image.stem not in listed:
            warn(f"{image}: not listed in {label_path}; skipped")
    return records
