"""`python -m training evaluate` end to end on small copies of the real BUSI and mini-MIAS data."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training.common.metrics import binary_report

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BUSI_PICK = {"benign": [1, 2, 3, 4, 5, 7], "malignant": [1, 2, 3, 4, 5, 6]}  # benign (4) has 2 masks
MIAS_PICK = ["mdb001", "mdb002", "mdb028", "mdb184"]  # 2 benign, 2 malignant
KEYS = {"modality", "n", "roc_auc", "roc_auc_ci", "accuracy", "sensitivity", "specificity", "f1", "ece",
        "confusion_matrix", "model_sha256", "model", "threshold", "ppv", "npv", "mcc", "per_class", "data",
        "roi_source", "trained_on", "regime"}


@pytest.fixture(scope="module")
def busi_copy(busi_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("busi_small")
    for label, nums in BUSI_PICK.items():
        (root / label).mkdir()
        for n in nums:
            for f in (busi_dir / label).glob(f"{label} ({n})*.png"):
                shutil.copy(f, root / label / f.name)
    return root


@pytest.fixture(scope="module")
def mias_copy(mias_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mias_small")
    (root / "all-mias").mkdir()
    lines = (mias_dir / "Info.txt").read_text().splitlines()
    rows = [lines[0]] + [ln for ln in lines[1:] if ln.split() and ln.split()[0] in MIAS_PICK]
    (root / "Info.txt").write_text("\n".join(rows))
    for ref in MIAS_PICK:
        shutil.copy(mias_dir / "all-mias" / f"{ref}.png", root / "all-mias")
    return root


BUSBRA_PICK = {"benign": 3, "malignant": 3}  # the first images of each class by ID


@pytest.fixture(scope="module")
def busbra_copy(data_dir, tmp_path_factory) -> Path:
    """A few real BUS-BRA images in the dataset's own layout (Images, Masks, bus_data.csv)."""
    src = data_dir / "busbra" / "BUSBRA"
    root = tmp_path_factory.mktemp("busbra_small") / "BUSBRA"
    (root / "Images").mkdir(parents=True)
    (root / "Masks").mkdir()
    with open(src / "bus_data.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, table = reader.fieldnames, list(reader)
    picked = [r for label, k in BUSBRA_PICK.items() for r in [r for r in table if r["Pathology"] == label][:k]]
    with open(root / "bus_data.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(picked)
    for r in picked:
        shutil.copy(src / "Images" / f"{r['ID']}.png", root / "Images")
        shutil.copy(src / "Masks" / f"mask_{r['ID'].removeprefix('bus_')}.png", root / "Masks")
    return root.parent


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    import torch

    from models.classifier import ARCHITECTURE, build_classifier
    from models.manifest import Manifest, ModelEntry, save_classifier, write_manifest

    root = tmp_path_factory.mktemp("weights")
    models = {}
    for modality, seed, temperature, threshold in (("us", 0, 1.5, 0.4), ("dm", 1, 1.0, 0.5)):
        torch.manual_seed(seed)
        name = f"classifier-{modality}"
        sha = save_classifier(build_classifier(), root / f"{name}.safetensors")
        models[name] = ModelEntry(name=name, file=f"{name}.safetensors", sha256=sha, architecture=ARCHITECTURE,
                                  modality=modality, temperature=temperature, threshold=threshold)
    write_manifest(Manifest(models=models), root)
    return root


def evaluate(*args: str | Path) -> subprocess.CompletedProcess:
    # BRANET_CACHE comes from conftest's autouse fixture, so the prepare/crop caches stay in tmp.
    return subprocess.run([sys.executable, "-m", "training", "evaluate", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=os.environ.copy(), timeout=300)


def check_outputs(out: Path, modality: str, n: int, sha: str, roi_source: str) -> dict:
    rep = json.loads((out / "report.json").read_text())
    assert KEYS <= set(rep)
    assert rep["modality"] == modality and rep["n"] == n and rep["roi_source"] == roi_source
    assert rep["model"] == f"classifier-{modality}" and rep["model_sha256"] == sha
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["lesion_id", "group", "source", "image_path", "label", "p_malignant"] and len(rows) == n
    y = [int(r["label"] == "malignant") for r in rows]
    p = [float(r["p_malignant"]) for r in rows]
    groups = [r["group"] for r in rows]
    assert all(0.0 <= v <= 1.0 for v in p)
    again = binary_report(y, p, threshold=rep["threshold"], groups=groups)  # CIs resample patients
    for key, value in again.items():
        assert rep[key] == value, key
    for png in ("roc.png", "confusion.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    md = (out / "report.md").read_text()
    assert "roc.png" in md and "predictions.csv" in md and "| true malignant |" in md
    if rep["roc_auc_ci"]:
        assert f"{rep['roc_auc_ci'][0]:.3f}" in md
    # per site (source): each row is binary_report of that site's predictions alone, at the same threshold
    sites = [r["source"] for r in rows]
    assert set(rep["per_site"]) == set(sites) == set(rep["data"]["sources"])
    for site, row in rep["per_site"].items():
        mine = [i for i, s in enumerate(sites) if s == site]
        alone = binary_report([y[i] for i in mine], [p[i] for i in mine], threshold=rep["threshold"],
                              groups=[groups[i] for i in mine])
        assert row == {k: alone[k] for k in row}, site
        assert row["n"] == len(mine)
    assert ("| site |" in md) == (len(rep["per_site"]) > 1)
    return rep


def test_busi_end_to_end(busi_copy, weights, tmp_path):
    from models.manifest import read_manifest
    out = tmp_path / "eval-us"
    res = evaluate("--weights", weights, "--data", busi_copy, "--out", out)
    assert res.returncode == 0, res.stderr
    rep = check_outputs(out, "us", 12, read_manifest(weights).models["classifier-us"].sha256, "sam")
    assert rep["sam_dice_vs_expert"]["all"] > 0.75  # LiteMedSAM from a jittered box: ~0.9 on BUSI
    assert rep["threshold"] == 0.4  # the manifest's threshold, not 0.5
    assert rep["data"]["counts"] == {"benign": 6, "malignant": 6} and rep["data"]["sources"] == ["busi"]
    assert "ROC AUC" in res.stdout
    assert rep["training_overlap"]["images"] is None  # these weights do not list their training images


def test_evaluate_warns_when_the_weights_were_trained_on_the_folder(busi_copy, weights, tmp_path):
    from models.manifest import read_manifest, sha256_file, write_manifest
    listed = tmp_path / "weights"
    shutil.copytree(weights, listed)
    manifest = read_manifest(listed)
    two = sorted(busi_copy.glob("*/*).png"))[:2]  # two of the twelve images (not their masks)
    manifest.models["classifier-us"].data["image_sha256_16"] = sorted(sha256_file(f)[:16] for f in two)
    write_manifest(manifest, listed)
    res = evaluate("--weights", listed, "--data", busi_copy, "--out", tmp_path / "o", "--roi-source", "expert")
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["training_overlap"]["images"] == 2 and rep["training_overlap"]["of"] == 12
    assert "2 of the 12 images" in res.stderr and "not a test" in (tmp_path / "o" / "report.md").read_text()


def test_mias_end_to_end(mias_copy, weights, tmp_path):
    from models.manifest import read_manifest
    out = tmp_path / "eval-dm"
    res = evaluate("--weights", weights, "--data", mias_copy, "--out", out, "--modality", "dm", "--roi-source", "expert")
    assert res.returncode == 0, res.stderr
    rep = check_outputs(out, "dm", 4, read_manifest(weights).models["classifier-dm"].sha256, "expert")
    assert rep["data"]["counts"] == {"benign": 2, "malignant": 2} and rep["data"]["sources"] == ["mias"]


def test_two_sites_report_per_site_rows(busi_copy, busbra_copy, weights, tmp_path):
    from models.manifest import read_manifest
    both = tmp_path / "two-sites"
    shutil.copytree(busi_copy, both / "busi")
    shutil.copytree(busbra_copy, both / "busbra")
    out = tmp_path / "eval-sites"
    res = evaluate("--weights", weights, "--data", both, "--out", out, "--roi-source", "expert")
    assert res.returncode == 0, res.stderr
    rep = check_outputs(out, "us", 18, read_manifest(weights).models["classifier-us"].sha256, "expert")
    assert rep["data"]["sources"] == ["busbra", "busi"]
    assert {s: (row["n"], row["n_malignant"]) for s, row in rep["per_site"].items()} == {
        "busbra": (6, 3), "busi": (12, 6)}
    for row in rep["per_site"].values():  # AUC with its CI, sensitivity/specificity at 0.4, ECE
        assert row["roc_auc"] is not None and len(row["roc_auc_ci"]) == 2 and row["ece"] is not None
    md = (out / "report.md").read_text()
    assert "| busbra | 6 (3) |" in md and "| busi | 12 (6) |" in md and "at 0.400" in md


# Bad input runs in-process: the exit paths are the same code, without a torch import per case.
def evaluate_here(capsys, *args: str | Path) -> tuple[int, str]:
    from training.__main__ import main
    code = main(["evaluate", *map(str, args)])
    return code, capsys.readouterr().err


def test_corrupted_weights_exit_2(busi_copy, weights, tmp_path, capsys):
    bad = tmp_path / "weights"
    shutil.copytree(weights, bad)
    f = bad / "classifier-us.safetensors"
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF
    f.write_bytes(bytes(data))
    code, err = evaluate_here(capsys, "--weights", bad, "--data", busi_copy, "--out", tmp_path / "o")
    assert code == 2 and "sha256" in err
    assert not (tmp_path / "o" / "report.json").exists()
    code, err = evaluate_here(capsys, "--weights", bad, "--data", busi_copy, "--out", tmp_path / "o",
                              "--model", "nope")
    assert code == 2 and "'nope'" in err and "classifier-us" in err


def test_bad_data_folders_exit_2(busi_copy, mias_copy, weights, tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a dataset")
    code, err = evaluate_here(capsys, "--weights", weights, "--data", junk, "--out", tmp_path / "o")
    assert code == 2 and "no dataset in a known layout" in err and str(junk) in err
    code, err = evaluate_here(capsys, "--weights", weights, "--data", tmp_path / "absent", "--out", tmp_path / "o")
    assert code == 2 and "not found" in err and "absent" in err
    both = tmp_path / "both"
    shutil.copytree(busi_copy, both / "busi")
    shutil.copytree(mias_copy, both / "mias")
    code, err = evaluate_here(capsys, "--weights", weights, "--data", both, "--out", tmp_path / "o")
    assert code == 2 and "--modality" in err and "dm, us" in err
    code, err = evaluate_here(capsys, "--weights", weights, "--data", busi_copy, "--out", tmp_path / "o",
                              "--modality", "dm")
    assert code == 2 and "no benign/malignant dm lesion" in err
    assert not (tmp_path / "o").exists()


def test_plots_write_pngs(tmp_path):
    from training.common.plots import plot_confusion, plot_curves, plot_reliability, plot_roc
    history = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "val_auc": 0.5 + e / 20,
                "lr": 1e-3, "note": "text is ignored"} for e in range(5)]
    paths = [plot_curves(history, tmp_path / "curves.png", "training"),
             plot_curves([{"epoch": 0, "train_loss": 0.7}], tmp_path / "loss_only.png", "loss only"),
             plot_roc([("fold 1", [0, 1, 0, 1], [0.1, 0.9, 0.4, 0.3]), ("one class", [0, 0], [0.2, 0.4])],
                      tmp_path / "roc.png", "ROC"),
             plot_confusion([[0, 0], [0, 0]], tmp_path / "cm.png", "empty"),
             plot_reliability([], [], tmp_path / "rel.png", "no cases")]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC
