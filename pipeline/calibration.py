"""Calibration and operating point, fitted on the validation split and applied unchanged to test.

* **Temperature scaling** (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): one
  scalar ``T > 0`` divides the logits, ``p = softmax(z / T)``, fitted by minimising the negative
  log-likelihood on the validation split. Dividing every logit by the same positive number keeps
  their order, so the predicted class (the argmax) never changes; only the confidence does (a
  network trained with cross entropy is usually over-confident, ``T > 1``). We receive
  probabilities, not logits: ``log p`` equals the logits up to a per-row constant, which softmax
  ignores, so ``softmax(log p / T)`` is the same thing.
* **Operating threshold** (binary tasks): the probability of the positive class above which an
  image is called positive, chosen on validation by Youden's J (max sensitivity + specificity - 1)
  or as the highest threshold that reaches a target sensitivity (a screening test fixes the
  sensitivity it must have), then applied to test as it is; sensitivity and specificity at that
  threshold are what a clinical reader would get.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_curve

from pipeline.errors import InputError

# Search interval of log T: T in [0.05, 20] covers any sensible network.
LOG_T_RANGE = (math.log(0.05), math.log(20.0))
_TINY = 1e-12


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row-wise.

    Args:
        probs: (N, K) probabilities (rows sum to 1).
        temperature: T > 0; 1 returns the input (up to rounding).

    Returns:
        float64 (N, K) probabilities with the same argmax per row.
    """
    if not temperature > 0:
        raise ValueError(f"apply_temperature: expected T > 0, got {temperature}")
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), _TINY, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean ``-log p(true class)`` (clipped at 1e-12)."""
    p_true = np.clip(probs[np.arange(len(labels)), labels], _TINY, 1.0)
    return float(-np.log(p_true).mean())


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The temperature that minimises the validation NLL (bounded search over log T).

    Args:
        labels: (N,) int class indices of the validation images.
        probs: (N, K) the model's validation probabilities.

    Returns:
        T in [0.05, 20].

    Raises:
        InputError: No validation image.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise InputError("calibration: the validation split is empty; set split.val_fraction > 0")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(labels, apply_temperature(probs, math.exp(log_t))),
        bounds=LOG_T_RANGE,
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(result.x))


def choose_threshold(is_positive: np.ndarray, scores: np.ndarray, target_sensitivity: float | None) -> float:
    """Operating threshold on ``scores`` (positive when ``score >= threshold``), from validation.

    Args:
        is_positive: (N,) bool, the validation truth.
        scores: (N,) probability of the positive class.
        target_sensitivity: None = Youden's J (ties: the highest threshold); a value in (0, 1] = the
            highest threshold whose sensitivity reaches it (the most specific such threshold).

    Returns:
        The threshold, in [0, 1].

    Raises:
        InputError: The validation split lacks positives or negatives (no ROC curve).
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        raise InputError(
            "evaluate: the validation split needs both classes to choose an operating threshold, got "
            f"{int(is_positive.sum())} positive of {len(is_positive)}"
        )
    fpr, tpr, thresholds = roc_curve(is_positive, scores)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf (nothing positive)
    if target_sensitivity is None:
        best = int(np.argmax(tpr - fpr))  # first maximum = highest threshold
    else:
        best = int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])
    return float(thresholds[best])


def rates_at(is_positive: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Sensitivity, specificity, PPV and NPV when ``score >= threshold`` is called positive (None if undefined)."""
    is_positive = np.asarray(is_positive, dtype=bool)
    called = np.asarray(scores) >= threshold
    tp, fn = int((called & is_positive).sum()), int((~called & is_positive).sum())
    fp, tn = int((called & ~is_positive).sum()), int((~called & ~is_positive).sum())

    def ratio(a: int, b: int) -> float | None:
        return a / (a + b) if a + b else None

    return {
        "sensitivity": ratio(tp, fn),
        "specificity": ratio(tn, fp),
        "ppv": ratio(tp, fp),
        "npv": ratio(tn, fn),
    }


def calibrate_test(
    val_labels: np.ndarray,
    val_probs: np.ndarray,
    test_labels: np.ndarray,
    test_probs: np.ndarray,
    n_bins: int = 10,
) -> tuple[np.ndarray, dict[str, float | int | str]]:
    """Fit the temperature on validation, apply it to test; ECE and NLL before and after.

    Returns:
        ``(calibrated test probabilities, summary)``; the summary is ``metrics/test.json``'s
        ``calibration``: ``method, fitted_on, n_val, temperature, ece_before, ece_after, nll_before,
        nll_after`` (test values) and ``val_ece_before, val_ece_after``.
    """
    from pipeline.evaluate import expected_calibration_error as ece

    val_labels = np.asarray(val_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    temperature = fit_temperature(val_labels, val_probs)
    calibrated = apply_temperature(test_probs, temperature)
    summary = {
        "method": "temperature_scaling",
        "fitted_on": "val",
        "n_val": len(val_labels),
        "temperature": round(temperature, 6),
        "ece_before": ece(test_labels, np.asarray(test_probs, dtype=np.float64), n_bins),
        "ece_after": ece(test_labels, calibrated, n_bins),
        "nll_before": negative_log_likelihood(test_labels, np.asarray(test_probs, dtype=np.float64)),
        "nll_after": negative_log_likelihood(test_labels, calibrated),
        "val_ece_before": ece(val_labels, np.asarray(val_probs, dtype=np.float64), n_bins),
        "val_ece_after": ece(val_labels, apply_temperature(val_probs, temperature), n_bins),
    }
    return calibrated, summary


def operating_point(
    classes: list[str],
    positive_class: str | None,
    val_labels: np.ndarray,
    val_probs: np.ndarray,
    test_labels: np.ndarray,
    test_probs: np.ndarray,
    target_sensitivity: float | None = None,
) -> dict:
    """Binary tasks: the threshold chosen on validation, and the rates it gives on val and test.

    Args:
        classes: The two class names (index order).
        positive_class: The class called "positive" (None = ``classes[1]``).
        val_labels, val_probs, test_labels, test_probs: (N,) labels and (N, 2) probabilities.
        target_sensitivity: None = Youden's J; else the sensitivity the threshold must reach on val.

    Returns:
        ``{positive_class, method, target_sensitivity, threshold, val: {...}, test: {...}}``, the
        rates from :func:`rates_at`.

    Raises:
        InputError: Not two classes, an unknown ``positive_class``, or a validation split
            without both classes.
    """
    if len(classes) != 2:
        raise InputError(f"evaluate: an operating threshold needs 2 classes, got {len(classes)}")
    positive = classes[1] if positive_class is None else positive_class
    if positive not in classes:
        raise InputError(f"evaluate.positive_class: {positive!r} is not one of {classes}")
    c = classes.index(positive)
    val_pos = np.asarray(val_labels) == c
    test_pos = np.asarray(test_labels) == c
    threshold = choose_threshold(val_pos, np.asarray(val_probs)[:, c], target_sensitivity)
    return {
        "positive_class": positive,
        "method": "youden" if target_sensitivity is None else "target_sensitivity",
        "target_sensitivity": target_sensitivity,
        "threshold": round(threshold, 6),
        "val": rates_at(val_pos, np.asarray(val_probs)[:, c], threshold),
        "test": rates_at(test_pos, np.asarray(test_probs)[:, c], threshold),
    }
