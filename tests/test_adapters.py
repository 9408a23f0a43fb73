"""Dataset adapters on tiny fixtures written in each set's published layout, and on broken input.

Every bad file must give one warning naming it while the other rows are still read.
"""
from __future__ import annotations

import csv
import plistlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.preprocessing import box_of_mask
from training.datasets import busbra, cbis_ddsm, discover, folders, imaging, inbreast, udiat, vindr
from training.datasets.roi_table import read_table
from training.rois.prepare import prepare


def png(path: Path, w: int, h: int, box: tuple[int, int, int, int] | None = None, seed: int = 0) -> Path:
    """Gray PNG; with `box`, a binary mask (255 inside x0:x1, y0:y1) instead of noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if box is None:
        arr = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    else:
        arr = np.zeros((h, w), np.uint8)
        arr[box[1]:box[3], box[0]:box[2]] = 255
    Image.fromarray(arr).save(path)
    return path


def corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return path


def run(adapter, root: Path) -> tuple[list, list[str]]:
    warnings: list[str] = []
    records = adapter.read(root, warnings.append)
    return records, warnings


def rows(records) -> list[tuple]:
    return [(r.lesion_id, r.label, r.box, r.group) for r in records]


def warned(warnings: list[str], *parts: str) -> bool:
    return any(all(p in w for p in parts) for w in warnings)


@pytest.fixture
def no_optional(monkeypatch):
    """Pretend pydicom / openpyxl / xlrd are not installed, whatever this machine has."""
    monkeypatch.setattr(imaging, "optional", lambda name: None)


# ---------------------------------------------------------------- CBIS-DDSM

MASS_HEADER = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
               "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
               "image file path", "cropped image file path", "ROI mask file path"]
CALC_HEADER = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
               "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
               "image file path", "cropped image file path", "ROI mask file path"]


def uid(n: int) -> str:
    return f"1.3.6.1.4.1.9590.100.1.2.{n}"


def cbis_paths(prefix: str, patient: str, side: str, view: str, abn: int) -> tuple[str, str, str]:
    """(image, cropped, mask) as the official CSVs write them."""
    full = f"{prefix}_{patient}_{side}_{view}"
    roi = f"{full}_{abn}"
    return (f"{full}/{uid(1)}/{uid(2)}/000000.dcm", f"{roi}/{uid(3)}/{uid(4)}/000000.dcm",
            f"{roi}/{uid(3)}/{uid(4)}/000001.dcm\n")  # the real CSVs end some paths with a newline


def write_csv(path: Path, header: list[str], body: list[list], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(body)


def mass_row(patient, side, view, abn, pathology, paths):
    return [patient, 3, side, view, abn, "mass", "IRREGULAR", "SPICULATED", 4, pathology, 4, *paths]


def make_cbis(root: Path) -> Path:
    def conv(rel: str) -> Path:  # where a PNG conversion of a CSV path lies
        return root / rel.strip().replace(".dcm", ".png")

    body = []
    # two masses on one image of P_00001, the second BENIGN_WITHOUT_CALLBACK
    img, crop, mask = cbis_paths("Mass-Training", "P_00001", "LEFT", "CC", 1)
    png(conv(img), 80, 60)
    png(conv(mask), 80, 60, (10, 12, 30, 25))
    png(conv(crop), 20, 13, seed=1)
    body.append(mass_row("P_00001", "LEFT", "CC", 1, "MALIGNANT", (img, crop, mask)))
    _, crop2, mask2 = cbis_paths("Mass-Training", "P_00001", "LEFT", "CC", 2)
    png(conv(mask2), 80, 60, (50, 5, 60, 9))
    body.append(mass_row("P_00001", "LEFT", "CC", 2, "BENIGN_WITHOUT_CALLBACK", (img, crop2, mask2)))
    # the known swap: "ROI mask file path" names the small crop, "cropped image file path" the mask
    img, crop, mask = cbis_paths("Mass-Training", "P_00004", "RIGHT", "MLO", 1)
    png(conv(img), 70, 90)
    png(conv(mask), 30, 20, seed=2)
    png(conv(crop), 70, 90, (5, 6, 7, 8))
    body.append(mass_row("P_00004", "RIGHT", "MLO", 1, "BENIGN", (img, crop, mask)))
    # broken rows
    img, crop, mask = cbis_paths("Mass-Training", "P_00005", "LEFT", "CC", 1)  # image missing
    png(conv(mask), 80, 60, (1, 1, 4, 4))
    body.append(mass_row("P_00005", "LEFT", "CC", 1, "BENIGN", (img, crop, mask)))
    img, crop, mask = cbis_paths("Mass-Training", "P_00006", "LEFT", "CC", 1)  # corrupt image
    corrupt(conv(img))
    png(conv(mask), 80, 60, (1, 1, 4, 4))
    body.append(mass_row("P_00006", "LEFT", "CC", 1, "BENIGN", (img, crop, mask)))
    img, crop, mask = cbis_paths("Mass-Training", "P_00007", "LEFT", "CC", 1)  # mask of another size
    png(conv(img), 80, 60)
    png(conv(mask), 40, 30, (1, 1, 4, 4))
    body.append(mass_row("P_00007", "LEFT", "CC", 1, "BENIGN", (img, crop, mask)))
    img, crop, mask = cbis_paths("Mass-Training", "P_00008", "LEFT", "CC", 1)  # empty mask
    png(conv(img), 80, 60)
    png(conv(mask), 80, 60, (0, 0, 0, 0))
    body.append(mass_row("P_00008", "LEFT", "CC", 1, "BENIGN", (img, crop, mask)))
    img, crop, mask = cbis_paths("Mass-Training", "P_00009", "LEFT", "CC", 1)  # unknown pathology
    png(conv(img), 80, 60)
    png(conv(mask), 80, 60, (1, 1, 4, 4))
    body.append(mass_row("P_00009", "LEFT", "CC", 1, "UNPROVEN", (img, crop, mask)))
    img, crop, mask = cbis_paths("Mass-Training", "P_00010", "LEFT", "CC", 1)  # DICOM only
    (root / img).parent.mkdir(parents=True)
    (root / img).write_bytes(b"\0" * 128 + b"DICM")
    body.append(mass_row("P_00010", "LEFT", "CC", 1, "BENIGN", (img, crop, mask)))
    write_csv(root / "mass_case_description_train_set.csv", MASS_HEADER, body)

    # NBIA Data Retriever layout: inner folders renamed, files 1-1.dcm (here PNG conversions)
    img, crop, mask = cbis_paths("Calc-Test", "P_00038", "LEFT", "CC", 1)
    nbia = root / "CBIS-DDSM"
    png(nbia / "Calc-Test_P_00038_LEFT_CC/08-29-2017-DDSM-96009/1.000000-full mammogram images-63992/1-1.png", 64, 64)
    roi = nbia / "Calc-Test_P_00038_LEFT_CC_1/08-29-2017-DDSM-06312"
    png(roi / "1.000000-ROI mask images-81015/1-1.png", 64, 64, (20, 30, 22, 35))
    png(roi / "1.000000-cropped images-41279/1-1.png", 2, 5, seed=3)
    write_csv(root / "calc_case_description_test_set.csv", CALC_HEADER,
              [["P_00038", 2, "LEFT", "CC", 1, "calcification", "PLEOMORPHIC", "CLUSTERED", 4, "MALIGNANT", 3,
                img, crop, mask]])
    return root


def test_cbis_ddsm_reads_masks_swaps_and_nbia_layout(tmp_path, no_optional):
    root = make_cbis(tmp_path / "cbis")
    assert cbis_ddsm.find(tmp_path) == [root]
    records, warnings = run(cbis_ddsm, root)
    assert rows(records) == [
        ("cbis_ddsm:Calc-Test_P_00038_LEFT_CC_1", "malignant", (20, 30, 22, 35), "cbis_ddsm:P_00038"),
        ("cbis_ddsm:Mass-Training_P_00001_LEFT_CC_1", "malignant", (10, 12, 30, 25), "cbis_ddsm:P_00001"),
        ("cbis_ddsm:Mass-Training_P_00001_LEFT_CC_2", "benign", (50, 5, 60, 9), "cbis_ddsm:P_00001"),
        ("cbis_ddsm:Mass-Training_P_00004_RIGHT_MLO_1", "benign", (5, 6, 7, 8), "cbis_ddsm:P_00004"),
    ]
    assert all(r.modality == "dm" and r.source == "cbis_ddsm" and Path(r.image_path).is_absolute() for r in records)
    assert records[1].image_path == records[2].image_path and records[1].image_path.endswith("000000.png")
    assert records[3].mask_paths.endswith("000000.png")  # the swapped file, picked by its size
    assert "BENIGN_WITHOUT_CALLBACK" in records[2].note
    assert warned(warnings, "P_00005_LEFT_CC", "000000.dcm", "not found")
    assert warned(warnings, "P_00006_LEFT_CC", "000000.png", "unreadable image")
    assert warned(warnings, "P_00007_LEFT_CC_1", "000001.png", "mask is 40x30 but the image is 80x60")
    assert warned(warnings, "P_00008_LEFT_CC_1", "000001.png", "empty ROI mask")
    assert warned(warnings, "mass_case_description_train_set.csv", "P_00009", "unknown pathology 'UNPROVEN'")
    assert warned(warnings, "P_00010_LEFT_CC", "000000.dcm", "pydicom is not installed")
    assert len(warnings) == 6, warnings


# ---------------------------------------------------------------- INbreast

def inbreast_xml(path: Path, rois: list[tuple[str, list[tuple[float, float]]]]) -> None:
    """An OsiriX ROI plist as in AllXML/."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"Images": [{"ImageHeight": 60, "ImageIndex": 0, "ImageWidth": 50, "NumberOfROIs": len(rois),
                       "ROIs": [{"Area": 0.0, "Center": "(0.000000, 0.000000, 0.000000)", "IndexInImage": i,
                                 "Name": name, "NumberOfPoints": len(pts), "Point_mm": [],
                                 "Point_px": [f"({x:.6f}, {y:.6f})" for x, y in pts], "Type": 15}
                                for i, (name, pts) in enumerate(rois)]}]}
    with open(path, "wb") as f:
        plistlib.dump(doc, f)


