import subprocess
import sys

import pytest

from training.datasets.roi_table import read_table
from training.rois.prepare import LayoutError, prepare


@pytest.fixture(scope="module")
def real_table(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    records, summary = prepare(data_dir, out, log=lambda m: None)
    return out, records, summary


def test_real_counts_match_the_published_sets(real_table):
    out, records, summary = real_table
    assert summary.counts["busi"] == {"benign": 437, "malignant": 210, "normal": 133}
    assert summary.counts["busbra"] == {"benign": 617, "malignant": 285}  # GE Logiq 7 part: 902 images
    assert summary.groups["busbra"] == 488  # patients
    # mini-MIAS here: 123 abnormal rows, 4 without coordinates; the 205 absent images are skipped.
    assert summary.counts["mias"]["benign"] + summary.counts["mias"]["malignant"] == 119
    assert any("mdb059" in w and "no coordinates" in w for w in summary.warnings)
    assert read_table(out / "rois.csv") == records
    assert (out / "summary.md").read_text().startswith("| source |")


def test_busi_duplicates_share_a_group(real_table):
    _, records, _ = real_table
    group = {r.lesion_id: r.group for r in records}
    assert group["busi:benign/benign (433)"] == group["busi:malignant/malignant (145)"]  # exact duplicate
    assert group["busi:benign/benign (10)"] == group["busi:benign/benign (327)"]  # strong pair
    assert len(set(group.values())) < len(group)


def test_mias_origin_is_bottom_left_and_patients_group(real_table):
    _, records, _ = real_table
    r = next(r for r in records if r.lesion_id == "mias:mdb184:1")  # F SPIC M 352 624 114
    assert (r.x0, r.y0, r.x1, r.y1) == (352 - 114, 1024 - 624 - 114, 352 + 114, 1024 - 624 + 114)
    assert r.label == "malignant"
    g = {r.lesion_id.split(":")[1]: r.group for r in records if r.source == "mias"}
    assert g["mdb001"] == g["mdb002"] != g["mdb005"]


def test_mias_pgm_equals_png(mias_dir):
    import numpy as np
    from PIL import Image
    pgm = np.asarray(Image.open(mias_dir / "pgm-samples" / "mdb184.pgm"))
    png = np.asarray(Image.open(mias_dir / "all-mias" / "mdb184.png"))
    assert np.array_equal(pgm, png)


def test_unknown_layout_is_a_clear_error(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.txt").write_text("x")
    with pytest.raises(LayoutError, match="no dataset in a known layout"):
        prepare(tmp_path, tmp_path / "out", log=lambda m: None)
    res = subprocess.run([sys.executable, "-m", "training", "prepare", "--data", str(tmp_path),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert res.returncode == 2 and "no dataset in a known layout" in res.stderr
