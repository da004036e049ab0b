"""Test-set metrics with patient-level bootstrap confidence intervals, and the evaluation plots.

All point metrics come from scikit-learn except the expected calibration error (ECE), which it
does not have. Images of one patient are not independent (same anatomy, same scanner, often the
same acquisition), so confidence intervals resample *patients* with replacement: a drawn patient
brings all of their images, a patient drawn twice counts twice.

Conventions (documented in the README):

* ``auroc``: macro average of one-vs-rest AUROCs (binary: the usual AUROC of class 1).
* ``pr_auc``: macro average of per-class average precision (one-vs-rest, every class, also for
  two classes).
* ``ece``: top-label ECE with ``n_bins`` equal-width confidence bins, ``sum_b |B|/N *
  |accuracy(B) - mean confidence(B)|``.
* AUROC/PR-AUC are NaN (``null`` in JSON) when a class is missing; bootstrap replicates where a
  metric is undefined are left out of its interval.
* Patient level: the patient's probability is the mean over their images; the patient's label is
  the most frequent image label (ties -> the class that sorts first). Patients normally have one
  label; mixed labels only occur with label noise.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    roc_auc_score,
    roc_curve,
)
from tqdm import tqdm

from pipeline.errors import InputError

log = logging.getLogger(__name__)

METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "pr_auc", "cohen_kappa", "mcc", "ece")


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE with equal-width bins (0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1].

    Args:
        labels: (N,) int class indices.
        probs: (N, K) probabilities.
        n_bins: Number of confidence bins.

    Returns:
        ECE in [0, 1].
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = _bin_index(confidence, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, confidence, n_bins))
    return float(gap.sum() / max(count.sum(), 1))


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _one_vs_rest(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return (labels[:, None] == np.arange(n_classes)[None, :]).astype(np.int64)


def point_metrics(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, float]:
    """The eight summary metrics of :data:`METRIC_KEYS` for one sample.

    Args:
        labels: (N,) int class indices in [0, K).
        probs: (N, K) probabilities; the prediction is the argmax.
        n_bins: ECE bins.

    Returns:
        ``{key: float}``; NaN where a metric is undefined (AUROC/PR-AUC with a class missing).
    """
    n_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    all_labels = list(range(n_classes))
    all_present = np.unique(labels).size == n_classes
    auroc = pr_auc = math.nan
    if all_present:
        if n_classes == 2:
            auroc = roc_auc_score(labels, probs[:, 1])
        else:
            auroc = roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=all_labels)
        pr_auc = average_precision_score(_one_vs_rest(labels, n_classes), probs, average="macro")
    # Degenerate bootstrap replicates (one class only) make sklearn warn; the values are then
    # NaN (kappa) or sklearn's documented fallback, and NaNs are left out of the intervals.
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        return {
            "accuracy": float(accuracy_score(labels, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
            "macro_f1": float(f1_score(labels, pred, labels=all_labels, average="macro", zero_division=0)),
            "auroc": float(auroc),
            "pr_auc": float(pr_auc),
            "cohen_kappa": float(cohen_kappa_score(labels, pred, labels=all_labels)),
            "mcc": float(matthews_corrcoef(labels, pred)),
            "ece": expected_calibration_error(labels, probs, n_bins),
        }


def fast_metrics(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, float]:
    """Same values as :func:`point_metrics`, in plain numpy, for the bootstrap loop.

    scikit-learn's input validation costs milliseconds per call, i.e. minutes over thousands of
    replicates. These formulas follow scikit-learn's definitions (rank-based AUROC with ties,
    step-wise average precision over distinct thresholds, sklearn's multiclass MCC) and are
    cross-checked against it in the tests.
    """
    n, n_classes = probs.shape
    pred = probs.argmax(axis=1)
    cm = np.bincount(labels * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(np.float64)
    true_count = cm.sum(axis=1).astype(np.float64)
    pred_count = cm.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / true_count
        f1_den = true_count + pred_count
        f1 = np.where(f1_den > 0, 2 * tp / np.where(f1_den > 0, f1_den, 1), 0.0)
        po = tp.sum() / n
        pe = float(true_count @ pred_count) / n**2
        kappa = (po - pe) / (1 - pe) if pe != 1 else math.nan
        mcc_den = math.sqrt((n**2 - pred_count @ pred_count) * (n**2 - true_count @ true_count))
        mcc = (tp.sum() * n - true_count @ pred_count) / mcc_den if mcc_den > 0 else 0.0
    auroc = pr_auc = math.nan
    if (true_count > 0).all():
        one_hot = labels[:, None] == np.arange(n_classes)[None, :]
        if n_classes == 2:
            auroc = _auroc(one_hot[:, 1], probs[:, 1])
        else:
            auroc = float(np.mean([_auroc(one_hot[:, c], probs[:, c]) for c in range(n_classes)]))
        pr_auc = float(np.mean([_average_precision(one_hot[:, c], probs[:, c]) for c in range(n_classes)]))
    return {
        "accuracy": float(po),
        # sklearn: mean recall over classes present in labels
        "balanced_accuracy": float(np.mean(recall[true_count > 0])),
        "macro_f1": float(f1.mean()),
        "auroc": float(auroc),
        "pr_auc": float(pr_auc),
        "cohen_kappa": float(kappa),
        "mcc": float(mcc),
        "ece": expected_calibration_error(labels, probs, n_bins),
    }


def _auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties (= sklearn's roc_auc_score)."""
    ranks = rankdata(score)
    n_pos = positive.sum()
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """sum_i (R_i - R_{i-1}) P_i over distinct thresholds (= sklearn's average_precision_score)."""
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # last index of each distinct score
    tps = np.cumsum(positive)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_rates(labels: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """One-vs-rest sensitivity (recall) and specificity per class; NaN when undefined."""
    cm = confusion_matrix(labels, pred, labels=list(range(len(classes))))
    total = cm.sum()
    out = {}
    for c, name in enumerate(classes):
        tp = cm[c, c]
        fn = cm[c].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = total - tp - fn - fp
        out[name] = {
            "sensitivity": float(tp / (tp + fn)) if tp + fn else math.nan,
            "specificity": float(tn / (tn + fp)) if tn + fp else math.nan,
        }
    return out


def group_members(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group (e.g. patient), groups in sorted order."""
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.cumsum(counts)[:-1])


def resample_groups(members: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One bootstrap replicate: draw groups with replacement; each brings all its rows.

    Args:
        members: From :func:`group_members`.
        rng: The generator (seeded from params).

    Returns:
        Row indices of the replicate (a row appears as often as its group was drawn).
    """
    pick = rng.integers(0, len(members), size=len(members))
    return np.concatenate([members[g] for g in pick])


def bootstrap_intervals(
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    *,
    n_bootstrap: int,
    ci_level: float,
    n_bins: int,
    rng: np.random.Generator,
    desc: str = "bootstrap",
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every metric, resampling groups (patients).

    Returns:
        ``{key: (low, high)}``; NaN bounds when ``n_bootstrap`` is 0 or no replicate defines the
        metric.
    """
    members = group_members(groups)
    values = np.full((n_bootstrap, len(METRIC_KEYS)), np.nan)
    for b in tqdm(range(n_bootstrap), desc=desc, leave=False, mininterval=2.0):
        idx = resample_groups(members, rng)
        m = fast_metrics(labels[idx], probs[idx], n_bins)
        values[b] = [m[k] for k in METRIC_KEYS]
    tail = (1.0 - ci_level) / 2.0 * 100.0
    out = {}
    for j, key in enumerate(METRIC_KEYS):
        col = values[:, j][np.isfinite(values[:, j])]
        if col.size == 0:
            out[key] = (math.nan, math.nan)
        else:
            low, high = np.percentile(col, [tail, 100.0 - tail])
            out[key] = (float(low), float(high))
    return out


def patient_aggregate(
    labels: np.ndarray, probs: np.ndarray, patient_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-patient label (most frequent, ties -> lowest class index) and mean probability.

    Returns:
        ``(patient_ids sorted, labels (P,), probs (P, K))``.
    """
    members = group_members(patient_ids)
    ids = np.unique(np.asarray(patient_ids))
    n_classes = probs.shape[1]
    p_labels = np.array(
        [np.bincount(labels[m], minlength=n_classes).argmax() for m in members], dtype=np.int64
    )
    p_probs = np.stack([probs[m].mean(axis=0) for m in members])
    return ids, p_labels, p_probs


def _with_intervals(
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    n_bootstrap: int,
    ci_level: float,
    n_bins: int,
    rng: np.random.Generator,
    desc: str,
) -> dict[str, dict[str, float | None]]:
    values = point_metrics(labels, probs, n_bins)
    cis = bootstrap_intervals(
        labels, probs, groups, n_bootstrap=n_bootstrap, ci_level=ci_level, n_bins=n_bins, rng=rng, desc=desc
    )
    return {
        k: {"value": _num(values[k]), "ci_low": _num(cis[k][0]), "ci_high": _num(cis[k][1])}
        for k in METRIC_KEYS
    }


def _num(x: float) -> float | None:
    """JSON-safe float: NaN -> None (null)."""
    return None if x is None or not math.isfinite(x) else float(x)


def evaluate_predictions(
    labels: np.ndarray,
    probs: np.ndarray,
    patient_ids: np.ndarray,
    classes: list[str],
    *,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    n_bins: int = 10,
    seed: int = 0,
) -> dict:
    """Everything that goes into ``metrics/test.json``.

    Args:
        labels: (N,) int class indices.
        probs: (N, K) probabilities, K = len(classes).
        patient_ids: (N,) patient of each image.
        classes: Class names in index order.
        n_bootstrap: Bootstrap replicates (0 = no intervals, bounds null).
        ci_level: e.g. 0.95.
        n_bins: ECE bins.
        seed: Seeds the bootstrap generator (image and patient level get independent streams).

    Returns:
        ``{accuracy..ece: {value, ci_low, ci_high}, per_class: {class: {sensitivity,
        specificity}}, patient_level: {accuracy..ece: {...}}}``.

    Raises:
        ValueError: Mismatched shapes or labels out of range.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    patient_ids = np.asarray(patient_ids).astype(str)
    if probs.ndim != 2 or probs.shape != (len(labels), len(classes)) or len(patient_ids) != len(labels):
        raise ValueError(
            f"evaluate: expected probs ({len(labels)}, {len(classes)}) and {len(labels)} patient ids, "
            f"got probs {probs.shape} and {len(patient_ids)} patient ids"
        )
    if len(labels) == 0:
        raise InputError("evaluate: the test split is empty")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(
            f"evaluate: labels must be in [0, {len(classes)}), got [{labels.min()}, {labels.max()}]"
        )
    image_rng, patient_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))

    out: dict = _with_intervals(
        labels, probs, patient_ids, n_bootstrap, ci_level, n_bins, image_rng, "bootstrap images"
    )
    out["per_class"] = {
        name: {k: _num(v) for k, v in rates.items()}
        for name, rates in per_class_rates(labels, probs.argmax(1), classes).items()
    }
    ids, p_labels, p_probs = patient_aggregate(labels, probs, patient_ids)
    out["patient_level"] = _with_intervals(
        p_labels, p_probs, ids, n_bootstrap, ci_level, n_bins, patient_rng, "bootstrap patients"
    )
    log.info(
        "test: %d images, %d patients; balanced_accuracy %.3f [%s, %s]",
        len(labels),
        len(ids),
        out["balanced_accuracy"]["value"],
        out["balanced_accuracy"]["ci_low"],
        out["balanced_accuracy"]["ci_high"],
    )
    return out


# ----------------------------------------------------------------------------- plot tables


def confusion_table(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per image, ``actual, predicted`` class names (dvc's ``confusion`` template)."""
    names = np.asarray(classes, dtype=object)
    return pd.DataFrame({"actual": names[labels], "predicted": names[probs.argmax(1)]})


def roc_table(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One-vs-rest ROC points per class: ``fpr, tpr, class`` (classes absent from labels skipped)."""
    parts = []
    for c, name in enumerate(classes):
        positive = labels == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        parts.append(pd.DataFrame({"fpr": fpr, "tpr": tpr, "class": name}))
    if not parts:
        return pd.DataFrame({"fpr": [], "tpr": [], "class": []})
    return pd.concat(parts, ignore_index=True)


def calibration_table(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Top-label reliability diagram on the ECE bins: ``mean_predicted, fraction_positive, count``.

    ``mean_predicted`` is the mean confidence (max probability) of the bin and
    ``fraction_positive`` the fraction of those predictions that are correct; empty bins are
    left out.
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = _bin_index(confidence, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    keep = count > 0
    return pd.DataFrame(
        {
            "mean_predicted": (np.bincount(bins, confidence, n_bins)[keep] / count[keep]),
            "fraction_positive": (np.bincount(bins, correct, n_bins)[keep] / count[keep]),
            "count": count[keep],
        }
    )


def predictions_table(index: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """``image_id, patient_id, label, predicted, prob_<class>...`` for every test image."""
    out = index[["image_id", "patient_id", "label"]].reset_index(drop=True).copy()
    out["predicted"] = np.asarray(classes, dtype=object)[probs.argmax(1)]
    for c, name in enumerate(classes):
        out[f"prob_{name}"] = probs[:, c]
    return out
