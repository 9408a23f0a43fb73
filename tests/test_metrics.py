import json
import math

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import (confusion_matrix, f1_score, matthews_corrcoef, precision_score, recall_score,
                             roc_auc_score)

from training.common.metrics import (binary_report, bootstrap_auc_ci, paired_auc_difference, cv_summary, ece,
                                     fit_temperature, roc_auc, threshold_for_sensitivity)


def _random(seed: int, n: int = 80):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    # Rounded scores give ties, which is where hand-written AUCs usually go wrong.
    p = np.round(np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1), 2)
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_report_matches_sklearn(seed, threshold):
    y, p = _random(seed)
    r = binary_report(y, p, threshold=threshold, n_boot=200)
    pred = (p >= threshold).astype(int)
    assert r["n"] == len(y) and r["n_malignant"] == int(y.sum()) and r["threshold"] == threshold
    assert r["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert r["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert r["accuracy"] == pytest.approx(np.mean(pred == y))
    assert r["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert r["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert r["ppv"] == pytest.approx(precision_score(y, pred))
    assert r["npv"] == pytest.approx(precision_score(y, pred, pos_label=0))
    assert r["f1"] == pytest.approx(f1_score(y, pred))
    assert r["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
    for cls, lab in (("benign", 0), ("malignant", 1)):
        pc = r["per_class"][cls]
        assert pc["precision"] == pytest.approx(precision_score(y, pred, pos_label=lab))
        assert pc["recall"] == pc["accuracy"] == pytest.approx(recall_score(y, pred, pos_label=lab))
        assert pc["f1"] == pytest.approx(f1_score(y, pred, pos_label=lab))
        assert pc["support"] == int((y == lab).sum())
    lo, hi = r["roc_auc_ci"]
    assert lo <= r["roc_auc"] <= hi and hi - lo < 0.5
    json.dumps(r, allow_nan=False)


def test_perfect_and_inverted():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    r = binary_report(y, p, n_boot=100)
    assert r["roc_auc"] == 1.0 and r["accuracy"] == 1.0 and r["mcc"] == 1.0 and r["f1"] == 1.0
    assert r["roc_auc_ci"] == [1.0, 1.0]
    inv = binary_report(y, 1 - p, n_boot=100)
    assert inv["roc_auc"] == 0.0 and inv["accuracy"] == 0.0 and inv["mcc"] == -1.0
    assert inv["roc_auc"] == roc_auc_score(y, 1 - p)
    assert inv["f1"] == 0.0 and inv["ppv"] == 0.0  # defined (denominators > 0) and zero


def test_one_class_gives_none_not_nan():
    y = np.zeros(5, int)
    p = np.array([0.1, 0.6, 0.2, 0.9, 0.4])
    r = binary_report(y, p, n_boot=50)
    assert r["roc_auc"] is None and r["roc_auc_ci"] is None
    assert r["sensitivity"] is None and r["per_class"]["malignant"]["recall"] is None
    assert r["specificity"] == pytest.approx(3 / 5)
    assert r["npv"] == 1.0 and r["ppv"] == 0.0 and r["f1"] == 0.0
    assert r["mcc"] is None  # sklearn says 0.0 here; undefined is the honest answer
    assert r["confusion_matrix"] == confusion_matrix(y, (p >= 0.5).astype(int), labels=[0, 1]).tolist()
    json.dumps(r, allow_nan=False)
    # All predicted benign and all malignant: ppv, specificity, f1's denominator ... all undefined.
    r = binary_report(np.ones(3, int), np.zeros(3), n_boot=10)
    assert r["ppv"] is None and r["specificity"] is None and r["sensitivity"] == 0.0 and r["f1"] == 0.0
    empty = binary_report([], [], n_boot=10)
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["ece"] is None


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        binary_report([0, 1], [0.5])
    with pytest.raises(ValueError):
        binary_report([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError):
        binary_report([0, 1], [0.5, float("nan")])


def test_ci_skips_one_class_resamples():
    # With 1 malignant in 10, about a third of resamples miss it: they must not drag the CI to 0.5.
    y = np.array([0] * 9 + [1])
    p = np.linspace(0, 1, 10)
    r = binary_report(y, p, n_boot=300)
    assert r["roc_auc"] == 1.0 and r["roc_auc_ci"] == [1.0, 1.0]


def test_ece_calibrated_small_overconfident_large():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert ece(y, p) < 0.02
    over = np.where(p > 0.5, 1.0, 0.0)  # certain, but right only as often as p says
    assert ece(y, over) > 0.2
    assert binary_report(y, p, n_boot=0)["ece"] == pytest.approx(ece(y, p))
    assert ece([1, 1], [1.0, 1.0]) == 0.0  # p == 1 lands in the last bin


def test_temperature_recovers_known_value():
    rng = np.random.default_rng(0)
    n, t_true = 20000, 2.5
    z = rng.normal(0, 4, size=(n, 2))
    y = (rng.random(n) < softmax(z / t_true, axis=1)[:, 1]).astype(int)
    assert fit_temperature(y, z) == pytest.approx(t_true, rel=0.08)
    assert fit_temperature(y, z / t_true) == pytest.approx(1.0, rel=0.08)


@pytest.mark.parametrize("target", [0.7, 0.9, 0.95, 1.0])
def test_threshold_for_sensitivity(target):
    y, p = _random(3, 200)
    t = threshold_for_sensitivity(y, p, target)
    sens = lambda th: np.mean(p[y == 1] >= th)  # noqa: E731
    assert sens(t) >= target
    higher = p[(y == 1) & (p > t)]
    if higher.size:
        assert sens(higher.min()) < target  # the next candidate up falls short: t is the largest
    with pytest.raises(ValueError):
        threshold_for_sensitivity(np.zeros(3), [0.1, 0.2, 0.3])


def test_cv_summary():
    folds = [_random(s, 40) for s in range(3)]
    reports = [binary_report(y, p, n_boot=50) for y, p in folds]
    y_all = np.concatenate([y for y, _ in folds])
    p_all = np.concatenate([p for _, p in folds])
    s = cv_summary(reports, y_all, p_all, 0.5, n_boot=50)
    aucs = [r["roc_auc"] for r in reports]
    assert s["n_folds"] == 3
    assert s["roc_auc"]["per_fold"] == aucs
    assert s["roc_auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert s["roc_auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
    for key in ("accuracy", "sensitivity", "specificity", "f1", "ece"):
        assert s[key]["mean"] == pytest.approx(np.mean([r[key] for r in reports]))
    assert s["pooled"]["n"] == len(y_all)
    assert s["pooled"]["roc_auc"] == pytest.approx(roc_auc_score(y_all, p_all))
    # An undefined fold AUC is kept in place but left out of the mean.
    one_class = binary_report([0, 0], [0.2, 0.3], n_boot=0)
    s2 = cv_summary([reports[0], one_class], y_all, p_all)
    assert s2["roc_auc"]["per_fold"] == [aucs[0], None]
    assert s2["roc_auc"]["mean"] == aucs[0] and s2["roc_auc"]["std"] is None
    json.dumps(s2, allow_nan=False)


def test_roc_auc_alone():
    y, p = _random(5)
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert roc_auc([1, 1], [0.2, 0.3]) is None
    assert not math.isnan(roc_auc([0, 1], [0.5, 0.5]))


def _lesions(n: int = 80, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return y, np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)


def test_group_bootstrap_treats_a_patients_lesions_as_one_draw():
    # Three copies of each lesion in one group each: drawing whole groups is drawing the lesions once,
    # so the interval equals the single copies' case bootstrap; drawing copies one by one narrows it.
    y, p = _lesions()
    groups = [f"g{i:03d}" for i in range(len(y)) for _ in range(3)]
    y3, p3 = np.repeat(y, 3), np.repeat(p, 3)
    single = bootstrap_auc_ci(y, p, 1000, seed=1)
    assert bootstrap_auc_ci(y3, p3, 1000, seed=1, groups=groups) == pytest.approx(single)
    naive = bootstrap_auc_ci(y3, p3, 1000, seed=1)
    assert naive[1] - naive[0] < 0.75 * (single[1] - single[0])
    rep = binary_report(y3, p3, groups=groups)
    assert rep["ci_resamples"] == "groups" and rep["roc_auc_ci"] == pytest.approx(
        bootstrap_auc_ci(y3, p3, 1000, groups=groups))
    with pytest.raises(ValueError, match="groups for"):
        bootstrap_auc_ci(y3, p3, 100, groups=groups[:-1])


def test_paired_difference_cancels_what_the_models_share():
    y, p = _lesions()
    delta, ci = paired_auc_difference(y, p, p, 500)
    assert delta == 0 and ci == [0, 0]
    better = np.where(y == 1, np.minimum(p + 0.2, 1), p)
    delta, ci = paired_auc_difference(y, p, better, 500, groups=[f"g{i // 2}" for i in range(len(y))])
    assert delta == pytest.approx(roc_auc(y, better) - roc_auc(y, p)) and 0 < ci[0] <= delta <= ci[1]
