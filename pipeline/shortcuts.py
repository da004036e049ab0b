"""Shortcut audit: does anything but anatomy predict the label?

A model that reads the hospital, the scanner or a corner marker off an image looks good on a test
split drawn from the same hospitals and fails elsewhere. For every candidate attribute this module
measures how well the attribute *alone* predicts the label, out of fold, under the same
patient-grouped folds as the label-issue audit (``pipeline.label_issues.make_group_folds``), and
compares it with chance:

* **Candidates**: every extra column of the labels table (site, scanner, view, sex, age, ...), the
  DICOM header fields ingest read (manifest columns ``dicom_<Keyword>``), and acquisition
  properties (width, height, aspect ratio, file format, bit depth, channel mode, file size, and the
  intensity statistics ``mean``, ``std``, ``p05``, ``p95`` of features.parquet).
* **Model per attribute**: a numeric attribute with more than ``n_bins`` values is cut at its
  quantiles (labels are not used for the cut); each value or bin gets the class frequencies of the
  fitting folds, smoothed towards the overall class shares (one pseudo-image). A value never seen in
  the fitting folds predicts the overall shares, so an identifier-like column scores chance.
* **Border-only test**: the linear auditor of ``pipeline.label_issues`` (its features and its
  logistic regression) trained on the processed images with the central region set to 0, so only
  the frame is seen; when it predicts the label, the label leaks through markers, text, rulers or
  borders.
* **Score**: balanced accuracy of the out-of-fold predictions, predicting the class with the highest
  ratio of predicted to overall share (the rule that maximizes balanced accuracy, so a rare class
  can be predicted). Chance is ``1 / n_classes`` whatever the class balance. Interval: percentile
  bootstrap resampling **groups** (patients) of the out-of-fold predictions
  (``pipeline.evaluate.resample_groups``), so a column constant within patients is not judged on
  more evidence than there is.
* **Flag** (``is_shortcut``): the interval's lower end is above chance **and** the lift
  ``(score - chance) / (1 - chance)`` is at least ``min_lift``: noise is not called a shortcut, and
  neither is a faint, real association (an intensity statistic that a large finding moves a
  little).

An attribute that predicts the label is not proof of a shortcut (a view can go with a disease for
good clinical reasons); it is a list for a human to read, with the class breakdown and example
images of each flagged attribute.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contract import MANIFEST_COLUMNS
from pipeline.evaluate import group_members, resample_groups

log = logging.getLogger(__name__)

DICOM_PREFIX = "dicom_"
INTENSITY_COLUMNS = ("mean", "std", "p05", "p95")
FEATURE_COLUMNS = ["image_id", *INTENSITY_COLUMNS, "n_channels", "is_gray_rgb"]
BORDER_ATTRIBUTE = "border_only"
TABLE_COLUMNS = [
    "attribute",
    "source",
    "kind",
    "n_values",
    "score",
    "chance",
    "ci_low",
    "ci_high",
    "lift",
    "is_shortcut",
]


# ------------------------------------------------------------------------------ candidates


def candidate_attributes(
    rows: pd.DataFrame, features: pd.DataFrame | None, file_sizes: pd.Series | None
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The candidate attributes of the audited images.

    Args:
        rows: Manifest rows of the audited images, in audit order (all manifest columns, the
            labels table's extra columns and ``dicom_*`` columns included).
        features: features.parquet rows (:data:`FEATURE_COLUMNS`) or None.
        file_sizes: Bytes per image_id, or None.

    Returns:
        ``(table, source)``: one column per attribute aligned with ``rows``, and for each its source
        (``labels table``, ``DICOM``, ``acquisition``).
    """
    out: dict[str, Any] = {}
    source: dict[str, str] = {}
    ids = rows["image_id"].astype(str)
    for col in rows.columns:
        if col in MANIFEST_COLUMNS:
            continue
        name = col
        out[name] = rows[col].to_numpy()
        source[name] = "DICOM" if col.startswith(DICOM_PREFIX) else "labels table"
    width = pd.to_numeric(rows["width"], errors="coerce").astype(float)
    height = pd.to_numeric(rows["height"], errors="coerce").astype(float)
    acquisition: dict[str, Any] = {
        "width": width.to_numpy(),
        "height": height.to_numpy(),
        "aspect_ratio": (width / height).round(3).to_numpy(),
        "format": rows["format"].astype(str).to_numpy(),
        "bit_depth": rows["bit_depth"].to_numpy(),
    }
    if file_sizes is not None:
        acquisition["file_size"] = ids.map(file_sizes).astype(float).to_numpy()
    if features is not None and len(features):
        f = features.set_index("image_id").reindex(ids)
        mode = np.where(
            f["n_channels"].to_numpy() == 1, "gray", np.where(f["is_gray_rgb"], "gray_rgb", "rgb")
        )
        acquisition["channel_mode"] = mode
        for col in INTENSITY_COLUMNS:
            acquisition[f"intensity_{col}"] = f[col].astype(float).to_numpy()
    for name, values in acquisition.items():
        if name in out:  # a labels-table column of the same name wins
            continue
        out[name], source[name] = values, "acquisition"
    return pd.DataFrame(out, index=rows.index), source


