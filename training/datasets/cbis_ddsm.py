"""CBIS-DDSM (Lee et al. 2017, TCIA): `{mass,calc}_case_description_{train,test}_set.csv` + image tree.

Each CSV row is one abnormality: `image file path` is the full mammogram, `ROI mask file path` its
binary mask, both relative to the download folder (or its `CBIS-DDSM/` subfolder). The box is the
mask's nonzero pixels, so the mask must have the image's size.

Where files are: a path is tried as written, then with .png/.jpg (common conversions, preferred
because the crops are read with Pillow). The NBIA Data Retriever renames the inner folders
(`.../07-20-2016-DDSM-74994/1.000000-full mammogram images-24515/1-1.dcm`), so a path not found is
looked up in its first folder (`Mass-Training_P_00001_LEFT_CC`), which holds that one image. An
ROI folder (`..._LEFT_CC_1`) holds the mask and the cropped lesion, and in some rows the two paths
are swapped (a known quirk of the release): the mask is the candidate with the image's size.

BENIGN_WITHOUT_CALLBACK is benign (benign enough that no recall was asked). Groups are patients,
so the mass and calc rows and both breasts of one woman stay in one fold.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Callable

from models.preprocessing import box_of_mask
from training.datasets.imaging import ImageError, image_size, is_image_file, locate, preferred, read_mask
from training.datasets.roi_table import RoiRecord

NAME = "cbis_ddsm"
MODALITY = "dm"
CSV_RE = re.compile(r"^(?P<kind>mass|calc)_case_description_(?P<split>train|test)_set\.csv$", re.I)
PATHOLOGY = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
# CSV name -> the prefix of TCIA's folder names, e.g. Mass-Training_P_00001_LEFT_CC_1
PREFIX = {"mass": "Mass", "calc": "Calc", "train": "Training", "test": "Test"}


def find(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("*_case_description_*.csv") if CSV_RE.match(p.name)})


def _bases(root: Path) -> list[Path]:
    return [root, root / "CBIS-DDSM"]


def _resolve(root: Path, rel: str) -> Path | None:
    for base in _bases(root):
        p = locate(base / rel)
        if p is not None:
            return p
    return None


def _folder_files(root: Path, rel: str) -> list[Path]:
    """Image files anywhere under the path's first folder (NBIA layout), one per name."""
    top = rel.split("/")[0]
    for base in _bases(root):
        if top and (base / top).is_dir():
            return preferred([p for p in (base / top).rglob("*") if p.is_file() and is_image_file(p)])
    return []


def _row(raw: dict[str, str | None]) -> dict[str, str]:
    """Headers differ between the CSVs (`breast_density` / `breast density`); paths may end in a newline."""
    return {(k or "").strip().lower().replace("_", " "): (v or "").strip().replace("\\", "/")
            for k, v in raw.items()}


def read(root: Path, warn: Callable[[str], None]) -> list[RoiRecord]:
    records: list[RoiRecord] = []
    sizes: dict[Path, tuple[int, int] | None] = {}
    seen: set[str] = set()

    def size_of(path: Path) -> tuple[int, int] | None:
        if path not in sizes:
            try:
                sizes[path] = image_size(path)
            except ImageError as e:
                warn(f"{path}: {e}; skipped")
                sizes[path] = None
        return sizes[path]

    for csv_path in sorted(p for p in root.iterdir() if CSV_RE.match(p.name)):
        m = CSV_RE.match(csv_path.name)
        assert m is not None
        kind, split = m.group("kind").lower(), m.group("split").lower()
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            for raw in reader:
                where = f"{csv_path}:{reader.line_num}"
                row = _row(raw)
                patient, side = row.get("patient id", ""), row.get("left or right breast", "")
                view = row.get("image view", "")
                pathology = row.get("pathology", "").upper()
                if not patient or not row.get("image file path") or not row.get("roi mask file path"):
                    warn(f"{where}: row without patient_id, image file path or ROI mask file path; skipped")
                    continue
                if pathology not in PATHOLOGY:
                    warn(f"{where}: {patient} has unknown pathology {pathology!r}; skipped")
                    continue
                lesion_id = (f"{NAME}:{PREFIX[kind]}-{PREFIX[split]}_{patient}_{side}_{view}_"
                             f"{row.get('abnormality id', '')}")
                if lesion_id in seen:
                    warn(f"{where}: duplicate row for {lesion_id}; skipped")
                    continue
                image = _resolve(root, row["image file path"])
                if image is None:
                    in_folder = _folder_files(root, row["image file path"])
                    image = in_folder[0] if len(in_folder) == 1 else None
                if image is None:
                    warn(f"{root / row['image file path']}: image not found (nor a .png/.jpg of it, nor a "
                         f"single image in its folder); {where} skipped")
                    continue
                size = size_of(image)
                if size is None:
                    continue
                mask = _find_mask(root, row, size, where, warn)
                if mask is None:
                    continue
                try:
                    box = box_of_mask(read_mask(mask))
                except ImageError as e:
                    warn(f"{mask}: {e}; skipped")
                    continue
                if box is None:
                    warn(f"{mask}: empty ROI mask for {image.name}; skipped")
                    continue
                seen.add(lesion_id)
                records.append(RoiRecord(
                    image_path=str(image.resolve()), modality=MODALITY, label=PATHOLOGY[pathology], source=NAME,
                    group=f"{NAME}:{patient}", x0=box[0], y0=box[1], x1=box[2], y1=box[3],
                    mask_paths=str(mask.resolve()), lesion_id=lesion_id,
                    note=(f"{row.get('abnormality type', kind)}; {pathology}; BI-RADS {row.get('assessment', '?')}; "
                          f"density {row.get('breast density', '?')}; {split}")))
    return records


def _find_mask(root: Path, row: dict[str, str], size: tuple[int, int], where: str,
               warn: Callable[[str], None]) -> Path | None:
    """The file of this ROI with the image's size: the mask path, else (swapped rows) the crop path, else
    any file in the ROI folder."""
    candidates: list[Path] = []
    for rel in (row["roi mask file path"], row.get("cropped image file path", "")):
        p = _resolve(root, rel) if rel else None
        if p is not None and p not in candidates:
            candidates.append(p)
    candidates += [p for p in _folder_files(root, row["roi mask file path"]) if p not in candidates]
    if not candidates:
        warn(f"{root / row['roi mask file path']}: ROI mask not found (also tried .png/.jpg); {where} skipped")
        return None
    found: dict[Path, tuple[int, int]] = {}
    errors: list[str] = []
    for p in candidates:
        try:
            found[p] = image_size(p)
        except ImageError as e:
            errors.append(f"{p}: {e}")
            continue
        if found[p] == size:
            return p
    if not found:
        warn(f"{errors[0]}; {where} skipped")
        return None
    p, (w, h) = next(iter(found.items()))
    warn(f"{p}: mask is {w}x{h} but the image is {size[0]}x{size[1]}; {where} skipped")
    return None
