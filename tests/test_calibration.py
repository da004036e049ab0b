"""Calibration on val, applied to test: temperature scaling keeps the predicted class and lowers the
calibration error of an over-confident model; the operating threshold is chosen on val only."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline import calibration as cal
from pipeline.errors import InputError
from pipeline.evaluate import expected_calibration_error


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n: int, seed: int, sharpen: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) (so softmax(z) is calibrated), probabilities softmax(sharpen * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.0, (n, 3))
    true_p = _softmax(z)
    labels = np.array([rng.choice(3, p=p) for p in true_p])
    return labels, _softmax(sharpen * z)


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float64, (7, 4), elements=st.floats(-30, 30)),
    st.floats(0.05, 20.0),
)
def test_temperature_never_changes_the_predicted_class(logits, temperature) -> None:
    probs = _softmax(logits)
    scaled = cal.apply_temperature(probs, temperature)
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0, rtol=1e-9)
    # ties in probs (equal logits) may resolve either way; compare where the top class is unique
    top2 = np.sort(probs, axis=1)[:, -2:]
    unique = top2[:, 1] - top2[:, 0] > 1e-9
    assert (scaled.argmax(1)[unique] == probs.argmax(1)[unique]).all()


def test_temperature_fitted_on_val_lowers_test_ece_of_an_overconfident_model() -> None:
    val_labels, val_probs = _overconfident(2000, seed=0)
    test_labels, test_probs = _overconfident(2000, seed=1)
    calibrated, summary = cal.calibrate_test(val_labels, val_probs, test_labels, test_probs, n_bins=10)
    assert summary["temperature"] == pytest.approx(3.0, rel=0.15)  # undoes the sharpening
    assert summary["ece_after"] < summary["ece_before"] / 2
    assert summary["nll_after"] < summary["nll_before"]
    assert summary["ece_after"] == pytest.approx(expected_calibration_error(test_labels, calibrated, 10))
    assert (calibrated.argmax(1) == test_probs.argmax(1)).all()


def test_calibrated_model_keeps_temperature_near_one() -> None:
    labels, probs = _overconfident(4000, seed=2, sharpen=1.0)
    assert cal.fit_temperature(labels, probs) == pytest.approx(1.0, abs=0.12)
    with pytest.raises(InputError, match="validation split is empty"):
        cal.fit_temperature(np.array([], dtype=int), np.zeros((0, 3)))


def test_youden_and_target_sensitivity_thresholds() -> None:
    is_pos = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    # Youden: 0.7 gives sens 3/4, spec 4/4 (J 0.75); 0.4 gives 4/4 and 3/4 (J 0.75): the higher one
    assert cal.choose_threshold(is_pos, scores, None) == pytest.approx(0.7)
    assert cal.choose_threshold(is_pos, scores, 1.0) == pytest.approx(0.4)
    rates = cal.rates_at(is_pos, scores, 0.4)
    assert rates["sensitivity"] == 1.0 and rates["specificity"] == 0.75
    with pytest.raises(InputError, match="needs both classes"):
        cal.choose_threshold(np.ones(3, dtype=bool), np.ones(3), None)


def test_operating_point_is_chosen_on_val_and_applied_unchanged_to_test() -> None:
    rng = np.random.default_rng(0)
    classes = ["normal", "pneumonia"]
    val_labels = rng.integers(0, 2, 300)
    test_labels = rng.integers(0, 2, 300)
    noisy = lambda y: np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.25, len(y)), 0, 1)  # noqa: E731
    val_p1, test_p1 = noisy(val_labels), noisy(test_labels)
    val_probs = np.stack([1 - val_p1, val_p1], axis=1)
    test_probs = np.stack([1 - test_p1, test_p1], axis=1)
    op = cal.operating_point(classes, None, val_labels, val_probs, test_labels, test_probs, 0.95)
    assert op["positive_class"] == "pneumonia" and op["method"] == "target_sensitivity"
    assert op["val"]["sensitivity"] >= 0.95
    expected = cal.rates_at(test_labels == 1, test_p1, op["threshold"])
    assert op["test"]["sensitivity"] == pytest.approx(expected["sensitivity"], abs=0.01)
    flipped = cal.operating_point(classes, "normal", val_labels, val_probs, test_labels, test_probs)
    assert flipped["positive_class"] == "normal" and flipped["method"] == "youden"
    with pytest.raises(InputError, match="positive_class"):
        cal.operating_point(classes, "covid", val_labels, val_probs, test_labels, test_probs)