INBREAST_HEADER = ["Patient ID", "Patient age", "Laterality", "View", "Acquisition date", "File Name", "ACR", "Bi-Rads"]


def make_inbreast(root: Path, patient_ids: dict[str, str] | None = None) -> Path:
    cases = [  # file id, patient hash, side, view, Bi-Rads
        ("1001", "aaaa1111", "R", "CC", "1"), ("1002", "aaaa1111", "R", "MLO", "4c"),
        ("1003", "bbbb2222", "L", "CC", "2"), ("1004", "bbbb2222", "L", "MLO", "3"),
        ("1005", "cccc3333", "R", "CC", "5"), ("1006", "cccc3333", "R", "MLO", "5"),
        ("1007", "dddd4444", "L", "CC", "0"), ("1008", "dddd4444", "L", "MLO", "6"),
        ("1009", "eeee5555", "R", "CC", "4a"),
    ]
    body = []
    for fid, patient, side, view, birads in cases:
        name = f"{fid}_{patient}_MG_{side}_{view}_ANON"
        if fid == "1005":
            pass  # image missing
        elif fid == "1006":
            corrupt(root / "AllDICOMs" / f"{name}.png")
        elif fid == "1009":
            (root / "AllDICOMs" / f"{name}.dcm").write_bytes(b"\0" * 132)  # DICOM only
        else:
            png(root / "AllDICOMs" / f"{name}.png", 50, 60, seed=int(fid))
        pid = (patient_ids or {}).get(fid, "removed")
        body.append([pid, "removed", side, view, "201001", fid, "2 ", birads])
    body.append(["", "", "", "", "", "", "", ""])  # the release's table ends with empty rows
    write_csv(root / "INbreast.csv", INBREAST_HEADER, body, delimiter=";")
    inbreast_xml(root / "AllXML" / "1002.xml", [
        ("Mass", [(10.0, 20.0), (30.5, 22.0), (25.0, 40.9), (12.0, 35.0)]),
        ("Calcification", [(5.0, 5.0)]),
        ("Cluster", [(40.0, 2.0), (45.0, 2.0), (44.0, 8.0)]),
    ])
    inbreast_xml(root / "AllXML" / "1003.xml", [("Mass", [(0.0, 0.0), (9.0, 0.0), (9.0, 9.0)])])
    inbreast_xml(root / "AllXML" / "1004.xml", [("Calcification", [(3.0, 3.0)])])  # no lesion outline
    inbreast_xml(root / "AllXML" / "1008.xml", [("Mass", [(100.0, 100.0), (120.0, 100.0), (120.0, 130.0)])])
    return root


