"""The SAM probe end to end: cross-fitted report, weights, export, and the server fusing it exactly as
training and evaluation do. Also the training-only outline heads and a wider crop margin, served."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from models.manifest import WEIGHTS_DIR, WeightsError, load_classifier, load_sam_probe, read_manifest
from models.probe_head import REGIONS, STAGES, probe_size
from tests.test_train_classifier import run_training

LIMIT = "4"  # 8 lesions: a quick run


@pytest.fixture(scope="module")
def probe_run(data_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("probe")
    for seed in ("0", "1"):
        run_training("train-classifier", "--served-as", "--rois", str(data_dir / "busi"), "--modality", "us",
                     "--quick", "--limit", LIMIT, "--roi-source", "sam", "--mask-channel", "--seed", seed,
                     "--margin", "0.2", "--aux-outline", "1", "--aux-irregularity", "0.5", "--out", str(runs / f"s{seed}"))
    run_training("sam-probe", str(runs / "s0"), str(runs / "s1"), "--rois", str(data_dir / "busi"), "--limit", LIMIT,
                 "--mark-augment", "--scanner-augment", "--iou-token", "--out", str(runs / "fused"))
    return runs


def test_outline_heads_train_and_are_dropped(probe_run):
    model, entry = load_classifier("classifier-us", probe_run / "s0" / "weights")  # a plain ResNet18 state
    assert entry.input.roi_margin == 0.2 and entry.training["aux_outline"] == 1.0
    assert not any("head" in k for k in load_file(str(probe_run / "s0" / "weights" / entry.file)))


def test_fused_report_is_resnet_plus_alpha_probe(probe_run):
    from training.classifier.train_classifier import read_oof
    report = json.loads((probe_run / "fused" / "cv" / "report.json").read_text())
    sp = report["sam_probe"]
    assert report["n"] == 8 and report["regime"] == "real ensemble x2 + SAM probe" and sp["sam"] == "litemedsam"
    assert len(sp["alphas"]) == 2 and sp["alpha"] == pytest.approx(np.mean(sp["alphas"]))
    assert sp["regions"] == list(REGIONS) and sp["stages"] == list(STAGES) and sp["iou_token"]
    y, _, fused = read_oof(probe_run / "fused" / "cv" / "oof.csv")
    _, _, resnet = read_oof(probe_run / "fused" / "cv" / "oof_resnet.csv")
    _, _, probe = read_oof(probe_run / "fused" / "cv" / "oof_probe.csv")
    # The ResNet18 part is the mean of the two runs' out-of-fold logits.
    runs = [read_oof(probe_run / f"s{s}" / "cv" / "oof.csv")[2] for s in (0, 1)]
    assert np.allclose(resnet[:, 1] - resnet[:, 0], np.mean([r[:, 1] - r[:, 0] for r in runs], 0), atol=1e-5)
    assert not np.allclose(fused, resnet) and np.isfinite(probe).all()
    # Marks burned in, a scanner shift: the probe is scored on each view out of fold (and trained on them too).
    # Measured on these 8 lesions: marks move the fused p by a median 0.032 and flip none, the scanner shift
    # 0.007 and flip 1 (to malignant); bench/marks.py flips 1-4 of 80 with the served probe. A view that moves
    # nothing (not applied) or flips more than a quarter of the decisions is a regression; how flips are counted
    # is checked exactly in test_view_movement_counts_flips_at_the_threshold.
    text = (probe_run / "fused" / "cv" / "report.md").read_text()
    for view, flag in (("marks", "mark_augment"), ("scanner", "scanner_augment")):
        m = sp[view]
        assert sp[flag] and 0 < m["median_abs_delta"] < 0.1, (view, m)
        assert m["flips_to_malignant"] <= m["flips"] <= 2, (view, m)
        assert f"{m['flips']} of 8 decisions flip ({m['flips_to_malignant']} to malignant)" in text
    assert "Measurement marks burned in (probe trained on clean + marked + scanner-shifted views" in text
    assert "Scanner shifts (one per lesion)" in text


def test_view_movement_counts_flips_at_the_threshold():
    """The report's movement under another view, on four made-up lesions: the served temperature and
    threshold decide, the probe's change enters times alpha."""
    from training.probe.sam_probe import view_movement

    def p(d):
        return 1 / (1 + np.exp(-np.asarray(d, np.float64) / 2))  # temperature 2
    parts = {"fused": np.array([-2.0, -0.5, 0.1, 2.0], np.float32), "probe": np.zeros(4, np.float32)}
    view = np.array([0.0, 0.6, -0.6, 0.0], np.float32)  # times alpha 0.5: fused becomes [-2, -0.2, -0.2, 2]
    m = view_movement({"temperature": 2.0, "threshold": 0.45}, parts, 0.5, view, np.array([0, 0, 1, 1]))
    # p: [0.269, 0.438, 0.512, 0.731] -> [0.269, 0.475, 0.475, 0.731]: lesion 1 crosses 0.45 (to malignant);
    # lesion 2 moves as far down but stays above 0.45. At a threshold of 0.5 it is lesion 2 that flips (to
    # benign) and lesion 1 that does not.
    assert (m["flips"], m["flips_to_malignant"]) == (1, 1)
    delta = p([-2, -0.2, -0.2, 2]) - p([-2, -0.5, 0.1, 2])
    assert m["median_abs_delta"] == pytest.approx(np.median(np.abs(delta)), abs=1e-6)  # float32 logits
    assert m["mean_delta"] == pytest.approx(delta.mean(), abs=1e-6)
    at_half = view_movement({"temperature": 2.0, "threshold": 0.5}, parts, 0.5, view, np.array([0, 0, 1, 1]))
    assert (at_half["flips"], at_half["flips_to_malignant"]) == (1, 0)


