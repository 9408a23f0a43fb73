"""INbreast (Moreira et al. 2012): `INbreast.csv`/`.xls` + `AllDICOMs/` + `AllXML/<file id>.xml`.

Images are `<file id>_<patient hash>_MG_<R|L>_<CC|ML>_ANON.dcm` (PNG/JPEG conversions with the same
name, in AllDICOMs/ or any folder beside it, are preferred: crops are read with Pillow). The table
(`;`-separated in the release) gives each file's BI-RADS; labels follow the usual INbreast
convention: 1 normal, 2-3 benign, 4a/4b/4c/5/6 malignant (0 = incomplete: warned, skipped).

Outlines are OsiriX plists: Images[0].ROIs[*] with `Name` and `Point_px` "(x, y)" strings; each
lesion ROI becomes one record with the points' bounding box (x1/y1 exclusive) and the image's label.
Single `Calcification` ROIs are left out: they are individual specks of a few pixels, and the
lesion they belong to is outlined as a `Cluster`. ROIs of fewer than 3 points are markers, not
outlines. Groups are patients: `Patient ID` where the table has one ("removed" in the release),
else the patient hash in the file name (the same for every image of a woman), else the file.
"""
from __future__ import annotations

import csv
import math
import plistlib
import re
from pathlib import Path
from typing import Callable

from training.datasets import imaging
from training.datasets.imaging import ImageError, image_size, is_image_file, preferred
from training.datasets.roi_table import RoiRecord

NAME = "inbreast"
MODALITY = "dm"
TABLES = ("INbreast.csv", "INbreast.xls")
FILE_RE = re.compile(r"^(?P<id>\d+)(_(?P<patient>[0-9a-fA-F]+)_MG_(?P<side>[LR])_(?P<view>[A-Z]+)_ANON)?$")
BIRADS_RE = re.compile(r"^(?P<n>[0-6])(?P<sub>[abc])?$", re.I)
POINT_RE = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")
SKIPPED_ROIS = ("calcification", "calcifications")
NO_PATIENT = ("", "removed", "nan", "none")


def find(root: Path) -> list[Path]:
    return sorted({p.parent for name in TABLES for p in root.rglob(name)
                   if (p.parent / "AllXML").is_dir() or (p.parent / "AllDICOMs").is_dir()})


def label_of(birads: str) -> str | None:
    """'1' normal, '2'/'3' benign, '4a'..'6' malignant; None for 0 or anything else."""
    m = BIRADS_RE.match(birads.strip())
    if not m or m.group("n") == "0" or (m.group("sub") and m.group("n") != "4"):
        return None
    n = int(m.group("n"))
    return "normal" if n == 1 else "benign" if n <= 3 else "malignant"


def _table(root: Path, warn: Callable[[str], None]) -> tuple[Path, list[tuple[int, dict[str, str]]]] | None:
    """(table file, [(line, row with lower-case keys)]) from the CSV, else from the XLS (needs xlrd)."""
    csv_path, xls_path = root / TABLES[0], root / TABLES[1]
    if csv_path.is_file():
        text = csv_path.read_text(errors="replace")
        header = text.splitlines()[0] if text else ""
        reader = csv.DictReader(text.splitlines(), delimiter=";" if header.count(";") > header.count(",") else ",")
        rows = [(reader.line_num, {(k or "").strip().lower(): (v or "").strip() for k, v in r.items()})
                for r in reader]
        return csv_path, rows
    if imaging.optional("xlrd") is None:
        warn(f"{xls_path}: reading .xls needs the xlrd package, which is not installed; install it or "
             f"save the sheet as {TABLES[0]} (';'-separated); {root} skipped")
        return None
    import pandas as pd
    try:
        df = pd.read_excel(xls_path, dtype=str).fillna("")
    except Exception as e:
        warn(f"{xls_path}: unreadable spreadsheet ({e}); {root} skipped")
        return None
    return xls_path, [(i + 2, {str(k).strip().lower(): str(v).strip() for k, v in r.items()})
                      for i, r in enumerate(df.to_dict("records"))]


