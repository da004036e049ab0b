"""Evaluation metrics: cross-checked against scikit-learn, patient bootstrap, JSON shape, plots."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    matthews_corrcoef,
    recall_score,
    roc_auc_score,
)

from pipeline.evaluate import (
    METRIC_KEYS,
    calibration_table,
    confusion_table,
    evaluate_predictions,
    expected_calibration_error,
    fast_metrics,
    group_members,
    patient_aggregate,
    per_class_rates,
    point_metrics,
    resample_groups,
    roc_table,
)

CLASSES = ["a", "b", "c"]
# Hand-made: 9 images, 3 classes, a few mistakes, no ties in the argmax.
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.6, 0.1],  # a -> b
        [0.2, 0.7, 0.1],
        [0.1, 0.5, 0.4],
        [0.1, 0.2, 0.7],  # b -> c
        [0.1, 0.1, 0.8],
        [0.2, 0.2, 0.6],
        [0.5, 0.1, 0.4],  # c -> a
    ]
)
PATIENTS = np.array(["p1", "p1", "p2", "p3", "p3", "p4", "p5", "p6", "p6"])


def test_point_metrics_match_sklearn() -> None:
    m = point_metrics(LABELS, PROBS, n_bins=5)
    pred = PROBS.argmax(1)
    assert set(m) == set(METRIC_KEYS)
    assert m["accuracy"] == pytest.approx(accuracy_score(LABELS, pred)) == pytest.approx(6 / 9)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(LABELS, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(LABELS, pred, average="macro"))
    assert m["auroc"] == pytest.approx(roc_auc_score(LABELS, PROBS, multi_class="ovr", average="macro"))
    assert m["pr_auc"] == pytest.approx(
        np.mean([average_precision_score(c == LABELS, PROBS[:, c]) for c in range(3)])
    )
    assert m["cohen_kappa"] == pytest.approx(cohen_kappa_score(LABELS, pred))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(LABELS, pred))


@pytest.mark.parametrize("n_classes", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_bootstrap_metrics_equal_sklearn_ones(n_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, 60)
    y[:n_classes] = np.arange(n_classes)
    # Rounded probabilities: many tied scores, the hard case for AUROC / average precision.
    probs = np.round(rng.dirichlet(np.ones(n_classes), 60) + 0.5 * np.eye(n_classes)[y], 1)
    probs /= probs.sum(1, keepdims=True)
    fast, ref = fast_metrics(y, probs, 10), point_metrics(y, probs, 10)
    assert fast == pytest.approx(ref, abs=1e-12)
    # A degenerate replicate (one class only, all predicted the same) agrees too.
    one = np.zeros(5, dtype=np.int64)
    flat = np.tile(np.eye(n_classes)[0] * 0.5 + 0.5 / n_classes, (5, 1))
    assert fast_metrics(one, flat) == pytest.approx(point_metrics(one, flat), nan_ok=True)


def test_binary_auroc_is_the_usual_one() -> None:
    y = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    probs = np.stack([1 - p1, p1], axis=1)
    assert point_metrics(y, probs)["auroc"] == pytest.approx(roc_auc_score(y, p1))


def test_ece_by_hand() -> None:
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    # confidences 0.9, 0.8, 0.7, 0.6 all in (0.5, 1]; accuracy 2/4; mean confidence 0.75.
    assert expected_calibration_error(y, probs, n_bins=2) == pytest.approx(0.25)
    # Ten bins: each sample alone in its bin: |correct - conf| averaged.
    expected = np.mean([abs(1 - 0.9), abs(0 - 0.8), abs(0 - 0.7), abs(1 - 0.6)])
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(expected)
    table = calibration_table(y, probs, n_bins=2)
    assert len(table) == 1
    assert table.iloc[0].tolist() == pytest.approx([0.75, 0.5, 4])


def test_per_class_sensitivity_specificity() -> None:
    rates = per_class_rates(LABELS, PROBS.argmax(1), CLASSES)
    sens = recall_score(LABELS, PROBS.argmax(1), average=None)
    for c, name in enumerate(CLASSES):
        assert rates[name]["sensitivity"] == pytest.approx(sens[c])
        # specificity = recall of "not c"
        spec = recall_score(c != LABELS, PROBS.argmax(1) != c)
        assert rates[name]["specificity"] == pytest.approx(spec)


def test_bootstrap_resamples_whole_patients() -> None:
    rng = np.random.default_rng(0)
    members = group_members(PATIENTS)
    for _ in range(50):
        idx = resample_groups(members, rng)
        picked = PATIENTS[idx]
        for pid in np.unique(picked):
            # every drawn patient brings all of its images, as many times as it was drawn
            n_all = (pid == PATIENTS).sum()
            assert (picked == pid).sum() % n_all == 0
            assert set(idx[picked == pid]) == set(np.flatnonzero(pid == PATIENTS))
        # number of drawn patients equals the number of patients
        n_draws = sum((picked == pid).sum() // (pid == PATIENTS).sum() for pid in np.unique(picked))
        assert n_draws == len(np.unique(PATIENTS))


def test_patient_aggregate_mean_probability_and_majority_label() -> None:
    ids, labels, probs = patient_aggregate(LABELS, PROBS, PATIENTS)
    assert list(ids) == ["p1", "p2", "p3", "p4", "p5", "p6"]
    np.testing.assert_allclose(probs[0], PROBS[:2].mean(0))
    assert list(labels) == [0, 0, 1, 1, 2, 2]
    # Tie (one image of class 0, one of class 2) -> the class that sorts first.
    _, tie, _ = patient_aggregate(np.array([2, 0]), PROBS[:2], np.array(["x", "x"]))
    assert tie[0] == 0


def test_evaluate_predictions_json_shape_and_intervals() -> None:
    rng = np.random.default_rng(1)
    n_patients, k = 40, 3
    pid = np.repeat([f"p{i:02d}" for i in range(n_patients)], 3)
    y = np.repeat(rng.integers(0, k, n_patients), 3)
    logits = rng.normal(size=(len(y), k)) + 2.0 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    out = evaluate_predictions(y, probs, pid, CLASSES, n_bootstrap=200, ci_level=0.95, n_bins=10, seed=7)
    assert set(out) == {*METRIC_KEYS, "per_class", "patient_level"}
    assert set(out["patient_level"]) == set(METRIC_KEYS)
    assert set(out["per_class"]) == set(CLASSES)
    for block in (out, out["patient_level"]):
        for key in METRIC_KEYS:
            v = block[key]
            assert set(v) == {"value", "ci_low", "ci_high"}
            assert v["ci_low"] <= v["value"] + 1e-9 or key == "ece"
            assert v["ci_low"] <= v["ci_high"]
    assert out["balanced_accuracy"]["value"] > 0.6
    # same seed -> same intervals
    again = evaluate_predictions(y, probs, pid, CLASSES, n_bootstrap=200, ci_level=0.95, n_bins=10, seed=7)
    assert again == out


def test_undefined_metrics_become_null_not_nan() -> None:
    y = np.array([0, 0, 1])  # class "c" absent -> AUROC/PR-AUC undefined
    out = evaluate_predictions(y, PROBS[:3], np.array(["p", "q", "r"]), CLASSES, n_bootstrap=20, seed=0)
    assert out["auroc"]["value"] is None
    assert out["per_class"]["c"]["sensitivity"] is None


def test_plot_tables() -> None:
    conf = confusion_table(LABELS, PROBS, CLASSES)
    assert list(conf.columns) == ["actual", "predicted"] and len(conf) == 9
    assert (conf["actual"] == conf["predicted"]).sum() == 6
    roc = roc_table(LABELS, PROBS, CLASSES)
    assert list(roc.columns) == ["fpr", "tpr", "class"]
    for _, curve in roc.groupby("class"):
        assert curve["fpr"].iloc[0] == 0 and curve["tpr"].iloc[-1] == 1


def test_bad_shapes_are_reported() -> None:
    with pytest.raises(ValueError, match="expected probs"):
        evaluate_predictions(LABELS, PROBS[:, :2], PATIENTS, CLASSES)