def test_inbreast_reads_birads_outlines_and_patient_hash(tmp_path, no_optional):
    root = make_inbreast(tmp_path / "INbreast Release 1.0")
    assert inbreast.find(tmp_path) == [root]
    records, warnings = run(inbreast, root)
    assert rows(records) == [
        ("inbreast:1001", "normal", None, "inbreast:aaaa1111"),
        ("inbreast:1002:1", "malignant", (10, 20, 31, 41), "inbreast:aaaa1111"),
        ("inbreast:1002:2", "malignant", (40, 2, 46, 9), "inbreast:aaaa1111"),
        ("inbreast:1003:1", "benign", (0, 0, 10, 10), "inbreast:bbbb2222"),
    ]
    assert records[1].note == "Mass; BI-RADS 4c" and records[2].note == "Cluster; BI-RADS 4c"
    assert warned(warnings, "1004.xml", "no lesion outline")
    assert warned(warnings, "1005_*_MG_*_ANON.dcm", "not found")
    assert warned(warnings, "1006_cccc3333_MG_R_MLO_ANON.png", "unreadable image")
    assert warned(warnings, "INbreast.csv:8", "1007", "unknown Bi-Rads '0'")
    assert warned(warnings, "1008.xml", "outside the 50x60 image")
    assert warned(warnings, "1009_eeee5555_MG_R_CC_ANON.dcm", "pydicom is not installed")
    assert len(warnings) == 6, warnings