def _images(root: Path) -> dict[str, Path]:
    """file id -> image, from AllDICOMs/ and any other folder beside the table (PNG conversions)."""
    files = [f for d in [root, *sorted(p for p in root.iterdir() if p.is_dir())] for f in d.iterdir()
             if f.is_file() and is_image_file(f) and FILE_RE.match(f.stem)]
    out: dict[str, Path] = {}
    for f in preferred(files):
        out.setdefault(FILE_RE.match(f.stem).group("id"), f)  # type: ignore[union-attr]
    return out


def _file_id(value: str) -> str:
    """'22678622' or, from a spreadsheet, '22678622.0'."""
    try:
        return str(int(float(value)))
    except ValueError:
        return value


def _rois(xml: Path) -> list[tuple[str, list[tuple[float, float]]]]:
    with open(xml, "rb") as f:
        doc = plistlib.load(f)
    out = []
    for image in doc.get("Images", []):
        for roi in image.get("ROIs", []):
            points = []
            for s in roi.get("Point_px", []):
                nums = POINT_RE.findall(str(s))
                if len(nums) >= 2:
                    points.append((float(nums[0]), float(nums[1])))
            out.append((str(roi.get("Name", "")).strip(), points))
    return out


def read(root: Path, warn: Callable[[str], None]) -> list[RoiRecord]:
    table = _table(root, warn)
    if table is None:
        return []
    table_path, rows = table
    images = _images(root)
    records: list[RoiRecord] = []
    for line, row in rows:
        fid = _file_id(row.get("file name", ""))
        if not fid:
            continue  # the release's table ends with empty rows
        where = f"{table_path}:{line}"
        birads = row.get("bi-rads", "")
        label = label_of(birads)
        if label is None:
            warn(f"{where}: file {fid} has unknown Bi-Rads {birads!r}; skipped")
            continue
        image = images.get(fid)
        if image is None:
            warn(f"{root / 'AllDICOMs' / (fid + '_*_MG_*_ANON.dcm')}: image of {where} not found "
                 f"(nor a .png/.jpg of it); skipped")
            continue
        try:
            width, height = image_size(image)
        except ImageError as e:
            warn(f"{image}: {e}; skipped")
            continue
        patient = row.get("patient id", "")
        if patient.lower() in NO_PATIENT:
            patient = FILE_RE.match(image.stem).group("patient") or fid  # type: ignore[union-attr]
        common = dict(image_path=str(image.resolve()), modality=MODALITY, label=label, source=NAME,
                      group=f"{NAME}:{patient}")
        if label == "normal":
            records.append(RoiRecord(lesion_id=f"{NAME}:{fid}", note=f"BI-RADS {birads}", **common))
            continue
        xml = root / "AllXML" / f"{fid}.xml"
        if not xml.is_file():
            warn(f"{xml}: missing, so the BI-RADS {birads} image {image.name} has no lesion outline; skipped")
            continue
        try:
            rois = _rois(xml)
        except Exception as e:
            warn(f"{xml}: unreadable ROI plist ({e}); {image.name} skipped")
            continue
        n = outside = 0
        for name, points in rois:
            if name.lower() in SKIPPED_ROIS or len(points) < 3:
                continue
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
            x1, y1 = min(width, math.floor(max(xs)) + 1), min(height, math.floor(max(ys)) + 1)
            if not (x1 > x0 and y1 > y0):
                warn(f"{xml}: {name} ROI lies outside the {width}x{height} image {image.name}; ROI skipped")
                outside += 1
                continue
            n += 1
            records.append(RoiRecord(x0=x0, y0=y0, x1=x1, y1=y1, lesion_id=f"{NAME}:{fid}:{n}",
                                     note=f"{name}; BI-RADS {birads}", **common))
        if n == 0 and not outside:
            warn(f"{xml}: no lesion outline (only {', '.join(sorted({r[0] for r in rois})) or 'no ROIs'}) "
                 f"for the BI-RADS {birads} image {image.name}; skipped")
    return records