def encode_attribute(values: Sequence[Any] | np.ndarray, n_bins: int) -> tuple[np.ndarray, str, list[str]]:
    """Integer codes of an attribute's values (or bins).

    A column is numeric when at least 90 % of its non-empty values parse as numbers; a numeric
    column with more than ``n_bins`` distinct values is cut at its quantiles. Empty values get a
    code of their own.

    Returns:
        ``(codes (N,) int64, kind "numeric" | "categorical", names of the codes)``.
    """
    s = pd.Series(values, dtype=object)
    text = s.astype(str).str.strip()
    empty = s.isna().to_numpy() | text.str.lower().isin(["", "nan", "none", "null"]).to_numpy()
    num = pd.to_numeric(text.where(~empty), errors="coerce")
    n_ok = int((~empty).sum())
    if n_ok and num.notna().sum() >= 0.9 * n_ok:
        x = num.to_numpy(np.float64)
        finite = np.isfinite(x)
        distinct = np.unique(x[finite])
        if distinct.size <= n_bins:
            codes = np.searchsorted(distinct, x)
            names = [f"{v:g}" for v in distinct]
        else:
            edges = np.unique(np.quantile(x[finite], np.linspace(0, 1, n_bins + 1)[1:-1]))
            codes = np.searchsorted(edges, x, side="right")
            bounds = [-np.inf, *edges, np.inf]
            names = [f"[{bounds[i]:.4g}, {bounds[i + 1]:.4g})" for i in range(len(bounds) - 1)]
        codes = np.where(finite, codes, len(names))
        return codes.astype(np.int64), "numeric", [*names, "(missing)"]
    codes, uniques = pd.factorize(text.where(~empty, "(missing)"), sort=True)
    return codes.astype(np.int64), "categorical", [str(u) for u in uniques]


# ------------------------------------------------------------------------------ scoring


def oof_code_proba(codes: np.ndarray, labels: np.ndarray, folds: np.ndarray, n_classes: int) -> np.ndarray:
    """Out-of-fold class probabilities of a lookup table code -> smoothed class shares (N, K)."""
    n_codes = int(codes.max()) + 1 if codes.size else 0
    proba = np.zeros((codes.size, n_classes))
    for k in np.unique(folds):
        held = folds == k
        fit_codes, fit_labels = codes[~held], labels[~held]
        prior = np.bincount(fit_labels, minlength=n_classes) / max(fit_labels.size, 1)
        counts = np.zeros((n_codes, n_classes))
        np.add.at(counts, (fit_codes, fit_labels), 1.0)
        table = (counts + prior) / (counts.sum(axis=1, keepdims=True) + 1.0)  # one pseudo-image
        proba[held] = table[codes[held]]
    return proba


