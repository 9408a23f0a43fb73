"""VinDr-Mammo (Nguyen et al. 2023, PhysioNet): `finding_annotations.csv` + `images/<study_id>/<image_id>.dicom`.

One CSV row per finding box (xmin, ymin, xmax, ymax in pixels of the `width` x `height` DICOM);
images without findings have one row with `['No Finding']` and empty coordinates, and become one
normal record without a box. The label is the finding's own BI-RADS (2-3 benign, 4-5 malignant),
not the breast's. A PNG/JPEG conversion beside the DICOM is preferred (crops are read with
Pillow); conversions are often downscaled, so boxes are scaled by image size / CSV size. Groups
are studies (the release has no patient id; a study is the 4 views of one woman's exam).
"""
from __future__ import annotations

import ast
import csv
import re
from pathlib import Path
from typing import Callable

from training.datasets.imaging import ImageError, image_size, locate
from training.datasets.roi_table import RoiRecord

NAME = "vindr"
MODALITY = "dm"
TABLE = "finding_annotations.csv"
BIRADS_RE = re.compile(r"^(?:BI-?RADS)?\s*(?P<n>[0-6])[ABC]?$", re.I)
LABELS = {2: "benign", 3: "benign", 4: "malignant", 5: "malignant"}


def find(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob(TABLE)})


def label_of(finding_birads: str) -> str | None:
    m = BIRADS_RE.match(finding_birads.strip())
    return LABELS.get(int(m.group("n"))) if m else None


def _categories(value: str) -> list[str]:
    """"['Mass', 'Suspicious Calcification']" -> the list (a plain string is one category)."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return [value] if value else []
    return [str(c) for c in parsed] if isinstance(parsed, (list, tuple)) else [str(parsed)]


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return None if x != x else x  # NaN (pandas exports) counts as empty


def read(root: Path, warn: Callable[[str], None]) -> list[RoiRecord]:
    table = root / TABLE
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        rows = [(reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in r.items()}) for r in reader]
    records: list[RoiRecord] = []
    images: dict[str, tuple[Path, tuple[int, int]] | None] = {}
    boxed: set[str] = set()       # images with at least one usable finding
    normal_rows: dict[str, tuple[str, dict[str, str]]] = {}
    counts: dict[str, int] = {}
    for line, row in rows:
        where = f"{table}:{line}"
        study, image_id = row.get("study_id", ""), row.get("image_id", "")
        if not study or not image_id:
            warn(f"{where}: row without study_id or image_id; skipped")
            continue
        if image_id not in images:
            images[image_id] = _image(root, study, image_id, warn)
        found = images[image_id]
        if found is None:
            continue
        path, (width, height) = found
        coords = [_number(row.get(k, "")) for k in ("xmin", "ymin", "xmax", "ymax")]
        if all(c is None for c in coords):
            normal_rows.setdefault(image_id, (study, row))  # normal only if the image has no finding box
            continue
        if any(c is None for c in coords):
            warn(f"{where}: {image_id} has an incomplete box {coords}; skipped")
            continue
        label = label_of(row.get("finding_birads", ""))
        if label is None:
            warn(f"{where}: {image_id} box has unknown finding_birads {row.get('finding_birads', '')!r}; skipped")
            continue
        sx, sy = _scale(row, width, height)
        x0, y0, x1, y1 = (c * s for c, s in zip(coords, (sx, sy, sx, sy)))  # type: ignore[operator]
        x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
        if not (x1 > x0 and y1 > y0):
            warn(f"{where}: {image_id} box {coords} is empty or outside the {width}x{height} image {path.name}; "
                 f"skipped")
            continue
        n = counts[image_id] = counts.get(image_id, 0) + 1
        boxed.add(image_id)
        records.append(RoiRecord(
            image_path=str(path.resolve()), modality=MODALITY, label=label, source=NAME, group=f"{NAME}:{study}",
            x0=x0, y0=y0, x1=x1, y1=y1, lesion_id=f"{NAME}:{image_id}:{n}",
            note=f"{', '.join(_categories(row.get('finding_categories', '')))}; {row.get('finding_birads', '')}; "
                 f"{row.get('split', '')}"))
    for image_id, (study, row) in normal_rows.items():
        if image_id in boxed:
            continue
        path, _ = images[image_id]  # type: ignore[misc]
        records.append(RoiRecord(
            image_path=str(path.resolve()), modality=MODALITY, label="normal", source=NAME, group=f"{NAME}:{study}",
            lesion_id=f"{NAME}:{image_id}",
            note=f"{', '.join(_categories(row.get('finding_categories', '')))}; {row.get('breast_birads', '')}; "
                 f"{row.get('split', '')}"))
    return records


def _image(root: Path, study: str, image_id: str, warn: Callable[[str], None]) -> tuple[Path, tuple[int, int]] | None:
    expected = root / "images" / study / f"{image_id}.dicom"
    path = locate(expected)
    if path is None:
        warn(f"{expected}: image not found (nor a .png/.jpg of it); its rows skipped")
        return None
    try:
        return path, image_size(path)
    except ImageError as e:
        warn(f"{path}: {e}; its rows skipped")
        return None


def _scale(row: dict[str, str], width: int, height: int) -> tuple[float, float]:
    """Box scale from the CSV's (DICOM) size to the file's size: 1 for the DICOM itself."""
    w, h = _number(row.get("width", "")), _number(row.get("height", ""))
    return (width / w if w else 1.0), (height / h if h else 1.0)
