"""End to end on real BUSI lesions with --quick: train-classifier -> export -> evaluate."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.manifest import load_classifier, read_manifest
from training.classifier.augment import affine
from training.classifier.train_classifier import TrainConfig
from training.datasets.roi_table import write_table
from training.rois.prepare import prepared
from training.rois.splits import folds_of, select


def run_training(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def real_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("us-real")
    run_training("train-classifier", "--rois", str(data_dir / "busi"), "--modality", "us", "--regime", "real",
                 "--quick", "--limit", "6", "--out", str(out))
    return out


def test_cv_report_and_plots(real_run):
    report = json.loads((real_run / "cv" / "report.json").read_text())
    assert report["n"] == 12 and report["folds"] == 2 and report["regime"] == "real"
    oof = (real_run / "cv" / "oof.csv").read_text().splitlines()
    assert len(oof) == 13  # every lesion predicted exactly once, out of fold
    assert 0 < report["temperature"] and 0 <= report["threshold"] <= 1
    # The fold models were also scored on the same test lesions as a drawn box and SAM crop them.
    assert set(report["served_as"]) == {"expert", "box", "sam"}
    assert report["served_as"]["expert"]["roc_auc"] == report["summary"]["pooled"]["roc_auc"]
    assert len((real_run / "cv" / "oof_served_sam.csv").read_text().splitlines()) == 13
    assert "| sam |" in (real_run / "cv" / "report.md").read_text()
    for name in ("roc.png", "confusion.png", "reliability.png", "fold0/curves.png"):
        assert (real_run / "cv" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_final_weights_export_and_evaluate(real_run, data_dir, tmp_path):
    served = tmp_path / "served"
    run_training("export", "--from", str(real_run / "weights"), "--to", str(served))
    model, entry = load_classifier("classifier-us", served)
    report = json.loads((real_run / "cv" / "report.json").read_text())
    assert entry.threshold == pytest.approx(report["threshold"])
    assert entry.temperature == pytest.approx(report["temperature"])
    assert entry.data["lesions"] == 12 and entry.git_commit
    assert entry.metrics["cv_folds"] == 2
    # The exported model is what evaluate loads and scores (on a prepared table of 20 real lesions).
    table = tmp_path / "table"
    write_table(select(prepared(data_dir / "busi"), "us", 10), table / "rois.csv")
    run_training("evaluate", "--weights", str(served), "--data", str(table), "--out", str(tmp_path / "ev"),
                 "--roi-source", "expert")
    ev = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert ev["model_sha256"] == entry.sha256 and ev["n"] == 20


def test_export_refuses_corrupt_weights_and_keeps_served(real_run, tmp_path):
    served = tmp_path / "served"
    run_training("export", "--from", str(real_run / "weights"), "--to", str(served))
    before = (served / "manifest.json").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in (real_run / "weights").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "classifier-us.safetensors").write_bytes(b"not a model")
    res = subprocess.run([sys.executable, "-m", "training", "export", "--from", str(bad), "--to", str(served)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "sha256 mismatch" in res.stderr
    assert (served / "manifest.json").read_text() == before
    load_classifier("classifier-us", served)


def test_folds_keep_groups_together_and_stratify(data_dir):
    records = select(prepared(data_dir / "busi"), "us", None)
    cfg = TrainConfig(modality="us")
    seen = set()
    for train_idx, test_idx in folds_of(records, cfg.folds, cfg.seed):
        train_groups = {records[i].group for i in train_idx}
        assert not train_groups & {records[i].group for i in test_idx}
        rate = np.mean([records[i].target for i in test_idx])
        assert 0.25 < rate < 0.40  # 210 / 647 = 0.32 malignant overall
        seen |= set(test_idx.tolist())
    assert seen == set(range(len(records)))


def test_affine_keeps_ultrasound_upright_and_fills_corners():
    x = torch.linspace(-1, 1, 32).view(1, 1, 32, 1).expand(16, 1, 32, 32).contiguous()  # dark top, bright bottom
    out = affine(x, "us", torch.Generator().manual_seed(0))
    assert (out[:, :, :4].mean() < out[:, :, -4:].mean())  # never flipped upside down
    assert out.abs().max() <= 1.0001 and (out != 0).float().mean() > 0.99  # reflection, no black corners


def test_no_lesions_is_a_clear_error(mias_dir, tmp_path):
    res = subprocess.run([sys.executable, "-m", "training", "train-classifier", "--served-as", "--rois", str(mias_dir),
                          "--modality", "us", "--quick", "--out", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and "no benign and malignant us lesions" in res.stdout + res.stderr


def test_seed_ensemble_reports_and_serves_the_mean(real_run, data_dir, tmp_path):
    second = tmp_path / "seed1"
    run_training("train-classifier", "--served-as", "--rois", str(data_dir / "busi"), "--modality", "us", "--regime", "real",
                 "--quick", "--limit", "6", "--seed", "1", "--out", str(second))
    ens = tmp_path / "ens"
    run_training("ensemble", str(real_run), str(second), "--out", str(ens))
    report = json.loads((ens / "cv" / "report.json").read_text())
    assert report["regime"] == "real ensemble x2" and report["member_seeds"] == [0, 1] and report["n"] == 12
    model, entry = load_classifier("classifier-us", ens / "weights")
    assert entry.members == 2 and entry.threshold == pytest.approx(report["threshold"])
    members = [load_classifier("classifier-us", run / "weights")[0] for run in (real_run, second)]
    x = torch.randn(3, 1, 128, 128)
    with torch.no_grad():
        expected = (members[0](x) + members[1](x)) / 2
        assert torch.allclose(model(x), expected, atol=1e-3)
    served = tmp_path / "served"
    run_training("export", "--from", str(ens / "weights"), "--to", str(served))
    assert read_manifest(served).models["classifier-us"].members == 2


def test_ensemble_of_runs_on_other_lesions_is_refused(real_run, mias_dir, tmp_path):
    other = tmp_path / "dm"
    run_training("train-classifier", "--served-as", "--rois", str(mias_dir), "--modality", "dm", "--quick", "--limit", "4",
                 "--no-final", "--out", str(other))
    res = subprocess.run([sys.executable, "-m", "training", "ensemble", str(real_run), str(other), "--out",
                          str(tmp_path / "ens")], capture_output=True, text=True)
    assert res.returncode == 2 and "same lesions" in res.stderr


def test_interrupted_cv_resumes_after_finished_folds(real_run, data_dir, tmp_path):
    import shutil
    out = tmp_path / "resumed"
    shutil.copytree(real_run, out)
    (out / "cv" / "oof.csv").unlink()
    shutil.rmtree(out / "cv" / "fold1")  # as if stopped during the second fold
    res = run_training("train-classifier", "--served-as", "--rois", str(data_dir / "busi"), "--modality", "us", "--quick",
                       "--limit", "6", "--no-final", "--out", str(out))
    assert "fold 1/2: already done" in res.stdout and "fold 2/2: test-fold AUC" in res.stdout
    assert (out / "cv" / "oof.csv").read_text().splitlines()[1:] != []
    before = {r.split(",")[0]: r for r in (real_run / "cv" / "oof.csv").read_text().splitlines()}
    after = {r.split(",")[0]: r for r in (out / "cv" / "oof.csv").read_text().splitlines()}
    fold0 = [k for k, r in before.items() if r.split(",")[5] == "0"]
    assert fold0 and all(after[k] == before[k] for k in fold0)  # the finished fold was not retrained


def test_sngan_and_hybrid_share_per_fold_gans_and_fid(data_dir, tmp_path):
    rois = str(data_dir / "busi")
    sngan = tmp_path / "sngan"
    run_training("train-classifier", "--served-as", "--rois", rois, "--modality", "us", "--regime", "sngan", "--quick",
                 "--limit", "6", "--no-final", "--out", str(sngan))
    fold0 = sngan / "cv" / "fold0" / "gan"
    history = json.loads((sngan / "cv" / "fold0" / "history.json").read_text())
    assert history[0]["phase"] == "pretrain-synthetic" and "phase" not in history[-1]
    assert (fold0 / "generator.safetensors").is_file() and list(fold0.glob("grid_epoch*.png"))
    stamp = (fold0 / "checkpoint.pt").stat().st_mtime_ns
    hybrid = tmp_path / "hybrid"
    run_training("train-classifier", "--served-as", "--rois", rois, "--modality", "us", "--regime", "hybrid", "--quick",
                 "--limit", "6", "--no-final", "--gan-dir", str(sngan), "--out", str(hybrid))
    assert (fold0 / "checkpoint.pt").stat().st_mtime_ns == stamp  # reused, not retrained
    assert not (hybrid / "cv" / "fold0" / "gan").exists()
    assert json.loads((hybrid / "cv" / "report.json").read_text())["regime"] == "hybrid"
    res = run_training("fold-fid", str(sngan), "--rois", rois, "--fold", "0", "--n", "8")
    fid = json.loads((fold0 / "fid.json").read_text())
    assert fid["sngan_vs_real"]["fid"] > 0 and "real vs real FID" in res.stdout


def test_sam_mask_channel_model_trains_and_is_served(data_dir, tmp_path):
    """Train on the server's ROI source with the SAM mask as 2nd channel; the server then feeds it the same."""
    import base64
    import shutil

    from fastapi.testclient import TestClient

    from models.manifest import WEIGHTS_DIR
    from server.app import create_app
    from server.settings import Settings

    out = tmp_path / "us-sam"
    run_training("train-classifier", "--served-as", "--rois", str(data_dir / "busi"), "--modality", "us", "--quick", "--limit", "3",
                 "--roi-source", "sam", "--mask-channel", "--out", str(out))
    report = json.loads((out / "cv" / "report.json").read_text())
    assert report["roi_source"] == "sam" and report["channels"] == 2
    served = tmp_path / "served"
    shutil.copytree(WEIGHTS_DIR, served)
    run_training("export", "--from", str(out / "weights"), "--to", str(served))
    model, entry = load_classifier("classifier-us", served)
    assert entry.input.channels == 2 and entry.input.roi_source == "sam" and model.conv1.in_channels == 2

    app = create_app(Settings(home=tmp_path / "home", weights=served, create_dev_user=False))
    with TestClient(app) as client:
        token = app.state.users.add_user("t")[1]
        image = data_dir / "busi" / "Dataset_BUSI_with_GT" / "malignant" / "malignant (7).png"
        res = client.post("/v1/analyses", files={"file": ("m.png", image.read_bytes())},
                          data={"modality": "us", "prompt": '{"box": [100, 60, 300, 220]}'},
                          headers={"Authorization": f"Bearer {token}"})
    assert res.status_code == 201, res.text
    assert res.json()["models"]["classifier"]["sha256"] == entry.sha256
    assert base64.b64decode(res.json()["heatmap_png"])[:4] == b"\x89PNG"
    from training.__main__ import main  # the SNGAN makes gray ROIs only: refused, not silently 1-channel
    assert main(["train-classifier", "--served-as", "--rois", str(data_dir / "busi"), "--modality", "us", "--regime", "sngan",
                 "--mask-channel", "--quick", "--out", str(tmp_path / "x")]) == 2


