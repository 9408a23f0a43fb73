"""training/served.sh trains the served weights from scratch (about 2 hours on the CPU). Here it runs on a few
lesions per class with --quick configs: every step runs and is timed, and what it exports is the recipe that
models/weights serves, so the script cannot drift from the served weights unnoticed."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from models.manifest import WEIGHTS_DIR, load_classifier, load_localiser, load_sam_probe, read_manifest
from training.classifier.train_classifier import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
QUICK_KEYS = set(TrainConfig.quick_config(modality="us").model_dump(exclude_defaults=True)) | {"member_seeds"}
FITTED_PROBE_KEYS = {"file", "sha256", "alpha"}


def test_served_script_trains_the_served_recipe(data_dir, tmp_path):
    runs, weights = tmp_path / "runs", tmp_path / "weights"
    env = {**os.environ, "PY": sys.executable, "BRANET_DATA": str(data_dir), "RUNS": str(runs),
           "WEIGHTS": str(weights), "LIMIT": "3"}
    started = time.monotonic()
    res = subprocess.run(["bash", str(ROOT / "training" / "served.sh")], env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    assert res.returncode == 0, res.stderr[-3000:]
    times = [line.split("\t") for line in (runs / "served-time.tsv").read_text().splitlines()[1:]]
    assert [step for step, _ in times] == ["prepare", "us-classifier", "us-probe", "dm-classifier", "us-localiser",
                                           "export", "total"]
    # Minutes with one decimal, rounded down (whole 6 s): the total is the script's own wall time (what this
    # test measured around it, less at most 6 s of rounding and a few of start-up), and the steps add up to
    # it (each step loses under 6 s to the rounding, the total under 6 s more).
    assert all(re.fullmatch(r"\d+\.\d", minutes) for _, minutes in times), times
    *steps, (_, total) = [(step, float(minutes)) for step, minutes in times]
    assert wall - 15 < float(total) * 60 <= wall + 1, (total, wall)  # bash SECONDS: whole seconds
    assert float(total) - 0.6 < sum(m for _, m in steps) <= float(total) + 1e-9, times

    trained, served = read_manifest(weights).models, read_manifest(WEIGHTS_DIR).models
    assert set(trained) == set(served) == {"classifier-us", "classifier-dm"}
    for name, entry in trained.items():
        load_classifier(name, weights)  # sha256 and shape verified
        want = served[name]
        assert (entry.architecture, entry.input, entry.regime) == (want.architecture, want.input, want.regime)
        assert sorted(entry.data["sources"]) == sorted(want.data["sources"]), name  # the sites trained on
        shared = (set(entry.training) & set(want.training)) - QUICK_KEYS
        assert {k: entry.training[k] for k in shared} == {k: want.training[k] for k in shared}, name
    probe, want = trained["classifier-us"].sam_probe, served["classifier-us"].sam_probe
    load_sam_probe(trained["classifier-us"], weights)
    assert probe.model_dump(exclude=FITTED_PROBE_KEYS) == want.model_dump(exclude=FITTED_PROBE_KEYS)
    localiser, want = read_manifest(weights).localisers["localiser-us"], read_manifest(WEIGHTS_DIR).localisers["localiser-us"]
    load_localiser(localiser, weights)  # sha256 and shape verified
    assert (localiser.sam, localiser.level, localiser.limit, sorted(localiser.data)) == \
        (want.sam, want.level, want.limit, sorted(want.data))
    assert localiser.training["find_rate"] == want.training["find_rate"]