def test_probe_on_other_roi_sources_is_refused(data_dir, tmp_path):
    out = tmp_path / "expert"
    run_training("train-classifier", "--served-as", "--no-final", "--rois", str(data_dir / "busi"), "--modality", "us",
                 "--quick", "--limit", "2", "--out", str(out))
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "training", "sam-probe", str(out), "--rois", str(data_dir / "busi"),
                          "--limit", "2", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert res.returncode == 2 and "train on --roi-source sam" in res.stderr


def test_served_probe_matches_evaluation_and_is_verified(probe_run, data_dir, tmp_path):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings
    from training.evaluation.evaluate import predict
    from training.rois.prepare import prepared
    from training.rois.sources import drawn_box
    from training.rois.splits import select

    served = tmp_path / "served"
    shutil.copytree(WEIGHTS_DIR, served)
    run_training("export", "--from", str(probe_run / "fused" / "weights"), "--to", str(served))
    entry = read_manifest(served).models["classifier-us"]
    assert entry.members == 2 and entry.sam_probe.file == "sam-probe-us.safetensors"
    assert entry.sam_probe.mark_augment and entry.sam_probe.scanner_augment
    assert entry.sam_probe.regions == REGIONS and entry.sam_probe.stages == STAGES and entry.sam_probe.iou_token
    assert load_sam_probe(entry, served).linear.in_features == probe_size(REGIONS, True, STAGES) == 1184 * 3 + 256
    # A manifest that names other features than the file was fitted on is refused, not served wrongly.
    for other in ({"regions": ("mask", "crop")}, {"iou_token": False}, {"stages": ("neck",)}):
        fewer = entry.model_copy(update={"sam_probe": entry.sam_probe.model_copy(update=other)})
        with pytest.raises(WeightsError, match="does not fit"):
            load_sam_probe(fewer, served)
    records = select(prepared(data_dir / "busi"), "us", int(LIMIT))
    expected, _ = predict(records, served, "classifier-us", "sam")  # training's crops and features
    r = records[5]
    rgb = np.asarray(Image.open(r.image_path).convert("RGB"))
    box = [round(v, 3) for v in drawn_box(r, rgb.shape[:2], seed=0)]
    app = create_app(Settings(home=tmp_path / "home", weights=served, create_dev_user=False))
    with TestClient(app) as client:
        auth = {"Authorization": f"Bearer {app.state.users.add_user('t')[1]}"}
        models = client.get("/v1/models", headers=auth).json()
        res = client.post("/v1/analyses", files={"file": ("l.png", open(r.image_path, "rb").read())},
                          data={"modality": "us", "prompt": json.dumps({"box": box})}, headers=auth)
    us = next(c for c in models["classifiers"] if c["modality"] == "us")
    assert us["sam_probe"] == {"sam": "litemedsam", "alpha": entry.sam_probe.alpha, "regions": list(REGIONS),
                               "stages": list(STAGES), "iou_token": True, "sha256": entry.sam_probe.sha256}
    assert res.status_code == 201, res.text
    body = res.json()
    assert "sam_probe" in body["timings_ms"]
    assert body["p_malignant"] == pytest.approx(expected[5], abs=2e-3)
    # A changed byte in the probe is caught before anything is served.
    blob = bytearray((served / entry.sam_probe.file).read_bytes())
    blob[-1] ^= 0xFF
    (served / entry.sam_probe.file).write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_sam_probe(entry, served)


def test_iou_token_reads_the_box_it_is_given(data_dir):
    from models.sam import load_sam
    from models.sam_probe import lesion_features, probe_input
    from models.segmentation import Prompt, PromptError, SamSegmenter
    from training.rois.prepare import prepared
    from training.rois.sources import drawn_box
    from training.rois.splits import select
    r = select(prepared(data_dir / "busi"), "us", 2)[1]
    rgb = np.asarray(Image.open(r.image_path).convert("RGB"))
    segmenter = SamSegmenter(load_sam("litemedsam"))
    embedding = segmenter.encode(rgb)
    seg = segmenter.predict(embedding, Prompt(box=list(drawn_box(r, rgb.shape[:2], 0))))
    token = segmenter.iou_token(embedding, seg.box)
    assert token.shape == (256,) and token.dtype == np.float32 and np.isfinite(token).all()
    assert np.array_equal(token, segmenter.iou_token(embedding, seg.box))
    x0, y0, x1, y1 = seg.box
    h, w = rgb.shape[:2]
    loose = (max(0, x0 - 20), max(0, y0 - 20), min(w, x1 + 20), min(h, y1 + 20))
    assert not np.allclose(token, segmenter.iou_token(embedding, loose), atol=1e-3)
    # The probe reads the token of the box it is handed (the server hands it SAM's mask box), after the regions.
    f = probe_input(segmenter, embedding, seg.mask, seg.box, 0.1, REGIONS, iou_token=True)
    assert f.shape == (256 * 4,) and np.array_equal(f[768:].numpy(), token)
    assert torch.equal(f[:768], lesion_features(embedding.features, embedding.original_size, embedding.input_size,
                                                seg.mask, seg.box, 0.1, REGIONS))
    with pytest.raises(PromptError, match="not a non-empty box"):
        segmenter.iou_token(embedding, (10, 10, 5, 5))


def test_probe_reads_every_encoder_stage_it_names(data_dir):
    from models.sam import load_sam
    from models.probe_head import STAGE_CHANNELS
    from models.sam_probe import lesion_features, probe_input
    from models.segmentation import Prompt, SamSegmenter
    from training.rois.prepare import prepared
    from training.rois.sources import drawn_box
    from training.rois.splits import select
    r = select(prepared(data_dir / "busi"), "us", 2)[2]
    rgb = np.asarray(Image.open(r.image_path).convert("RGB"))
    plain, staged = SamSegmenter(load_sam("litemedsam")), SamSegmenter(load_sam("litemedsam"), stages=STAGES[1:])
    bare, embedding = plain.encode(rgb), staged.encode(rgb)
    # Keeping the stages changes nothing about the embedding or the outline; the cache counts their bytes.
    assert torch.equal(bare.features, embedding.features) and bare.stages == {}
    assert {k: (v.shape[1], v.shape[2] == v.shape[3]) for k, v in embedding.stages.items()} == \
        {s: (STAGE_CHANNELS[s], True) for s in STAGES[1:]}
    assert embedding.nbytes > 5 * bare.nbytes
    seg = staged.predict(embedding, Prompt(box=list(drawn_box(r, rgb.shape[:2], 0))))
    f = probe_input(staged, embedding, seg.mask, seg.box, 0.1, REGIONS, False, STAGES)
    assert f.shape == (probe_size(REGIONS, False, STAGES),) and torch.isfinite(f).all()
    start = 0
    for stage in STAGES:  # each stage's region means in turn, the image embedding first
        m = embedding.features if stage == "neck" else embedding.stages[stage]
        part = lesion_features(m, embedding.original_size, embedding.input_size, seg.mask, seg.box, 0.1, REGIONS)
        assert torch.equal(f[start:start + len(part)], part)
        start += len(part)
    with pytest.raises(ValueError, match="did not keep"):  # an embedding cached without the stages
        probe_input(plain, bare, seg.mask, seg.box, 0.1, REGIONS, False, STAGES)
    with pytest.raises(ValueError, match="has no stage layer7"):
        SamSegmenter(load_sam("litemedsam"), stages=("layer7",))


