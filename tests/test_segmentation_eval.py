"""`python -m training evaluate-segmentation`: LiteMedSAM zero-shot on a few real BUSI lesions, and bad input."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from training.__main__ import main
from training.segmentation.evaluate_segmentation import dice_iou, interior_point

pytestmark = pytest.mark.slow

KEYS = {"sam", "sam_sha256", "prompt", "n", "dice_mean", "dice_median", "iou_mean", "dice_ci", "per_class",
        "failures", "seconds_per_image", "skipped"}


def test_litemedsam_box_on_busi(busi_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["evaluate-segmentation", "--sam", "litemedsam", "--prompt", "box", "--data", str(busi_dir),
               "--out", str(out), "--limit", "4", "--n-boot", "200"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rep = json.loads((out / "report.json").read_text())
    assert KEYS <= rep.keys()
    assert (rep["sam"], rep["prompt"], rep["n"]) == ("litemedsam", "box", 4)
    assert len(rep["sam_sha256"]) == 64
    # --limit alternates the classes: 2 benign, 2 malignant.
    assert {c: v["n"] for c, v in rep["per_class"].items()} == {"benign": 2, "malignant": 2}
    assert rep["dice_mean"] > 0.7  # LiteMedSAM with the true box: about 0.9
    lo, hi = rep["dice_ci"]
    assert 0.0 <= lo <= rep["dice_mean"] <= hi <= 1.0
    assert rep["failures"] == 0 and rep["seconds_per_image"] > 0
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["image_path"]).name for r in rows] == [
        "benign (1).png", "malignant (1).png", "benign (2).png", "malignant (2).png"]
    assert {"image_path", "label", "dice", "iou", "sam_score", "error"} <= rows[0].keys()
    assert np.mean([float(r["dice"]) for r in rows]) == pytest.approx(rep["dice_mean"])
    assert (out / "dice.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "Dice mean" in captured.out


def test_corrupt_image_is_skipped_with_a_warning(busi_dir, tmp_path, capsys):
    data = tmp_path / "busi"
    (data / "benign").mkdir(parents=True)
    for f in (busi_dir / "benign").glob("benign (1)*.png"):
        shutil.copy(f, data / "benign" / f.name)
    shutil.copy(busi_dir / "benign" / "benign (2)_mask.png", data / "benign")
    (data / "benign" / "benign (2).png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    rc = main(["evaluate-segmentation", "--sam", "litemedsam", "--prompt", "point", "--data", str(data),
               "--out", str(out), "--n-boot", "50"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "benign (2).png" in captured.err
    rep = json.loads((out / "report.json").read_text())
    assert rep["n"] == 1 and len(rep["skipped"]) == 1 and "benign (2).png" in rep["skipped"][0]


def test_unknown_sam_name_exits_2(busi_dir, tmp_path, capsys):
    rc = main(["evaluate-segmentation", "--sam", "nonsense", "--prompt", "box", "--data", str(busi_dir),
               "--out", str(tmp_path / "out"), "--limit", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "nonsense" in err and "litemedsam" in err
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_exits_2(busi_dir, tmp_path, capsys):
    rc = main(["evaluate-segmentation", "--sam", "mobilesam", "--prompt", "box", "--data", str(busi_dir),
               "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "absent.pt")])
    assert rc == 2
    assert "absent.pt" in capsys.readouterr().err


def test_folder_in_no_known_layout_exits_2(tmp_path, capsys):
    data = tmp_path / "junk"
    data.mkdir()
    rng = np.random.default_rng(0)
    (data / "scan.png").write_bytes(rng.bytes(2000))
    (data / "notes.txt").write_text("not a dataset\n")
    rc = main(["evaluate-segmentation", "--sam", "litemedsam", "--prompt", "box", "--data", str(data),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(data) in err and "layout" in err


def test_missing_data_folder_exits_2(tmp_path, capsys):
    rc = main(["evaluate-segmentation", "--sam", "litemedsam", "--prompt", "box", "--data", str(tmp_path / "nope"),
               "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "nope" in capsys.readouterr().err


def test_dice_and_interior_point():
    truth = np.zeros((10, 12), bool)
    truth[2:8, 3:9] = True
    assert dice_iou(truth, truth) == (1.0, 1.0)
    assert dice_iou(None, truth) == (0.0, 0.0)
    half = truth.copy()
    half[:, 6:] = False
    dice, iou = dice_iou(half, truth)
    assert dice == pytest.approx(2 * 18 / (18 + 36)) and iou == pytest.approx(0.5)
    x, y = interior_point(truth)
    assert truth[y, x] and 4 <= x <= 7 and 3 <= y <= 6
    edge = np.zeros((10, 10), bool)
    edge[:, :4] = True  # cut by the image border: the border counts as outside
    assert interior_point(edge)[0] in (1, 2)
