"""The `auto` ROI source (training.rois.auto_views) and `evaluate-auto-roi`: training crops what the server's `{}`
crops, from the committed localiser and LiteMedSAM on real BUSI images; a lesion in an image where nothing is found
has no automatic crop and is reported as not found."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from models.manifest import WEIGHTS_DIR
from models.preprocessing import classifier_input, to_gray
from models.segmentation import NoLesionFound, Prompt
from server.engine import Timer
from training.probe.sam_probe import probe_features
from training.datasets.roi_table import RoiRecord, lesions, write_table
from training.rois.auto_views import AutoViews, NotFound
from training.rois.prepare import prepared
from training.rois.sources import load_inputs

NOTHING_FOUND = "normal (86)"  # the committed localiser finds no lesion here: best score 0.05, threshold 0.801


@pytest.fixture(scope="module")
def records(busi_dir):
    chosen = lesions(prepared(busi_dir.parent), "us")
    real = [r for r in chosen if r.label == "benign"][:1] + [r for r in chosen if r.label == "malignant"][:2]
    # A lesion the localiser misses: a box marked on an image where it finds nothing (no real lesion is missed by
    # the localiser on these few images, which it was trained on).
    missed = RoiRecord(str(busi_dir / "normal" / f"{NOTHING_FOUND}.png"), "us", "benign", "busi", "test-missed",
                       100.0, 100.0, 180.0, 160.0, lesion_id="busi:missed-on-normal-86")
    return real + [missed]


def test_auto_crops_are_the_servers_and_a_miss_has_none(records, api):
    auto = AutoViews(records, progress=False)
    found = auto.found()
    assert found.tolist() == [True] * 3 + [False]
    hit = auto.hit()
    # hit: the outline on the expert's lesion (IoU >= 0.5); the second malignant lesion's found box is elsewhere
    assert (hit == (auto.column("iou") >= 0.5)).all() and hit.tolist() == [True, True, False, False]
    crops = load_inputs(records, "auto", channels=2, progress=False)
    engine = api.services.engine
    for i, r in enumerate(records):
        rgb = np.asarray(Image.open(r.image_path).convert("RGB"))
        if not found[i]:
            # the server answers no_lesion_found for the same image; training keeps a blank crop, not another one
            with pytest.raises(NoLesionFound):
                engine.segment(f"auto-roi-{i}", rgb, "us", Prompt(), Timer())
            assert not crops[i].any()
            with pytest.raises(NotFound, match="no lesion found"):
                auto.view(i, rgb.shape[:2])
            with pytest.raises(NotFound, match="1 of these 4 lesions"):  # before any encoder pass
                probe_features(records, "auto", "litemedsam", 0.1)
            continue
        seg = engine.segment(f"auto-roi-{i}", rgb, "us", Prompt(), Timer())
        assert seg.auto_mode == "localiser"
        served = classifier_input(to_gray(rgb), seg.box, seg.mask)
        box, mask = auto.view(i, rgb.shape[:2])
        # training reads the fp16 embedding cache, the server its own fp32 encoding: the same box to a pixel
        assert np.abs(np.subtract(box, seg.box)).max() <= 1
        overlap = (mask & seg.mask).sum() / (mask | seg.mask).sum()
        assert overlap > 0.97
        assert np.abs(crops[i].astype(int) - served.astype(int)).mean() < 3  # of 255, both channels


def test_evaluate_auto_roi_reports_the_miss_and_pairs_the_found(records, tmp_path):
    from training.evaluation.evaluate_auto_roi import evaluate_auto_roi
    data = tmp_path / "data"
    data.mkdir()
    write_table(records, data / "rois.csv")
    rep = evaluate_auto_roi(data, WEIGHTS_DIR, tmp_path / "out", n_boot=50)
    site = rep["per_site"]["busi"]
    assert (site["lesions"], site["found"], site["hit"]) == (4, 3, 2)
    assert site["not_found_by_class"] == {"benign": 1, "malignant": 0}
    assert site["auto"]["n"] == site["drawn"]["n"] == 3 and site["drawn_all"]["n"] == 4
    assert site["auto"]["roc_auc"] is not None and site["delta_auc"] is not None
    assert rep["localiser_in_sample_sites"] == ["busi"]
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    missed = next(r for r in rows if r.startswith("busi:missed-on-normal-86,"))
    assert missed.split(",")[5] == "0" and missed.endswith(",")  # not found: no automatic prediction
    assert json.loads((tmp_path / "out" / "report.json").read_text())["per_site"]["busi"]["found"] == 3
    assert (tmp_path / "out" / "roc.png").stat().st_size > 0
    assert "1 benign, 0 malignant" in (tmp_path / "out" / "report.md").read_text()