def predict_balanced(proba: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The class with the highest ratio of predicted to overall share (maximizes balanced accuracy)."""
    prior = np.bincount(labels, minlength=n_classes) / max(labels.size, 1)
    ratio = proba / np.where(prior > 0, prior, np.inf)
    return ratio.argmax(axis=1)


def balanced_accuracy(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present (scikit-learn's definition)."""
    cm = np.bincount(labels * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else float("nan")


def score_predictions(
    labels: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray,
    n_classes: int,
    *,
    n_bootstrap: int,
    ci_level: float,
    rng: np.random.Generator,
) -> tuple[float, float, float]:
    """Balanced accuracy and its group-bootstrap percentile interval."""
    value = balanced_accuracy(labels, pred, n_classes)
    if n_bootstrap == 0:
        return value, float("nan"), float("nan")
    members = group_members(groups)
    reps = np.array(
        [
            balanced_accuracy(labels[idx], pred[idx], n_classes)
            for idx in (resample_groups(members, rng) for _ in range(n_bootstrap))
        ]
    )
    tail = (1.0 - ci_level) / 2.0 * 100.0
    low, high = np.nanpercentile(reps, [tail, 100.0 - tail])
    return value, float(low), float(high)


def mask_centre(images: np.ndarray, border_fraction: float) -> np.ndarray:
    """Set everything but a frame of ``border_fraction`` of each side to 0 (NHWC, any dtype)."""
    out = np.array(images, copy=True)
    h, w = out.shape[1:3]
    dy, dx = max(1, round(h * border_fraction)), max(1, round(w * border_fraction))
    out[:, dy : h - dy, dx : w - dx] = 0
    return out


def _row(name: str, source: str, kind: str, n_values: int, stats: tuple[float, float, float], chance: float,
         min_lift: float) -> dict:  # fmt: skip
    value, low, high = stats
    lift = (value - chance) / (1.0 - chance) if chance < 1 else float("nan")
    is_shortcut = bool(np.isfinite(low) and low > chance and lift >= min_lift)
    return {
        "attribute": name,
        "source": source,
        "kind": kind,
        "n_values": int(n_values),
        "score": round(value, 4),
        "chance": round(chance, 4),
        "ci_low": None if not np.isfinite(low) else round(low, 4),
        "ci_high": None if not np.isfinite(high) else round(high, 4),
        "lift": round(lift, 4),
        "is_shortcut": is_shortcut,
    }


def audit_attributes(
    attributes: pd.DataFrame,
    sources: dict[str, str],
    labels: np.ndarray,
    groups: np.ndarray,
    folds: np.ndarray,
    n_classes: int,
    *,
    n_bins: int,
    n_bootstrap: int,
    ci_level: float,
    min_lift: float,
    seed: int,
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Score every attribute (see the module docstring).

    Returns:
        ``(rows, codes)``: one row per attribute (:data:`TABLE_COLUMNS`), sorted by score
        descending, and each attribute's codes (for the class breakdown of flagged ones).
    """
    chance = 1.0 / n_classes
    rows, codes_of = [], {}
    for i, name in enumerate(attributes.columns):
        codes, kind, names = encode_attribute(attributes[name].to_numpy(), n_bins)
        n_values = int(np.unique(codes).size)
        if n_values < 2:
            rows.append(
                {**_row(name, sources[name], kind, n_values, (chance, chance, chance), chance, min_lift)}
            )
            continue
        pred = predict_balanced(oof_code_proba(codes, labels, folds, n_classes), labels, n_classes)
        rng = np.random.default_rng([seed, i])
        stats = score_predictions(labels, pred, groups, n_classes, n_bootstrap=n_bootstrap, ci_level=ci_level,
                                  rng=rng)  # fmt: skip
        rows.append(_row(name, sources[name], kind, n_values, stats, chance, min_lift))
        codes_of[name] = (codes, names)
    return rows, codes_of


def border_test(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    folds: np.ndarray,
    n_classes: int,
    *,
    linear_c: float,
    n_bootstrap: int,
    ci_level: float,
    min_lift: float,
    seed: int,
) -> tuple[dict, np.ndarray]:
    """The border-only auditor's row and its out-of-fold predictions.

    Args:
        features: ``pipeline.label_issues.extract_features`` of the centre-masked images.
    """
    from pipeline.label_issues import oof_linear

    proba = oof_linear(features, labels, folds, n_classes, c=linear_c, seed=seed)
    pred = predict_balanced(proba, labels, n_classes)
    stats = score_predictions(
        labels, pred, groups, n_classes, n_bootstrap=n_bootstrap, ci_level=ci_level,
        rng=np.random.default_rng([seed, 10_000]),
    )  # fmt: skip
    return _row(BORDER_ATTRIBUTE, "image border", "image", 0, stats, 1.0 / n_classes, min_lift), pred


def class_breakdown(codes: np.ndarray, names: list[str], labels: np.ndarray, classes: Sequence[str]) -> dict:
    """``{value or bin: {class: n_images}}`` for a flagged attribute."""
    table = pd.crosstab(pd.Series(codes, name="code"), pd.Series(labels, name="label"))
    return {
        names[int(c)]: {str(classes[int(k)]): int(table.loc[c, k]) for k in table.columns}
        for c in table.index
    }


def most_skewed(codes: np.ndarray, labels: np.ndarray, n_classes: int, min_count: int = 5) -> tuple[int, int]:
    """The (code, class) whose share of the class most exceeds the class's overall share."""
    prior = np.bincount(labels, minlength=n_classes) / max(labels.size, 1)
    best, best_lift = (int(codes[0]) if codes.size else 0, 0), -np.inf
    for c in np.unique(codes):
        sel = codes == c
        if sel.sum() < min_count:
            continue
        share = np.bincount(labels[sel], minlength=n_classes) / sel.sum()
        k = int(np.argmax(share / np.where(prior > 0, prior, np.inf)))
        lift = share[k] / prior[k] if prior[k] > 0 else 0.0
        if lift > best_lift:
            best, best_lift = (int(c), k), lift
    return best
