"""Two sites (BUSI, Cairo; BUS-BRA, Rio de Janeiro) in training: patient-grouped folds within each site,
per-site out-of-fold reports, and the --holdout-site protocol, with --quick on a few real lesions per site."""
import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training.classifier.train_classifier import read_oof, softmax_p
from training.common.metrics import SITE_KEYS, binary_report
from training.rois.prepare import prepared
from training.rois.splits import folds_of, select

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--modality", "us", "--quick", "--limit", "4", "--roi-source", "expert", "--served-as", "--threads", "1"]


def train(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", "train-classifier", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def oof_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folds_group_patients_within_each_site(data_dir):
    records = select(prepared(data_dir, log=lambda *a: None), "us", None)
    assert Counter(r.source for r in records) == {"busi": 647, "busbra": 902}
    assert all(r.group == f"busbra:{r.group.split(':')[1]}" for r in records if r.source == "busbra")
    folds = folds_of(records, folds=5, seed=0)  # train-classifier's defaults
    seen = set()
    for train_idx, test_idx in folds:
        assert not {records[i].group for i in train_idx} & {records[i].group for i in test_idx}
        for site, share in (("busi", 647 / 1549), ("busbra", 902 / 1549)):  # stratified by site and label
            here = [records[i] for i in test_idx if records[i].source == site]
            assert abs(len(here) / len(test_idx) - share) < 0.05
            assert 0.25 < np.mean([r.target for r in here]) < 0.40  # 0.32 malignant in each site
        seen |= set(test_idx.tolist())
    assert seen == set(range(len(records)))
    # BUS-BRA's -l and -r views of one patient land in one fold
    fold_of = {records[i].lesion_id: k for k, (_, test) in enumerate(folds) for i in test}
    assert fold_of["busbra:bus_0001-l"] == fold_of["busbra:bus_0001-r"]


@pytest.fixture(scope="module")
def two_site_cv(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two-sites")
    res = train("--rois", data_dir, *QUICK, "--no-final", "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_cv_reports_each_site(two_site_cv):
    rows = oof_rows(two_site_cv / "cv" / "oof.csv")
    assert Counter(r["source"] for r in rows) == {"busi": 8, "busbra": 8}  # --limit: 4 per class per site
    by_group = {}
    for r in rows:
        assert by_group.setdefault(r["group"], r["fold"]) == r["fold"]  # no patient straddles folds
    assert {r["group"] for r in rows if r["source"] == "busbra"} == {"busbra:1", "busbra:2", "busbra:3", "busbra:4"}
    report = json.loads((two_site_cv / "cv" / "report.json").read_text())
    y, _, logits = read_oof(two_site_cv / "cv" / "oof.csv")  # float32, as the report read them
    p = softmax_p(logits, report["temperature"])
    assert set(report["per_site"]) == {"busi", "busbra"}
    for site, row in report["per_site"].items():
        mine = np.array([r["source"] == site for r in rows])
        alone = binary_report(y[mine], p[mine], report["threshold"],
                              groups=[r["group"] for r in rows if r["source"] == site])  # CIs over patients
        assert row == {k: alone[k] for k in SITE_KEYS}, site
        # the threshold keeps the target sensitivity on each site's out-of-fold predictions, not only pooled
        assert row["sensitivity"] >= 0.9, site
    assert report["threshold_rule"].endswith("on each site")
    assert set(report["cross_fitted"]["per_site"]) == {"busi", "busbra"}
    md = (two_site_cv / "cv" / "report.md").read_text()
    assert "| busbra | 8 (4) |" in md and "| busi | 8 (4) |" in md


def test_holdout_site_trains_and_calibrates_on_the_other_site(data_dir, tmp_path):
    out = tmp_path / "holdout-busbra"
    res = train("--rois", data_dir, *QUICK, "--holdout-site", "busbra", "--no-final", "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert {r["source"] for r in oof_rows(out / "cv" / "oof.csv")} == {"busi"}  # busbra never trained on
    cv = json.loads((out / "cv" / "report.json").read_text())
    rep = json.loads((out / "holdout" / "report.json").read_text())
    assert rep["site"] == "busbra" and rep["trained_on"] == ["busi"] and rep["n"] == 8 and rep["n_malignant"] == 4
    # the operating point is the training site's, fitted on its out-of-fold predictions
    assert rep["threshold"] == cv["threshold"] and rep["temperature"] == cv["temperature"]
    manifest = json.loads((out / "weights" / "manifest.json").read_text())
    assert list(manifest["models"]["classifier-us"]["data"]["sources"]) == ["busi"]
    assert len(manifest["models"]["classifier-us"]["data"]["image_sha256_16"]) == 8  # evaluate checks overlap with it
    with open(out / "holdout" / "predictions.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    assert {r["source"] for r in preds} == {"busbra"} and len(preds) == 8
    again = binary_report([int(r["label"] == "malignant") for r in preds], [float(r["p_malignant"]) for r in preds],
                          rep["threshold"], groups=[r["group"] for r in preds])
    for k in ("roc_auc", "roc_auc_ci", "sensitivity", "specificity", "ece", "confusion_matrix"):
        assert rep[k] == again[k], k
    md = (out / "holdout" / "report.md").read_text()
    assert "tested on busbra" in md and "| busbra (held out) | 8 (4) |" in md
    for png in ("roc.png", "reliability.png", "confusion.png"):
        assert (out / "holdout" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # export carries the held-out figures into the served entry (GET /v1/models shows them)
    from training.__main__ import main
    assert main(["export", "--from", str(out / "weights"), "--to", str(tmp_path / "served"),
                 "--out-of-site", str(out / "holdout" / "report.json")]) == 0
    served = json.loads((tmp_path / "served" / "manifest.json").read_text())["models"]["classifier-us"]["metrics"]
    assert served["out_of_site"] == [{"trained_on": ["busi"], "tested_on": "busbra", "regime": "real", "protocol": "holdout",
                                      **{k: rep[k] for k in ("n", "n_malignant", "roc_auc", "roc_auc_ci", "sensitivity",
                                                             "specificity", "ece", "threshold")}}]
    assert main(["export", "--from", str(out / "weights"), "--to", str(tmp_path / "bad"),
                 "--out-of-site", str(out / "cv" / "report.json")]) == 2
    assert not (tmp_path / "bad" / "manifest.json").exists()
    # an evaluate report counts only for the very weights exported, on a site they never trained on
    from models.manifest import WeightsError, read_manifest
    from training.export import attach_out_of_site
    entry = read_manifest(out / "weights").models["classifier-us"]
    row = {"tested_on": "busbra", "model_sha256": entry.sha256, "protocol": "evaluate", "roc_auc": 0.8}
    assert attach_out_of_site(entry, [row]).metrics["out_of_site"] == [
        {"trained_on": ["busi"], "tested_on": "busbra", "protocol": "evaluate", "roc_auc": 0.8}]
    with pytest.raises(WeightsError, match="not of the exported"):
        attach_out_of_site(entry, [{**row, "model_sha256": "0" * 64}])
    with pytest.raises(WeightsError, match="not out of site"):
        attach_out_of_site(entry, [{**row, "tested_on": "busi"}])
    # another model of the recipe, trained on other sites: its row keeps its own sites and sha256
    other = {**row, "model_sha256": "0" * 64, "trained_on": ["busbra"], "tested_on": "busi"}
    assert attach_out_of_site(entry, [other]).metrics["out_of_site"] == [other]
    with pytest.raises(WeightsError, match="not out of site"):
        attach_out_of_site(entry, [{**other, "tested_on": "busbra"}])


def test_holdout_site_without_cv_is_an_uncalibrated_arm(data_dir, tmp_path, capsys):
    """--holdout-site with --no-cv: the final fit alone on the held-out site, for comparing recipes by AUC
    (site-ablation reads it); marked uncalibrated, and export refuses it as a served out-of-site row."""
    out = tmp_path / "arm"
    res = train("--rois", data_dir, *QUICK, "--holdout-site", "busbra", "--no-cv", "--intensity", "percentile",
                "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (out / "cv").exists()
    rep = json.loads((out / "holdout" / "report.json").read_text())
    assert rep["calibrated"] is False and (rep["temperature"], rep["threshold"]) == (1.0, 0.5)
    assert rep["training"]["intensity"] == "percentile" and rep["trained_on"] == ["busi"] and rep["n"] == 8
    assert "uncalibrated" in (out / "holdout" / "report.md").read_text()
    with open(out / "holdout" / "predictions.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    logits = np.array([[float(r["logit_benign"]), float(r["logit_malignant"])] for r in preds], np.float32)
    assert np.allclose([float(r["p_malignant"]) for r in preds], softmax_p(logits, 1.0), atol=1e-6)
    from training.__main__ import main
    assert main(["export", "--from", str(out / "weights"), "--to", str(tmp_path / "served"),
                 "--out-of-site", str(out / "holdout" / "report.json")]) == 2
    assert not (tmp_path / "served" / "manifest.json").exists()
    assert "is uncalibrated" in capsys.readouterr().err
    assert main(["sam-probe", str(out), "--rois", str(data_dir), "--out", str(tmp_path / "probe")]) == 2
    assert "holds no cross-validation" in capsys.readouterr().err
    assert main(["site-ablation", "--site", "busbra", "--row", f"a={out / 'holdout'}", "--row", f"b={out / 'holdout'}",
                 "--out", str(tmp_path / "table"), "--n-boot", "50"]) == 0
    table = json.loads((tmp_path / "table" / "site-ablation.json").read_text())
    assert table[1]["delta_auc"] == 0 and table[0]["roc_auc"] == rep["roc_auc"]


def test_holdout_site_must_be_one_of_several(data_dir, tmp_path, capsys):
    from training.__main__ import main
    code = main(["train-classifier", "--rois", str(data_dir), *QUICK, "--holdout-site", "udiat", "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--holdout-site udiat" in err and "busbra, busi" in err
    code = main(["train-classifier", "--rois", str(data_dir / "busi"), *QUICK, "--holdout-site", "busi", "--out",
                 str(tmp_path / "o")])
    assert code == 2 and "another site left to train on" in capsys.readouterr().err


def test_the_fused_model_is_scored_on_the_held_out_site(data_dir, tmp_path):
    """sam-probe on a held-out run: the ResNet18's held-out logits + alpha x a probe fitted on the training
    site, at the training site's fused operating point; each part's AUC on the held-out site too."""
    run, probe = tmp_path / "holdout-sam", tmp_path / "holdout-probe"
    sam_args = ["--modality", "us", "--quick", "--limit", "3", "--roi-source", "sam", "--mask-channel",
                "--served-as", "--threads", "1"]
    res = train("--rois", data_dir, *sam_args, "--holdout-site", "busbra", "--out", run)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([sys.executable, "-m", "training", "sam-probe", str(run), "--rois", str(data_dir),
                          "--limit", "3", "--threads", "1", "--out", str(probe)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    cv = json.loads((probe / "cv" / "report.json").read_text())
    rep = json.loads((probe / "holdout" / "report.json").read_text())
    assert {r["source"] for r in oof_rows(probe / "cv" / "oof.csv")} == {"busi"}
    assert rep["site"] == "busbra" and rep["trained_on"] == ["busi"] and rep["n"] == 6
    assert (rep["threshold"], rep["temperature"]) == (cv["threshold"], cv["temperature"])
    assert set(rep["parts"]) == {"resnet", "probe", "fused_minus_resnet"}
    with open(run / "holdout" / "predictions.csv", newline="") as f:
        resnet = {r["lesion_id"]: float(r["logit_malignant"]) - float(r["logit_benign"]) for r in csv.DictReader(f)}
    y = [int(r["label"] == "malignant") for r in oof_rows(run / "holdout" / "predictions.csv")]
    from training.common.metrics import roc_auc
    assert rep["parts"]["resnet"]["roc_auc"] == pytest.approx(roc_auc(y, 1 / (1 + np.exp(-np.array(list(resnet.values()))))))
    assert "ResNet18 + SAM probe" in (probe / "holdout" / "report.md").read_text()
    # the two side by side on the held-out site, paired over its patients
    from training.__main__ import main
    assert main(["site-ablation", "--site", "busbra", "--row", f"resnet={run / 'holdout'}",
                 "--row", f"fused={probe / 'holdout'}", "--out", str(tmp_path / "ablation")]) == 0
    table = json.loads((tmp_path / "ablation" / "site-ablation.json").read_text())
    assert [r["name"] for r in table] == ["resnet", "fused"] and table[1]["roc_auc"] == pytest.approx(rep["roc_auc"])
    assert table[0]["roc_auc"] == pytest.approx(rep["parts"]["resnet"]["roc_auc"])
    assert table[1]["delta_auc"] == pytest.approx(rep["roc_auc"] - rep["parts"]["resnet"]["roc_auc"])
    assert (table[1]["sensitivity"], table[1]["threshold"]) == (rep["sensitivity"], rep["threshold"])
    assert main(["site-ablation", "--site", "busi", "--row", f"resnet={run / 'holdout'}",
                 "--out", str(tmp_path / "none")]) == 2  # busi was trained on, not held out


def test_probe_sites_scores_the_probe_on_each_site_and_each_held_out_site(data_dir, tmp_path):
    out = tmp_path / "probe-sites"
    res = subprocess.run([sys.executable, "-m", "training", "probe-sites", "--rois", str(data_dir), "--limit", "4",
                          "--threads", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    per_site = rep["all_sites"]["per_site"]
    assert {s: m["n"] for s, m in per_site.items()} == {"busi": 8, "busbra": 8}
    assert all(m["sensitivity"] >= 0.9 for m in per_site.values())  # the served rule, on each site
    assert {s: (m["trained_on"], m["n"]) for s, m in rep["held_out"].items()} == {
        "busi": (["busbra"], 8), "busbra": (["busi"], 8)}
    assert "trained on busi only" in (out / "report.md").read_text()
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    # each held-out site is a site-ablation row: the probe alone, paired on the same lesions
    ablation = tmp_path / "ablation"
    res = subprocess.run([sys.executable, "-m", "training", "site-ablation", "--site", "busbra",
                          "--row", f"probe alone={out / 'held-out-busbra'}", "--row", f"again={out / 'held-out-busbra'}",
                          "--out", str(ablation)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((ablation / "site-ablation.json").read_text())
    assert [r["n"] for r in rows] == [8, 8] and rows[0]["roc_auc"] == rep["held_out"]["busbra"]["roc_auc"]
    assert rows[1]["delta_auc"] == 0


def test_probe_sites_reads_the_inception_features_of_the_served_crop(data_dir, tmp_path):
    from training.probe.sites import inception_probe_features
    records = select(prepared(data_dir), "us", 4)
    x = inception_probe_features(records, progress=False)
    assert x.shape == (16, 2048) and np.isfinite(x).all()
    assert np.linalg.matrix_rank(x - x.mean(0)) == 15  # one row per lesion, not a constant
    out = tmp_path / "probe-sites"
    res = subprocess.run([sys.executable, "-m", "training", "probe-sites", "--rois", str(data_dir), "--limit", "4",
                          "--threads", "1", "--features", "sam+inception", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["features"] == "sam+inception" and set(rep["held_out"]) == {"busi", "busbra"}
    assert "SAM + Inception-v3 probe alone" in (out / "report.md").read_text()
