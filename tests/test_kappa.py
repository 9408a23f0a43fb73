import csv
import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from training.__main__ import main
from training.evaluation.kappa import cohen_kappa, landis_koch


@pytest.mark.parametrize("seed", range(5))
def test_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, 60)
    b = np.where(rng.random(60) < 0.3 * seed / 4 + 0.5, a, 1 - a)  # from chance-level to good agreement
    assert cohen_kappa(a.tolist(), b.tolist()) == pytest.approx(cohen_kappa_score(a, b))


def test_kappa_edges():
    assert cohen_kappa([0, 1, 1, 0], [0, 1, 1, 0]) == 1.0
    assert cohen_kappa([0, 1, 1, 0], [1, 0, 0, 1]) == pytest.approx(cohen_kappa_score([0, 1, 1, 0], [1, 0, 0, 1]))
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) is None  # sklearn gives nan: chance agreement is 1
    assert cohen_kappa([1, 1, 0], [1, 1, 1]) == pytest.approx(cohen_kappa_score([1, 1, 0], [1, 1, 1]))


@pytest.mark.parametrize("k, band", [(-0.3, "poor"), (-1e-9, "poor"), (0.0, "slight"), (0.2, "slight"),
                                     (0.21, "fair"), (0.4, "fair"), (0.41, "moderate"), (0.6, "moderate"),
                                     (0.61, "substantial"), (0.8, "substantial"), (0.81, "almost perfect"),
                                     (1.0, "almost perfect"), (None, "undefined")])
def test_landis_koch(k, band):
    assert landis_koch(k) == band


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_command_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 2, 40)
    r1 = np.where(rng.random(40) < 0.85, truth, 1 - truth)
    r2 = np.where(rng.random(40) < 0.75, truth, 1 - truth)
    p = np.clip(0.5 * truth + 0.5 * rng.random(40), 0, 1)
    names = {0: "benign", 1: "malignant"}
    rows = [[f"c{i}", names[t], names[a] if i % 2 else str(a), str(b), f"{q:.4f}"]
            for i, (t, a, b, q) in enumerate(zip(truth, r1, r2, p))]
    ratings = _write(tmp_path / "r.csv", ["case_id", "truth", "reader_1", "reader_2", "model"], rows)
    assert main(["kappa", "--ratings", str(ratings), "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((tmp_path / "o" / "kappa.json").read_text())
    assert rep["n"] == 40 and rep["skipped_rows"] == 0
    assert rep["kappa"] == pytest.approx(cohen_kappa_score(r1, r2))
    assert rep["band"] == landis_koch(rep["kappa"])
    assert rep["percent_agreement"] == pytest.approx(100 * np.mean(r1 == r2))
    for name, calls in (("reader_1", r1), ("reader_2", r2), ("model", (p >= 0.5).astype(int))):
        s = rep["raters"][name]
        assert s["accuracy"] == pytest.approx(np.mean(calls == truth))
        assert s["sensitivity"] == pytest.approx(np.mean(calls[truth == 1] == 1))
        assert s["specificity"] == pytest.approx(np.mean(calls[truth == 0] == 0))
    assert "roc_auc" in rep["raters"]["model"]
    md = (tmp_path / "o" / "kappa.md").read_text()
    assert md in printed and f"{rep['kappa']:.3f}" in md and rep["band"] in md


def test_bad_rows_are_skipped_with_their_number(tmp_path, capsys):
    rows = [["a", "benign", "benign", "0"], ["b", "malignant", "1", "malignant"],
            ["c", "malignant", "maybe", "1"],   # row 3: unknown label
            ["d", "benign", "", "0"],           # row 4: missing value
            ["e", "1", "1", "0"], ["f", "0", "0", "0"]]
    ratings = _write(tmp_path / "r.csv", ["case_id", "truth", "rad_a", "rad_b"], rows)
    code = main(["kappa", "--ratings", str(ratings), "--readers", "rad_a", "rad_b", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 0
    assert "row 3" in err and "maybe" in err and "row 4" in err and "missing value" in err
    rep = json.loads((tmp_path / "o" / "kappa.json").read_text())
    assert rep["n"] == 4 and rep["skipped_rows"] == 2 and rep["readers"] == ["rad_a", "rad_b"]
    assert rep["kappa"] == pytest.approx(cohen_kappa_score([0, 1, 1, 0], [0, 1, 0, 0]))
    assert "model" not in rep["raters"]


def test_missing_column_and_file_exit_2(tmp_path, capsys):
    ratings = _write(tmp_path / "r.csv", ["case_id", "truth", "reader_1"], [["a", "0", "0"]])
    assert main(["kappa", "--ratings", str(ratings), "--out", str(tmp_path / "o")]) == 2
    assert "reader_2" in capsys.readouterr().err
    assert main(["kappa", "--ratings", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "none.csv" in capsys.readouterr().err
    bad_model = _write(tmp_path / "m.csv", ["case_id", "truth", "reader_1", "reader_2", "model"],
                       [["a", "0", "0", "1", "1.7"], ["b", "1", "1", "1", "0.9"], ["c", "0", "0", "0", "benign"]])
    assert main(["kappa", "--ratings", str(bad_model), "--out", str(tmp_path / "o")]) == 0
    assert "row 1" in capsys.readouterr().err
    only_bad = _write(tmp_path / "x.csv", ["case_id", "truth", "reader_1", "reader_2"], [["a", "?", "0", "0"]])
    assert main(["kappa", "--ratings", str(only_bad), "--out", str(tmp_path / "o2")]) == 2
