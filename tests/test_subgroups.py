"""Subgroup evaluation: the group the model fails is the worst one, small groups are reported as too
small, numeric columns are binned, missing columns are noted."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import evaluate as ev
from pipeline.subgroups import evaluate_subgroups, group_values, subgroup_plot_table


def test_the_failing_site_is_the_worst_group_and_small_groups_are_too_small():
    rng = np.random.default_rng(0)
    n = 400
    patients = np.repeat(np.arange(n // 2).astype(str), 2)
    labels = np.repeat(rng.integers(0, 2, n // 2), 2)
    site = np.repeat(rng.choice(["a", "b"], n // 2), 2).astype(object)
    site[-6:] = "tiny"
    correct = np.where(site == "b", rng.random(n) < 0.55, rng.random(n) < 0.95)
    pred = np.where(correct, labels, 1 - labels)
    probs = np.stack([1 - pred * 0.8 - 0.1, pred * 0.8 + 0.1], axis=1)
    table = pd.DataFrame({"site": site, "age": rng.integers(20, 90, n)})
    overall = ev.evaluate_predictions(labels, probs, patients, ["neg", "pos"], n_bootstrap=50, seed=0)
    res = evaluate_subgroups(
        labels, probs, patients, table, ["site", "age", "scanner"], overall=overall, n_bins=4, edges={},
        min_images=20, n_bootstrap=50, ci_level=0.95, n_calibration_bins=10, seed=0,
    )  # fmt: skip
    assert res["missing_columns"] == ["scanner"] and "scanner" in res["notes"][0]
    assert res["worst_group"]["column"] == "site" and res["worst_group"]["group"] == "b"
    by = {(g["column"], g["group"]): g for g in res["groups"]}
    assert by[("site", "tiny")]["too_small"] and "balanced_accuracy" not in by[("site", "tiny")]
    b = by[("site", "b")]["balanced_accuracy"]
    assert b["ci_low"] <= b["value"] <= b["ci_high"] and b["gap"] < -0.2
    assert sum(g["n_images"] for g in res["groups"] if g["column"] == "age") == n
    assert len([g for g in res["groups"] if g["column"] == "age"]) == 4
    assert set(subgroup_plot_table(res)["group"]) >= {"site=a", "site=b"}


def test_group_values_bins_and_edges():
    ages = pd.Series(["30", "45", "61", "", "80"])
    assert group_values(ages, 2, [40, 60]).tolist() == [
        "[-inf, 40)",
        "[40, 60)",
        "[60, inf)",
        "(missing)",
        "[60, inf)",
    ]
    assert group_values(pd.Series(["F", "M", "F"]), 4).tolist() == ["F", "M", "F"]
