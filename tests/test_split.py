"""Split: leakage invariants (hypothesis), balance vs StratifiedGroupKFold, errors, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.split import (
    assign_splits,
    balance_table,
    check_no_leakage,
    max_abs_deviation,
    sgkf_splits,
    split_metrics,
)

FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def make_table(
    rng: np.random.Generator, n_patients: int, n_classes: int, max_images: int, mixed: float = 0.1
):
    """Patients with 1..max_images images, skewed classes, some mixed-label patients, groups of 1-2 patients."""
    class_p = rng.dirichlet(np.full(n_classes, 3.0))
    rows = []
    for p in range(n_patients):
        main = rng.choice(n_classes, p=class_p)
        group = f"g{p // 2 if p % 7 == 0 else p}"  # some groups join two patients (near duplicates)
        for i in range(int(rng.integers(1, max_images + 1))):
            label = main if rng.random() > mixed else rng.integers(n_classes)
            rows.append((f"p{p:04d}/img{i:02d}.png", f"c{label}", group, f"p{p:04d}"))
    return pd.DataFrame(rows, columns=["image_id", "label", "group_id", "patient_id"])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    n_patients=st.integers(30, 120),
    n_classes=st.integers(2, 4),
    max_images=st.integers(1, 6),
)
def test_no_group_in_two_splits_and_every_row_once(seed, n_patients, n_classes, max_images):
    table = make_table(np.random.default_rng(seed), n_patients, n_classes, max_images)
    if table.groupby("label")["group_id"].nunique().min() < 3:
        with pytest.raises(ValueError, match="cannot stratify by label: class"):
            assign_splits(table, FRACTIONS, seed)
        return
    a = assign_splits(table, FRACTIONS, seed)
    assert len(a) == len(table) and a["image_id"].is_unique
    assert set(a["image_id"]) == set(table["image_id"])
    assert set(a["split"]) <= {"train", "val", "test"}
    df = table.merge(a, on="image_id")
    for key in ("group_id", "patient_id"):
        per = {s: df.loc[df["split"] == s, key].unique() for s in ("train", "val", "test")}
        assert np.intersect1d(per["train"], per["val"]).size == 0
        assert np.intersect1d(per["train"], per["test"]).size == 0
        assert np.intersect1d(per["val"], per["test"]).size == 0
    assert check_no_leakage(a, table)["leaking_groups"] == 0


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_classes=st.integers(2, 4))
def test_fractions_near_target_when_groups_are_small(seed, n_classes):
    table = make_table(np.random.default_rng(seed), 300, n_classes, 3)
    a = assign_splits(table, FRACTIONS, seed)
    frac = a["split"].value_counts(normalize=True)
    for s, f in FRACTIONS.items():
        assert abs(frac.get(s, 0.0) - f) < 0.02, (s, frac.to_dict())
    assert max(max_abs_deviation(table["label"], a["split"]).values()) < 0.03


def test_balance_at_least_as_good_as_stratified_group_kfold():
    ours, sgkf = [], []
    for seed in range(4):
        table = make_table(np.random.default_rng(100 + seed), 150, 3, 5)
        for fn, out in ((assign_splits, ours), (sgkf_splits, sgkf)):
            out.append(max(max_abs_deviation(table["label"], fn(table, FRACTIONS, seed)["split"]).values()))
    assert np.mean(ours) <= np.mean(sgkf), (ours, sgkf)


def test_same_seed_same_split_regardless_of_row_order():
    table = make_table(np.random.default_rng(0), 80, 3, 4)
    a = assign_splits(table, FRACTIONS, 7).set_index("image_id")["split"]
    shuffled = table.sample(frac=1.0, random_state=1)
    b = assign_splits(shuffled, FRACTIONS, 7).set_index("image_id")["split"]
    pd.testing.assert_series_equal(a.sort_index(), b.sort_index())


def test_mixed_label_patient_and_very_large_patient_stay_whole():
    table = make_table(np.random.default_rng(3), 60, 2, 3)
    big = pd.DataFrame(
        {
            "image_id": [f"big/{i}.png" for i in range(40)],  # bigger than the val target
            "label": ["c0", "c1"] * 20,  # one patient, two labels
            "group_id": "gbig",
            "patient_id": "pbig",
        }
    )
    table = pd.concat([table, big], ignore_index=True)
    a = assign_splits(table, FRACTIONS, 0)
    assert a.loc[a["image_id"].str.startswith("big/"), "split"].nunique() == 1
    assert check_no_leakage(a, table)["leaking_patients"] == 0


def test_patient_spanning_two_groups_is_kept_together():
    table = make_table(np.random.default_rng(4), 40, 2, 3)
    table.loc[table.index[:2], "patient_id"] = "shared"  # inconsistent upstream grouping
    table.loc[table.index[:2], "group_id"] = ["gx", "gy"]
    a = assign_splits(table, FRACTIONS, 0)
    assert a.loc[table.index[:2], "split"].nunique() == 1


def test_class_with_too_few_groups_is_named():
    table = make_table(np.random.default_rng(5), 40, 2, 3, mixed=0.0)
    rare = pd.DataFrame({"image_id": ["r/1.png", "r/2.png"], "label": "rare", "group_id": ["gr1", "gr2"],
                         "patient_id": ["pr1", "pr2"]})  # fmt: skip
    with pytest.raises(ValueError, match="'rare' \\(2 groups\\)"):
        assign_splits(pd.concat([table, rare], ignore_index=True), FRACTIONS, 0)
    # Without a val split two groups are enough.
    a = assign_splits(pd.concat([table, rare], ignore_index=True), {"train": 0.8, "val": 0.0, "test": 0.2}, 0)
    assert (a["split"] != "val").all()


def test_leakage_check_fails_loudly():
    table = make_table(np.random.default_rng(6), 30, 2, 3)
    a = assign_splits(table, FRACTIONS, 0)
    g = table["group_id"].iloc[0]
    rows = table.index[table["group_id"] == g]
    bad = a.copy()
    bad.loc[rows[0], "split"] = "test" if a.loc[rows[0], "split"] != "test" else "train"
    if len(rows) > 1:
        with pytest.raises(ValueError, match="leakage"):
            check_no_leakage(bad, table)
    dup = pd.DataFrame({"image_id": [table["image_id"].iloc[0], a.loc[a["split"] != a["split"].iloc[0], "image_id"].iloc[0]],
                        "cluster_id": ["k1", "k1"]})  # fmt: skip
    with pytest.raises(ValueError, match="cluster_id 'k1'"):
        check_no_leakage(a, table, dup)
    with pytest.raises(ValueError, match="without a split"):
        check_no_leakage(a.iloc[1:], table)


def test_metrics_and_balance_table():
    table = make_table(np.random.default_rng(8), 60, 3, 4)
    a = assign_splits(table, FRACTIONS, 0)
    m = split_metrics(table, a, FRACTIONS)
    assert sum(m["splits"][s]["images"] for s in FRACTIONS) == len(table)
    bal = balance_table(table, a)
    assert list(bal.columns[:3]) == ["label", "split", "n_images"]
    assert bal["n_images"].sum() == len(table) and len(bal) == 3 * table["label"].nunique()


def test_split_stage_writes_outputs_and_checks_accounting(tmp_path):
    import json

    from stages.split import main

    table = make_table(np.random.default_rng(9), 40, 2, 3)
    manifest = table[["image_id", "label", "patient_id"]].assign(
        path=table["image_id"], status="ok", reason=""
    )
    manifest = pd.concat([manifest, pd.DataFrame([{"image_id": "bad.png", "path": "bad.png", "label": "c0",
                                                   "patient_id": "px", "status": "rejected", "reason": "unreadable"}])])  # fmt: skip
    curated = table[["image_id", "group_id"]].assign(included=True, reason="")
    curated.loc[curated.index[0], ["included", "reason"]] = [False, "exact_duplicate"]
    dups = pd.DataFrame({"image_id": table["image_id"].iloc[:2], "cluster_id": ["k0", "k0"]})
    for name, df in (("manifest", manifest), ("curated", curated), ("duplicates", dups)):
        df.to_parquet(tmp_path / f"{name}.parquet", index=False)
    (tmp_path / "params.yaml").write_text("data:\n  root: data\nseed: 3\n")
    out = {
        k: tmp_path / v
        for k, v in (("out", "splits.parquet"), ("metrics", "split.json"), ("balance", "bal.csv"))
    }
    args = ["--params", str(tmp_path / "params.yaml")]
    for name in ("manifest", "curated", "duplicates"):
        args += [f"--{name}", str(tmp_path / f"{name}.parquet")]
    for k, v in out.items():
        args += [f"--{k}", str(v)]
    assert main(args) == 0
    splits = pd.read_parquet(out["out"])
    assert len(splits) == len(table) - 1
    metrics = json.loads(out["metrics"].read_text())
    assert metrics["leaking_groups"] == 0 and metrics["accounting"]["n_files"] == len(table) + 1
    assert metrics["accounting"]["n_rejected"] == 1 and metrics["accounting"]["n_excluded"] == {
        "exact_duplicate": 1
    }
    assert set(pd.read_csv(out["balance"]).columns) >= {"label", "split", "n_images"}
