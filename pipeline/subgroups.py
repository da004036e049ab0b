"""Subgroup evaluation: the test metrics per group of patients (site, sex, age band, ...).

A model can be good on average and quietly fail one hospital, one scanner or one age band. For
every column named in ``evaluate.subgroups`` (columns of the labels table, carried in the
manifest) the test images are grouped by its value; a numeric column with more than
``subgroup_bins`` distinct values is cut at its quantiles, or at the edges given in
``evaluate.subgroup_edges``. Each group gets its number of images and patients, the main metrics
with percentile intervals from a bootstrap that resamples **patients** (as for the whole test set,
:func:`pipeline.evaluate.bootstrap_intervals`) and the gap to the whole test set. A group with
fewer than ``min_subgroup_images`` images is listed as too small, without metrics. The worst group
is the one with the lowest balanced accuracy among those large enough.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline import evaluate as ev

MAIN_METRICS = ("balanced_accuracy", "auroc", "macro_f1", "accuracy")


def group_values(values: pd.Series, n_bins: int, edges: Sequence[float] | None = None) -> pd.Series:
    """The subgroup name of each row: the value itself, or its bin ``"[lo, hi)"`` for a numeric
    column with more than ``n_bins`` distinct values (or with ``edges`` given). Empty values are
    ``"(missing)"``."""
    text = values.astype(str).str.strip()
    empty = values.isna() | text.str.lower().isin(["", "nan", "none", "null"])
    num = pd.to_numeric(text.where(~empty), errors="coerce")
    n_ok = int((~empty).sum())
    numeric = n_ok > 0 and num.notna().sum() >= 0.9 * n_ok
    if not numeric or (edges is None and num.nunique() <= n_bins):
        return text.where(~empty, "(missing)")
    if edges is None:
        cuts = np.unique(np.quantile(num.dropna(), np.linspace(0, 1, n_bins + 1)[1:-1]))
    else:
        cuts = np.asarray(sorted(edges), np.float64)
    bounds = [-math.inf, *cuts, math.inf]
    names = [f"[{bounds[i]:g}, {bounds[i + 1]:g})" for i in range(len(bounds) - 1)]
    code = np.searchsorted(cuts, num.to_numpy(np.float64), side="right")
    out = pd.Series([names[c] for c in code], index=values.index, dtype=object)
    return out.where(num.notna(), "(missing)")


def evaluate_subgroups(
    labels: np.ndarray,
    probs: np.ndarray,
    patient_ids: np.ndarray,
    table: pd.DataFrame,
    columns: Sequence[str],
    *,
    overall: Mapping[str, dict],
    n_bins: int,
    edges: Mapping[str, Sequence[float]],
    min_images: int,
    n_bootstrap: int,
    ci_level: float,
    n_calibration_bins: int,
    seed: int,
) -> dict:
    """Metrics per subgroup of the test images (``metrics/subgroups.json``).

    Args:
        labels, probs, patient_ids: The test split, as for :func:`pipeline.evaluate.evaluate_predictions`.
        table: One row per test image (aligned) with the subgroup columns.
        columns: The columns to group by (``evaluate.subgroups``); missing ones are reported.
        overall: The whole test set's metrics (``metrics/test.json``), for the gaps.
        n_bins, edges: Binning of numeric columns.
        min_images: Smaller groups are listed as too small, without metrics.
        n_bootstrap, ci_level, n_calibration_bins, seed: As for the whole test set.

    Returns:
        ``{"columns", "missing_columns", "metrics", "groups": [{"column", "group", "n_images",
        "n_patients", "too_small", <metric>: {"value", "ci_low", "ci_high", "gap"}}],
        "worst_group", "notes"}``.
    """
    missing = [c for c in columns if c not in table.columns]
    used = [c for c in columns if c in table.columns]
    notes = []
    if missing:
        notes.append(f"column(s) {missing} named by evaluate.subgroups are not in the labels table")
    if not columns:
        notes.append("evaluate.subgroups names no column")
    groups = []
    rng_seeds = np.random.SeedSequence([seed, 15]).spawn(max(1, len(used)))
    for col, ss in zip(used, rng_seeds, strict=False):
        rng = np.random.default_rng(ss)
        names = group_values(table[col].reset_index(drop=True), n_bins, edges.get(col))
        for name in sorted(pd.unique(names)):
            sel = (names == name).to_numpy()
            row: dict = {
                "column": col,
                "group": str(name),
                "n_images": int(sel.sum()),
                "n_patients": int(pd.unique(patient_ids[sel]).size),
                "too_small": bool(sel.sum() < min_images),
            }
            if not row["too_small"]:
                res = ev._with_intervals(
                    labels[sel], probs[sel], patient_ids[sel], n_bootstrap, ci_level, n_calibration_bins, rng,
                    f"bootstrap {col}={name}",
                )  # fmt: skip
                for key in MAIN_METRICS:
                    base = (overall.get(key) or {}).get("value")
                    value = res[key]["value"]
                    gap = None if value is None or base is None else round(value - base, 4)
                    row[key] = {**res[key], "gap": gap}
            groups.append(row)
    sized = [g for g in groups if not g["too_small"] and g["balanced_accuracy"]["value"] is not None]
    worst = min(sized, key=lambda g: g["balanced_accuracy"]["value"]) if sized else None
    if groups and not sized:
        notes.append(f"every subgroup has fewer than {min_images} test images (evaluate.min_subgroup_images)")
    return {
        "columns": used,
        "missing_columns": missing,
        "metrics": list(MAIN_METRICS),
        "ci_level": ci_level,
        "groups": groups,
        "worst_group": None
        if worst is None
        else {
            "column": worst["column"],
            "group": worst["group"],
            "balanced_accuracy": worst["balanced_accuracy"],
        },
        "notes": notes,
    }


def subgroup_plot_table(result: dict) -> pd.DataFrame:
    """``group, n_images, balanced_accuracy, ci_low, ci_high`` per large-enough group (dvc plots)."""
    rows = [
        {
            "group": f"{g['column']}={g['group']}",
            "n_images": g["n_images"],
            "balanced_accuracy": g["balanced_accuracy"]["value"],
            "ci_low": g["balanced_accuracy"]["ci_low"],
            "ci_high": g["balanced_accuracy"]["ci_high"],
        }
        for g in result["groups"]
        if not g["too_small"]
    ]
    return pd.DataFrame(rows, columns=["group", "n_images", "balanced_accuracy", "ci_low", "ci_high"])