def test_inbreast_groups_by_patient_id_when_the_table_has_one(tmp_path, no_optional):
    root = make_inbreast(tmp_path / "ib", patient_ids={"1001": "P7", "1002": "P7", "1003": "P8"})
    records, _ = run(inbreast, root)
    assert {r.lesion_id: r.group for r in records} == {
        "inbreast:1001": "inbreast:P7", "inbreast:1002:1": "inbreast:P7", "inbreast:1002:2": "inbreast:P7",
        "inbreast:1003:1": "inbreast:P8"}


@pytest.mark.parametrize("birads,label", [("1", "normal"), ("2", "benign"), ("3", "benign"), ("4a", "malignant"),
                                          ("4B", "malignant"), ("4c", "malignant"), ("5", "malignant"),
                                          ("6", "malignant"), ("0", None), ("7", None), ("2a", None), ("", None)])
def test_inbreast_birads_convention(birads, label):
    assert inbreast.label_of(birads) == label


def test_inbreast_xls_without_xlrd_is_a_clear_warning(tmp_path, no_optional):
    root = tmp_path / "ib"
    (root / "AllXML").mkdir(parents=True)
    (root / "INbreast.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    assert inbreast.find(tmp_path) == [root]
    records, warnings = run(inbreast, root)
    assert records == [] and warned(warnings, "INbreast.xls", "xlrd", "INbreast.csv")


# ---------------------------------------------------------------- VinDr-Mammo

VINDR_HEADER = ["image_id", "study_id", "series_id", "laterality", "view_position", "height", "width",
                "breast_birads", "breast_density", "finding_categories", "finding_birads",
                "xmin", "ymin", "xmax", "ymax", "split"]


def make_vindr(root: Path) -> Path:
    def image(study: str, image_id: str, w: int = 100, h: int = 80) -> Path:
        return png(root / "images" / study / f"{image_id}.png", w, h, seed=len(image_id))

    def row(image_id, study, cats, finding_birads, box, h=80, w=100, breast="BI-RADS 4"):
        return [image_id, study, "ser" + image_id, "L", "CC", h, w, breast, "DENSITY C", cats, finding_birads,
                *(box or ("", "", "", "")), "training"]

    image("st1", "img_a", 100, 80)  # a half-size PNG conversion of a 200x160 DICOM
    image("st1", "img_b")
    image("st2", "img_c")
    corrupt(root / "images" / "st3" / "img_e.png")
    image("st3", "img_f")
    image("st3", "img_g")
    (root / "images" / "st4").mkdir(parents=True)
    (root / "images" / "st4" / "img_h.dicom").write_bytes(b"\0" * 132)
    write_csv(root / "finding_annotations.csv", VINDR_HEADER, [
        row("img_a", "st1", "['Mass']", "BI-RADS 4", (20.0, 40.0, 60.0, 100.0), h=160, w=200),
        row("img_a", "st1", "['Suspicious Calcification', 'Mass']", "BI-RADS 3", (0, 0, 10, 10), h=160, w=200),
        row("img_b", "st1", "['No Finding']", "", None, breast="BI-RADS 1"),
        row("img_c", "st2", "['Mass']", "BI-RADS 5", (10.5, 20.25, 30.5, 40.75)),
        row("img_d", "st3", "['Mass']", "BI-RADS 4", (1, 1, 5, 5)),        # image missing
        row("img_e", "st3", "['Mass']", "BI-RADS 4", (1, 1, 5, 5)),        # corrupt image
        row("img_f", "st3", "['Mass']", "", (1, 1, 5, 5)),                 # box without BI-RADS
        row("img_g", "st3", "['Mass']", "BI-RADS 4", (150, 90, 170, 99)),  # outside the image
        row("img_h", "st4", "['Mass']", "BI-RADS 4", (1, 1, 5, 5)),        # DICOM only
    ])
    return root


def test_vindr_reads_findings_scales_boxes_and_groups_studies(tmp_path, no_optional):
    root = make_vindr(tmp_path / "vindr-mammo")
    assert vindr.find(tmp_path) == [root]
    records, warnings = run(vindr, root)
    assert rows(records) == [
        ("vindr:img_a:1", "malignant", (10.0, 20.0, 30.0, 50.0), "vindr:st1"),
        ("vindr:img_a:2", "benign", (0.0, 0.0, 5.0, 5.0), "vindr:st1"),
        ("vindr:img_c:1", "malignant", (10.5, 20.25, 30.5, 40.75), "vindr:st2"),
        ("vindr:img_b", "normal", None, "vindr:st1"),
    ]
    assert records[1].note == "Suspicious Calcification, Mass; BI-RADS 3; training"
    assert warned(warnings, "images/st3/img_d.dicom", "not found")
    assert warned(warnings, "img_e.png", "unreadable image")
    assert warned(warnings, "finding_annotations.csv:8", "img_f", "unknown finding_birads")
    assert warned(warnings, "finding_annotations.csv:9", "img_g", "outside the 100x80 image")
    assert warned(warnings, "img_h.dicom", "pydicom is not installed")
    assert len(warnings) == 5, warnings


# ---------------------------------------------------------------- UDIAT Dataset B

def make_udiat(root: Path) -> Path:
    png(root / "original/000001.png", 60, 50, seed=1)
    png(root / "GT/000001.png", 60, 50, (10, 20, 30, 40))
    png(root / "original/000002.png", 40, 45, seed=2)
    png(root / "GT/000002.png", 40, 45, (0, 1, 40, 45))
    png(root / "GT/000003.png", 40, 45, (0, 1, 4, 5))                   # image missing
    corrupt(root / "original/000004.png")                              # corrupt image
    png(root / "GT/000004.png", 40, 45, (0, 1, 4, 5))
    png(root / "original/000005.png", 40, 45, seed=5)                  # mask of another size
    png(root / "GT/000005.png", 45, 40, (0, 1, 4, 5))
    png(root / "original/000006.png", 40, 45, seed=6)                  # empty mask
    png(root / "GT/000006.png", 40, 45, (0, 0, 0, 0))
    png(root / "original/000007.png", 40, 45, seed=7)                  # unknown type
    png(root / "GT/000007.png", 40, 45, (0, 1, 4, 5))
    png(root / "original/000008.png", 40, 45, seed=8)                  # not in the label list
    png(root / "GT/000008.png", 40, 45, (0, 1, 4, 5))
    # converted from DatasetB.xlsx, where Image is a number
    write_csv(root / "labels.csv", ["image", "type"], [
        [1, "Benign"], ["000002", "Malignant"], [3, "Benign"], [4, "Benign"], [5, "Malignant"], [6, "Benign"],
        [7, "Cyst?"]])
    return root


def test_udiat_reads_labels_csv_and_masks(tmp_path):
    root = make_udiat(tmp_path / "BUS" / "Dataset_B")
    assert udiat.find(tmp_path) == [root]
    records, warnings = run(udiat, root)
    assert rows(records) == [
        ("udiat:000001", "benign", (10, 20, 30, 40), "udiat:000001"),
        ("udiat:000002", "malignant", (0, 1, 40, 45), "udiat:000002"),
    ]
    assert all(r.modality == "us" and r.mask_paths.endswith(f"GT/{r.lesion_id[-6:]}.png") for r in records)
    assert warned(warnings, "original/000003.png", "not found")
    assert warned(warnings, "original/000004.png", "unreadable image")
    assert warned(warnings, "GT/000005.png", "mask is 45x40 but image 000005.png is 40x45")
    assert warned(warnings, "GT/000006.png", "empty mask")
    assert warned(warnings, "labels.csv:8", "000007", "unknown type 'Cyst?'")
    assert warned(warnings, "original/000008.png", "not listed")
    assert len(warnings) == 6, warnings


def test_udiat_xlsx_without_openpyxl_is_a_clear_warning(tmp_path, no_optional):
    root = tmp_path / "Dataset_B"
    png(root / "original/000001.png", 10, 10)
    png(root / "GT/000001.png", 10, 10, (1, 1, 2, 2))
    (root / "DatasetB.xlsx").write_bytes(b"PK\x03\x04")
    records, warnings = run(udiat, root)
    assert records == [] and warned(warnings, "DatasetB.xlsx", "openpyxl", "labels.csv")


def test_udiat_reads_the_xlsx_with_openpyxl(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    root = tmp_path / "Dataset_B"
    png(root / "original/000001.png", 10, 10)
    png(root / "GT/000001.png", 10, 10, (1, 2, 3, 4))
    wb = openpyxl.Workbook()
    wb.active.append(["Image", "Type", "Diagnosis"])
    wb.active.append([1, "Malignant", "IDC"])
    wb.save(root / "DatasetB.xlsx")
    records, warnings = run(udiat, root)
    assert rows(records) == [("udiat:000001", "malignant", (1, 2, 3, 4), "udiat:000001")] and warnings == []


# ---------------------------------------------------------------- folder per class

def test_folders_whole_image_rois_and_modality(tmp_path):
    us = tmp_path / "kaggle_us"
    png(us / "benign" / "a.png", 30, 20)
    png(us / "Malignant" / "b.png", 25, 35)
    corrupt(us / "malignant_extra" / "ignored.png")  # not a class folder
    png(us / "normal" / "c.png", 10, 10)
    (us / "modality.txt").write_text("us\n")
    dm = tmp_path / "nested" / "dm_set"
    png(dm / "benign" / "d.jpg", 40, 40)
    corrupt(dm / "malignant" / "e.png")
    assert folders.find(tmp_path) == [us, dm]

    records, warnings = run(folders, us)
    assert rows(records) == [
        ("folders:kaggle_us/benign/a.png", "benign", (0, 0, 30, 20), "folders:kaggle_us/benign/a.png"),
        ("folders:kaggle_us/malignant/b.png", "malignant", (0, 0, 25, 35), "folders:kaggle_us/malignant/b.png"),
        ("folders:kaggle_us/normal/c.png", "normal", None, "folders:kaggle_us/normal/c.png"),
    ]
    assert {r.modality for r in records} == {"us"} and warnings == []

    records, warnings = run(folders, dm)
    assert rows(records) == [("folders:dm_set/benign/d.jpg", "benign", (0, 0, 40, 40), "folders:dm_set/benign/d.jpg")]
    assert records[0].modality == "us"  # no modality.txt: the default, with a warning
    assert warned(warnings, "dm_set/modality.txt", "missing") and warned(warnings, "malignant/e.png", "unreadable")
    assert len(warnings) == 2
    (dm / "modality.txt").write_text("DM")
    assert run(folders, dm)[0][0].modality == "dm"
    (dm / "modality.txt").write_text("mri")
    records, warnings = run(folders, dm)
    assert records[0].modality == "us" and warned(warnings, "modality.txt", "'mri'")


# ---------------------------------------------------------------- layouts do not claim each other

def test_each_layout_is_found_by_its_adapter_only(tmp_path, busi_dir, mias_dir, busbra_dir):
    roots = {
        "cbis_ddsm": make_cbis(tmp_path / "cbis"),
        "inbreast": make_inbreast(tmp_path / "inbreast"),
        "vindr": make_vindr(tmp_path / "vindr"),
        "udiat": make_udiat(tmp_path / "udiat"),
    }
    roots["folders"] = tmp_path / "classes"
    png(roots["folders"] / "benign" / "x.png", 8, 8)
    roots["busi"] = tmp_path / "busi"
    (roots["busi"] / "benign").mkdir(parents=True)
    for name in ("benign (1).png", "benign (1)_mask.png"):
        shutil.copy(busi_dir / "benign" / name, roots["busi"] / "benign" / name)
    roots["mias"] = tmp_path / "mias"
    (roots["mias"] / "all-mias").mkdir(parents=True)
    shutil.copy(mias_dir / "Info.txt", roots["mias"] / "Info.txt")
    roots["busbra"] = busbra_copy(busbra_dir, tmp_path / "busbra", ["bus_0001-l"])
    found = [(a.NAME, r) for a, r in discover(tmp_path)]
    assert sorted(found) == sorted(roots.items())


def test_shared_data_is_busi_busbra_and_mias(data_dir):
    assert [(a.NAME, r) for a, r in discover(data_dir)] == [
        ("busi", data_dir / "busi" / "Dataset_BUSI_with_GT"), ("busbra", data_dir / "busbra" / "BUSBRA"),
        ("mias", data_dir / "mias")]


# ---------------------------------------------------------------- BUS-BRA (real files)

@pytest.fixture(scope="session")
def busbra_dir(data_dir) -> Path:
    return data_dir / "busbra" / "BUSBRA"


def busbra_rows(busbra_dir: Path) -> dict[str, dict[str, str]]:
    with open(busbra_dir / "bus_data.csv", newline="") as f:
        return {r["ID"]: r for r in csv.DictReader(f)}


def busbra_copy(busbra_dir: Path, root: Path, ids: list[str], extra_rows: list[dict] = ()) -> Path:
    """A small BUS-BRA in its own layout: the real files and CSV rows of `ids` (+ `extra_rows`)."""
    (root / "Images").mkdir(parents=True)
    (root / "Masks").mkdir()
    table = busbra_rows(busbra_dir)
    for i in ids:
        shutil.copy(busbra_dir / "Images" / f"{i}.png", root / "Images")
        shutil.copy(busbra_dir / "Masks" / busbra.mask_name(i), root / "Masks")
    with open(busbra_dir / "bus_data.csv", newline="") as f:
        header = next(csv.reader(f))
    with open(root / "bus_data.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows([table[i] for i in ids] + list(extra_rows))
    return root


def test_busbra_reads_the_real_set(busbra_dir):
    records, warnings = run(busbra, busbra_dir)
    assert warnings == []
    assert len(records) == 902 and sum(r.label == "malignant" for r in records) == 285
    assert {r.source for r in records} == {"busbra"} and {r.modality for r in records} == {"us"}
    table = busbra_rows(busbra_dir)
    # one group per patient (Case): 488, and both views of a patient share it
    assert len({r.group for r in records}) == 488
    for r in records:
        row = table[r.lesion_id.removeprefix("busbra:")]
        assert r.group == f"busbra:{row['Case']}" and r.label == row["Pathology"]
        assert Path(r.image_path).name == f"{row['ID']}.png"
    first = {r.lesion_id: r for r in records}["busbra:bus_0001-l"]
    with Image.open(busbra_dir / "Masks" / "mask_0001-l.png") as m:
        assert first.box == box_of_mask(np.asarray(m.convert("L")) > 0) == busbra.bbox_of_csv("[91,24,103,79]")
    assert first.note == "invasive ductal carcinoma; BI-RADS 4"


def test_busbra_bad_input_is_named_and_the_rest_is_read(tmp_path, busbra_dir):
    good = ["bus_0001-l", "bus_0001-r", "bus_0002-l", "bus_0003-l"]
    table = busbra_rows(busbra_dir)
    root = busbra_copy(busbra_dir, tmp_path / "data" / "BUSBRA",
                       good + ["bus_0002-r", "bus_0004-l", "bus_0005-l", "bus_0006-s"],
                       extra_rows=[table["bus_0007-l"]])  # a row whose image is not there
    (root / "Masks" / "mask_0002-r.png").unlink()                          # image without its mask
    resized = root / "Masks" / "mask_0004-l.png"                           # mask of another size
    with Image.open(resized) as m:
        m.resize((m.width // 2, m.height // 2)).save(resized)
    text = (root / "bus_data.csv").read_text()
    for i, new in (("bus_0005-l", "borderline"), ("bus_0003-l", "Malignant ")):  # unknown; case and space
        old = table[i]["Pathology"]
        text = text.replace(f"{i},{table[i]['Case']},{table[i]['Histology']},{old},",
                            f"{i},{table[i]['Case']},{table[i]['Histology']},{new},")
    text = text.replace('"[91,24,103,79]"', '"[9,24,103,79]"')              # BBOX far from the mask: kept
    (root / "bus_data.csv").write_text(text)
    shutil.copy(busbra_dir / "Images" / "bus_0008-l.png", root / "Images")  # an image with no CSV row

    assert [(a.NAME, r) for a, r in discover(tmp_path / "data")] == [("busbra", root)]
    records, summary = prepare(tmp_path / "data", tmp_path / "out", log=lambda m: None)
    ids = [r.lesion_id for r in records]
    assert ids == ["busbra:bus_0001-l", "busbra:bus_0001-r", "busbra:bus_0002-l", "busbra:bus_0003-l",
                   "busbra:bus_0006-s"]
    assert {r.lesion_id: r.label for r in records}["busbra:bus_0003-l"] == "malignant"
    ws = summary.warnings
    assert warned(ws, "mask_0002-r.png", "not found", "bus_0002-r.png")
    assert warned(ws, "mask_0004-l.png", "mask is", "but image bus_0004-l.png is")
    assert warned(ws, "bus_data.csv:", "bus_0005-l", "unknown Pathology 'borderline'")
    assert warned(ws, "bus_0007-l.png", "not found", "bus_data.csv:10")
    assert warned(ws, "bus_0008-l.png", "not listed")
    assert warned(ws, "bus_0001-l BBOX [9,24,103,79]", "mask_0001-l.png", "the mask's box is used")
    assert len(ws) == 6, ws
    assert read_table(tmp_path / "out" / "rois.csv") == records
    # prepare --sources: only the named layouts; an unknown name is an error naming the known ones
    with pytest.raises(ValueError, match=r"no busi dataset under .*data \(it holds: busbra\)"):
        prepare(tmp_path / "data", tmp_path / "none", log=lambda m: None, sources=["busi"])
    with pytest.raises(ValueError, match="unknown source nope .*busbra"):
        prepare(tmp_path / "data", tmp_path / "none", log=lambda m: None, sources=["nope"])


# ---------------------------------------------------------------- BUSI with broken files (real images)

def test_busi_prepare_keeps_going_past_broken_files(tmp_path, busi_dir):
    root = tmp_path / "data" / "Dataset_BUSI_with_GT"
    for cls, n in (("benign", 1), ("benign", 2), ("benign", 3), ("malignant", 1)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for suffix in ("", "_mask"):
            shutil.copy(busi_dir / cls / f"{cls} ({n}){suffix}.png", root / cls / f"{cls} ({n}){suffix}.png")
    corrupt(root / "benign" / "benign (1).png")
    resized = root / "benign" / "benign (2)_mask.png"
    with Image.open(resized) as m:
        m.resize((m.width // 2, m.height // 2)).save(resized)
    blank = root / "benign" / "benign (3)_mask.png"
    with Image.open(blank) as m:
        Image.new("1", m.size).save(blank)

    assert [(a.NAME, r) for a, r in discover(tmp_path / "data")] == [("busi", root)]
    records, summary = prepare(tmp_path / "data", tmp_path / "out", log=lambda m: None)
    assert [r.lesion_id for r in records] == ["busi:malignant/malignant (1)"]
    with Image.open(busi_dir / "malignant" / "malignant (1)_mask.png") as m:
        assert records[0].box == box_of_mask(np.asarray(m.convert("L")) > 0)
    ws = summary.warnings
    assert warned(ws, "benign (1).png", "unreadable image")
    assert warned(ws, "benign (2)_mask.png", "mask is", "but image is")
    assert warned(ws, "benign (3).png", "empty mask")
    assert len(ws) == 3, ws
    assert read_table(tmp_path / "out" / "rois.csv") == records