def test_view_workers_compute_what_one_process_does(data_dir):
    from training.probe.sam_probe import shift_scanner
    from training.probe.views import Job, View, view_rows
    from training.rois.prepare import prepared
    from training.rois.splits import select
    records = select(prepared(data_dir / "busi"), "us", 2)[:3]
    job = Job(records, View("shifted", shift_scanner), "litemedsam", 0.1, REGIONS, 0, False, STAGES)
    here, pooled = view_rows(job, progress=False, workers=1), view_rows(job, progress=False, workers=2)
    assert here.shape == (3, probe_size(REGIONS, False, STAGES)) and not np.allclose(here[0], here[1])
    # Each worker runs one torch thread: the same numbers up to float summation order.
    assert np.allclose(here, pooled, rtol=1e-4, atol=1e-5)


def test_the_outline_pass_gives_the_clean_view_a_fresh_pass_would(data_dir, tmp_path, monkeypatch):
    from models.preprocessing import ROI_MARGIN
    from training.probe.sam_probe import probe_features
    from training.probe.views import Job, View, view_rows
    from training.rois.prepare import prepared
    from training.rois.sources import SamViews
    from training.rois.splits import select
    monkeypatch.setenv("BRANET_CACHE", str(tmp_path))  # masks cached by another test were outlined without them
    records = select(prepared(data_dir / "busi"), "us", 2)[:3]
    sam = SamViews(records, progress=False)
    rows = sam.probe_rows(ROI_MARGIN, REGIONS, False, STAGES)
    assert rows.shape == (3, probe_size(REGIONS, False, STAGES)) and not np.allclose(rows[0], rows[1])
    fresh = view_rows(Job(records, View("clean", source="sam", sam=sam), "litemedsam", ROI_MARGIN, REGIONS, 0, False,
                          STAGES), progress=False, workers=1)
    assert np.allclose(rows, fresh, rtol=1e-4, atol=1e-5)  # the same encoder forward, up to thread count
    assert sam.probe_rows(0.2, REGIONS, False, STAGES) is None  # another probe: sam-probe encodes afresh
    assert np.array_equal(probe_features(records, "sam", "litemedsam", ROI_MARGIN, REGIONS, progress=False,
                                         stages=STAGES), rows)


def test_probe_logit_adds_to_the_difference():
    from models.probe_head import fuse
    logits = torch.tensor([[0.2, 1.0], [1.5, -0.5]])
    fused = fuse(logits, torch.tensor([2.0, -1.0]), alpha=0.5)
    assert torch.allclose(fused[:, 1] - fused[:, 0], torch.tensor([0.8 + 1.0, -2.0 - 0.5]))


def test_bands_lie_behind_above_and_beside_the_lesion():
    from models.sam_probe import band

    def extent(side, mask, box):
        rows, cols = np.nonzero(band(mask, box, side))
        return rows.min(), rows.max(), cols.min(), cols.max()
    mask = np.zeros((100, 80), bool)
    mask[20:40, 10:30] = True  # 20 rows tall, 20 columns wide
    box = (10, 20, 30, 40)
    assert extent("posterior", mask, box) == (40, 59, 10, 29)
    assert extent("anterior", mask, box) == (0, 19, 10, 29)
    lateral = band(mask, box, "lateral")
    assert set(np.nonzero(lateral.any(0))[0]) == set(range(0, 10)) | set(range(30, 40))
    assert set(np.nonzero(lateral.any(1))[0]) == set(range(20, 40))
    mask[:] = False
    mask[70:100, 50:60] = True  # down to the bottom edge: nothing behind it but the last row
    assert extent("posterior", mask, (50, 70, 60, 100)) == (99, 99, 50, 59)
    mask[:] = False  # no mask: the box stands in for it, clipped to the image
    assert extent("posterior", mask, (60, 80, 95, 90)) == (90, 99, 60, 79)
    with pytest.raises(ValueError, match="no band"):
        band(mask, box, "inside")