def test_scanner_augmentation_changes_the_image_not_the_mask():
    from training.classifier.augment import scanner
    gen = torch.Generator().manual_seed(0)
    image = torch.linspace(-1, 1, 64).repeat(64, 1)
    mask = (torch.rand(64, 64, generator=gen) > 0.5).float() * 2 - 1
    x = torch.stack([torch.stack([image, mask])] * 16)
    out = scanner(x, gen, p=1.0)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out[:, 1], x[:, 1])
    assert (out[:, 0] - x[:, 0]).abs().mean(dim=(1, 2)).min() > 0.01  # every image altered at p=1
    untouched = scanner(x[:, :1], torch.Generator().manual_seed(1), p=0.0)
    assert torch.allclose(untouched, x[:, :1], atol=1e-6)


def test_compare_scores_runs_on_the_served_roi_source(real_run, tmp_path):
    from training.evaluation.compare import compare
    report = json.loads((real_run / "cv" / "report.json").read_text())
    trained = compare([real_run], n_boot=50)[0]
    assert trained["served_as"] == "expert" and trained["pooled_auc"] == report["summary"]["pooled"]["roc_auc"]
    as_sam = compare([real_run, real_run], n_boot=50, served_as="sam")
    assert as_sam[0]["served_as"] == "sam"
    assert as_sam[0]["pooled_auc"] == pytest.approx(report["served_as"]["sam"]["roc_auc"])
    assert as_sam[0]["sensitivity"] == pytest.approx(report["served_as"]["sam"]["sensitivity"])
    assert as_sam[1]["delta_auc_vs_baseline"] == 0.0  # a run against itself
    res = subprocess.run([sys.executable, "-m", "training", "compare", str(real_run), "--served-as", "box",
                          "--out", str(tmp_path / "c")], capture_output=True, text=True)
    assert res.returncode == 0 and "cropped by `box`" in (tmp_path / "c" / "compare.md").read_text()
