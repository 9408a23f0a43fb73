"""The automatic lesion finder: `train-localiser --quick` on real BUSI and BUS-BRA images, its export, the
served weights on real images, and bad input."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch

from models.localiser import Candidate, Localiser, LocaliserNet, candidates_of
from models.manifest import LocaliserEntry, WeightsError, load_localiser, read_manifest
from training.__main__ import main

pytestmark = pytest.mark.slow


def test_candidates_are_regions_in_image_pixels_best_first():
    prob = np.zeros((32, 32), np.float32)
    prob[2:4, 4:8] = 0.9  # a strong region: cells of 32 input pixels
    prob[20:22, 10:12] = 0.6  # a weaker one, still above half the peak
    prob[30:, 30:] = 1.0  # in SAM's padding (the image covers 768 x 1024 input pixels): ignored
    found = candidates_of(prob, input_size=(768, 1024), original_size=(384, 512))
    assert found == [Candidate((64, 32, 128, 64), pytest.approx(0.9), pytest.approx(7.2)),
                     Candidate((160, 320, 192, 352), pytest.approx(0.6), pytest.approx(2.4))]  # mass: summed cells
    by_mass = candidates_of(prob, input_size=(768, 1024), original_size=(384, 512), rank_by="mass")
    assert [c.box for c in by_mass] == [(64, 32, 128, 64), (160, 320, 192, 352)]  # 8 cells at 0.9 before 4 at 0.6
    prob[20:26, 10:16] = 0.6  # the weaker region now larger: first by mass, second by peak
    assert candidates_of(prob, (768, 1024), (384, 512), rank_by="mass")[0].box == (160, 320, 256, 384)  # to the image
    assert candidates_of(prob, (768, 1024), (384, 512))[0].box == (64, 32, 128, 64)


def test_train_localiser_quick_reports_cv_held_out_and_exports(data_dir, tmp_path, capsys):
    out = tmp_path / "loc"
    rc = main(["train-localiser", "--rois", str(data_dir), "--out", str(out), "--quick", "--threads", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["cv_source"] == "busi" and set(report["sources"]) == {"busi", "busbra"}
    cv, held = report["cv"]["busi"], report["held_out"]["busbra"]
    assert (cv["lesion_images"], cv["normal_images"], held["lesion_images"]) == (24, 12, 24)
    for m in (cv, held):
        assert 0 <= m["dice_ci"][0] <= m["dice"] <= m["dice_ci"][1] <= 1
        assert 0 <= m["detected"] <= m["found"] <= 1 and m["drawn_box_dice"] > 0.7  # LiteMedSAM, true box: ~0.9
    assert 0 <= cv["false_positive_rate"] <= 1 and len(cv["threshold"]) == 2  # one cross-fitted threshold per fold
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and {r["protocol"] for r in rows} == {"cv", "trained on busi"}
    missed = [r for r in rows if r["label"] != "normal" and r["found"] == "False"]
    assert all(float(r["dice"]) == 0 for r in missed)  # a lesion not found scores 0
    for png in ("dice.png", "scores.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    assert "| busbra, trained on busi only | 24 |" in (out / "report.md").read_text()
    # BUS-BRA joins every CV fold's training (as the served fit): its held-out threshold is from a BUSI-only CV
    assert report["held_out_threshold_from"] == "out-of-fold scores of a busi-only CV"

    entry = LocaliserEntry.model_validate_json((out / "entry.json").read_text())
    assert (entry.name, entry.modality, entry.sam) == ("localiser-us", "us", "litemedsam")
    assert entry.data == {"busi": 36, "busbra": 24}
    assert held["threshold"] != entry.threshold  # the served one: the CV's, whose folds saw BUS-BRA
    weights = tmp_path / "weights"
    shutil.copytree("models/weights", weights)
    assert main(["export", "--localiser", str(out), "--to", str(weights)]) == 0
    assert read_manifest(weights).localisers["localiser-us"].sha256 == entry.sha256
    assert read_manifest(weights).models.keys() == read_manifest().models.keys()  # the classifiers untouched

    # a changed byte: refused, naming the file
    (weights / entry.file).write_bytes((weights / entry.file).read_bytes()[:-1] + b"\0")
    with pytest.raises(WeightsError, match="localiser-us.safetensors"):
        load_localiser(entry, weights)


def test_unknown_site_is_refused_naming_it(data_dir, tmp_path, capsys):
    rc = main(["train-localiser", "--rois", str(data_dir), "--out", str(tmp_path / "x"), "--sources", "busi", "udiat"])
    assert rc == 2 and "udiat" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_served_localiser_finds_and_outlines_real_lesions(busi_dir):
    """The committed weights: on BUSI lesions (in its training set: a check that the served file is the
    trained one and serving reads it as training did; the held-out figures are in its manifest entry)."""
    from PIL import Image

    from models.sam import load_sam
    from models.segmentation import Prompt, SamSegmenter
    from training.segmentation.localiser import dice_iou
    entry = read_manifest().localisers["localiser-us"]
    assert entry.metrics["cv"]["busi"]["dice"] > 0 and "busbra" in entry.metrics["held_out"]
    localiser = load_localiser(entry)
    segmenter = SamSegmenter(load_sam(entry.sam))
    dice = []
    for name in ("benign (3)", "malignant (5)", "benign (20)", "malignant (30)"):
        folder = busi_dir / name.split()[0]
        rgb = np.asarray(Image.open(folder / f"{name}.png").convert("RGB"))
        truth = np.asarray(Image.open(folder / f"{name}_mask.png").convert("L")) > 0
        emb = segmenter.encode(rgb)
        found = localiser.locate(emb.features, emb.input_size, emb.original_size)
        assert found.candidates == sorted(found.candidates, key=lambda c: -c.score)
        best = found.found[0] if found.found else None
        mask = None if best is None else localiser.outline(
            best, lambda box: segmenter.predict(emb, Prompt(box=box)).mask)
        dice.append(dice_iou(mask, truth)[0])
    assert np.mean(dice) > 0.6, dice


def test_the_served_net_is_built_as_its_entry_records(tmp_path):
    """Dilations do not change a weight's shape, so only the entry can say which were trained: the loader
    builds the recorded design (and the first design for entries written before it was recorded)."""
    from models.localiser import FIRST_DILATIONS
    from models.manifest import save_classifier
    torch.manual_seed(0)
    features = torch.randn(1, 256, 64, 64)
    for training, dilations in (({"width": 16, "dilations": [1, 3], "rank_by": "mass"}, (1, 3)),
                                ({}, FIRST_DILATIONS)):
        net = LocaliserNet(width=training.get("width", 32), dilations=dilations).eval()
        path = tmp_path / f"net{len(dilations)}.safetensors"
        sha = save_classifier(net, path)
        entry = LocaliserEntry(name="localiser-us", file=path.name, sha256=sha, modality="us", sam="litemedsam",
                               threshold=0.5, training=training)
        served = load_localiser(entry, tmp_path)
        assert served.net.dilations == dilations and served.rank_by == training.get("rank_by", "peak")
        with torch.no_grad():
            want = net(features)
        assert torch.allclose(served.net(features), want, atol=2e-2)  # fp16 file


def test_a_net_that_does_not_fit_is_refused(tmp_path):
    net = LocaliserNet(width=16)
    path = tmp_path / "small.safetensors"
    from models.manifest import save_classifier
    sha = save_classifier(net, path)
    entry = LocaliserEntry(name="localiser-us", file=path.name, sha256=sha, modality="us", sam="litemedsam",
                           threshold=0.5)
    with pytest.raises(WeightsError, match="does not fit"):
        load_localiser(entry, tmp_path)
    assert isinstance(Localiser(LocaliserNet(), "litemedsam", 0.5).locate(
        torch.zeros(1, 256, 64, 64), (1024, 768), (600, 450)).peak, float)