def test_probe_regions_measures_every_set(probe_run, data_dir):
    from training.probe.regions import REGION_SETS, STAGE_SETS
    out = probe_run / "regions"
    run_training("probe-regions", str(probe_run / "s0"), str(probe_run / "s1"), "--rois", str(data_dir / "busi"),
                 "--limit", LIMIT, "--splits", "2", "--out", str(out))
    result = json.loads((out / "regions.json").read_text())
    assert [(tuple(r["regions"]), tuple(r["stages"])) for r in result["rows"]] == \
        [(regions, ("neck",)) for regions in REGION_SETS] + [(REGIONS, stages) for stages in STAGE_SETS]
    assert result["n"] == 8
    first = result["rows"][0]["probe_auc"]
    for row in result["rows"]:
        # 4 benign x 4 malignant lesions, every one scored out of fold: an AUC counts the 16 pairs (ties half)
        assert len(row["probe_auc"]) == 2 and all((a * 32).is_integer() for a in row["probe_auc"]), row
        assert row["probe_auc_mean"] == pytest.approx(np.mean(row["probe_auc"]))
        assert row["splits_above_first_set"] == sum(a > b for a, b in zip(row["probe_auc"], first))
        assert set(row["fused_auc"]) == {str(probe_run / "s0"), str(probe_run / "s1")}
    # The served probe (mask + crop + posterior over every encoder stage) reads the lesion: measured 0.75 in
    # both splits on these 8 lesions, and mask + crop on the embedding 0.75 / 1.0; 0.5 is chance.
    served = next(r for r in result["rows"] if (r["regions"], r["stages"]) == (list(REGIONS), list(STAGES)))
    assert served["probe_auc_mean"] > 0.5 and np.mean(first) > 0.5
    # Away from the bottom edge: measured 6 of the 8 (2 of them malignant; the other 2 both malignant). Both
    # groups must be there for the comparison, and together they hold the 4 malignant lesions.
    inside = result["interior"]
    assert 0 < inside["n"] < 8
    assert inside["n"] * inside["malignant"] + (8 - inside["n"]) * inside["malignant_elsewhere"] == pytest.approx(4)
    assert (out / "regions.png").stat().st_size > 10_000


def test_stage_columns_pick_each_stage_and_region():
    from models.probe_head import ALL_REGIONS, ALL_STAGES, STAGE_CHANNELS
    from training.probe.regions import stage_columns
    # A feature row laid out as probe_features makes it: stage after stage, each region's means in turn.
    row = np.concatenate([np.full(STAGE_CHANNELS[s], 10 * i + j) for i, s in enumerate(ALL_STAGES)
                          for j, _ in enumerate(ALL_REGIONS)])
    assert len(row) == probe_size(ALL_REGIONS, False, ALL_STAGES)
    picked = row[stage_columns(("layer1", "neck"), ("posterior", "mask"))]
    assert list(np.unique(picked, return_index=True)[0]) == [0, 2, 20, 22]
    assert len(picked) == 2 * (160 + 256) and list(picked[:160]) == [22] * 160


def test_scanner_shifts_keep_the_image_and_change_it():
    from training.classifier.scanner_shifts import RANGES, blur, contrast, gain, random_shift, resolution, speckle
    rng = np.random.default_rng(0)
    rgb = np.repeat(rng.integers(0, 256, (60, 80, 1), dtype=np.uint8), 3, axis=2)
    for shifted in (gain(rgb, 1.3), contrast(rgb, 0.7), speckle(rgb, 0.15, rng), blur(rgb, 1.5), resolution(rgb, 0.5),
                    random_shift(rgb, np.random.default_rng(1))):
        assert shifted.shape == rgb.shape and shifted.dtype == np.uint8 and not np.array_equal(shifted, rgb)
        assert (shifted[..., 0] == shifted[..., 2]).all()  # a gray image stays gray
    assert np.array_equal(gain(rgb, 1.0), rgb) and set(RANGES) == {"gain", "contrast", "speckle", "blur", "resolution"}
