"""Tests for pipeline/label_issues.py and stages/label_issues.py (issue 6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import label_issues as li

CLASSES = ["normal", "nodule", "effusion"]


def separable_set(n_groups: int = 45, per_group: int = 3, n_flips: int = 6, seed: int = 0, size: int = 32):
    """Tiny grayscale set whose classes differ by an obvious pattern; some labels flipped.

    Returns (images NHWC uint8, index DataFrame, true labels, flipped row indices).
    """
    rng = np.random.default_rng(seed)
    true = np.repeat(np.arange(n_groups) % 3, per_group)
    groups = np.repeat([f"p{g:03d}" for g in range(n_groups)], per_group)
    offset = np.repeat(rng.normal(0, 5, n_groups), per_group)  # patient-specific brightness
    imgs = rng.normal(90, 8, (len(true), size, size)) + offset[:, None, None]
    q = size // 4
    imgs[true == 1, q : 3 * q, q + 2 : q + 6] += 110  # vertical bar
    imgs[true == 2, 3 * q - 2 : 3 * q + 2, q : 3 * q] += 110  # horizontal bar
    imgs = np.clip(imgs, 0, 255).astype(np.uint8)[..., None]
    flipped = np.sort(rng.choice(len(true), n_flips, replace=False))
    given_labels = true.copy()
    given_labels[flipped] = (given_labels[flipped] + 1 + rng.integers(0, 2, n_flips)) % 3
    index = pd.DataFrame(
        {
            "image_id": [f"images/{g}/img_{i:03d}.png" for i, g in enumerate(groups)],
            "label_index": given_labels,
            "group_id": groups,
            "split": np.where(np.arange(len(true)) % 5 == 0, "val", "train"),
        }
    )
    return imgs, index, true, flipped


@settings(max_examples=25, deadline=None)
@given(
    n_groups=st.integers(2, 30),
    sizes=st.lists(st.integers(1, 6), min_size=30, max_size=30),
    n_folds=st.integers(2, 6),
    seed=st.integers(0, 1000),
)
def test_folds_never_split_a_group(n_groups, sizes, n_folds, seed):
    groups = np.repeat([f"g{i}" for i in range(n_groups)], sizes[:n_groups])
    labels = np.random.default_rng(seed).integers(0, 3, len(groups))
    folds = li.make_group_folds(labels, groups, n_folds, seed)
    assert (folds >= 0).all()
    per_group = pd.Series(folds).groupby(groups).nunique()
    assert (per_group == 1).all()
    n_used = min(n_folds, n_groups)
    assert set(folds) == set(range(n_used))
    for k in range(n_used):
        assert np.intersect1d(groups[folds == k], groups[folds != k]).size == 0


def test_folds_are_deterministic_and_need_two_groups():
    labels = np.arange(40) % 2
    groups = np.repeat(np.arange(20).astype(str), 2)
    assert np.array_equal(
        li.make_group_folds(labels, groups, 5, 3), li.make_group_folds(labels, groups, 5, 3)
    )
    with pytest.raises(ValueError, match="at least 2 groups"):
        li.make_group_folds(labels, np.full(40, "same"), 5, 0)


def test_linear_auditor_finds_planted_flips():
    imgs, index, _, flipped = separable_set()
    folds, pred, is_issue, quality = li.find_label_issues_oof(
        imgs, index, CLASSES, auditor="linear", n_folds=5, seed=42
    )
    found = set(np.flatnonzero(is_issue))
    assert not found - set(flipped), f"false positives {sorted(found - set(flipped))}"
    # cleanlab's per-class confidence thresholds may leave a flip or two unflagged on a set this
    # small (few errors per off-diagonal of the confident joint) ...
    assert len(found & set(flipped)) >= 4, f"missed flips {sorted(set(flipped) - found)}"
    # ... but the ranking is exact: the flipped images have the lowest label quality.
    assert set(np.argsort(quality)[: len(flipped)]) == set(flipped)
    assert pred.shape == (len(index), 3)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0)
    assert pd.Series(folds).groupby(index["group_id"]).nunique().max() == 1


def test_accepts_split_parts_and_checks_alignment():
    imgs, index, _, flipped = separable_set(n_groups=30)
    whole = li.find_label_issues_oof(imgs, index, CLASSES, auditor="linear", n_folds=3, seed=1)
    parts = li.find_label_issues_oof(
        [imgs[:40], imgs[40:]], index, CLASSES, auditor="linear", n_folds=3, seed=1
    )
    np.testing.assert_allclose(whole[1], parts[1])
    with pytest.raises(ValueError, match="rows but the index has"):
        li.find_label_issues_oof(imgs[:10], index, CLASSES, auditor="linear", n_folds=3, seed=1)
    bad = index.assign(label_index=index["label_index"].where(index.index != 4, 7))
    with pytest.raises(ValueError, match=r"row 4 .*label_index 7 not in 0..2"):
        li.find_label_issues_oof(imgs, bad, CLASSES, auditor="linear", n_folds=3, seed=1)


def _table(action: str, conflicts: pd.DataFrame | None = None) -> pd.DataFrame:
    index = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "split": ["train", "val", "train", "val"],
            "label_index": [0, 1, 2, 0],
        }
    )
    pred = np.array([[0.1, 0.8, 0.1], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]])
    is_issue = np.array([True, True, False, False])
    quality = pred[np.arange(4), index["label_index"]]
    if conflicts is None:
        conflicts = pd.DataFrame(columns=["image_id", "given_label", "suggested_label", "label_quality"])
    return li.build_label_issue_table(index, CLASSES, pred, is_issue, quality, conflicts, {}, action)


def test_drop_marks_train_rows_only():
    flag = _table("flag")
    assert not flag["is_dropped"].any()
    drop = _table("drop").set_index("image_id")
    assert drop["is_dropped"].to_dict() == {"a": True, "b": False, "c": False, "d": False}
    assert (drop.loc[drop["is_dropped"], "split"] == "train").all()
    assert list(_table("drop").columns) == li.LABEL_ISSUE_COLUMNS


def test_table_ranks_issues_first_with_suggestions():
    t = _table("flag")
    assert t["rank"].tolist() == [1, 2, 3, 4]
    assert t["image_id"].tolist()[:2] == ["b", "a"]  # lower quality first
    row = t.set_index("image_id").loc["a"]
    assert (row["given_label"], row["suggested_label"], row["reason"]) == ("normal", "nodule", li.REASON_OOF)


def test_duplicate_label_conflicts_are_reported():
    duplicates = pd.DataFrame(
        {
            "image_id": ["a", "x", "y", "z", "u", "v"],
            "cluster_id": [1, 1, 2, 2, 2, 3],
            "is_label_conflict": [True, True, True, True, True, False],
        }
    )
    labels = {"a": "normal", "x": "effusion", "y": "nodule", "z": "nodule", "u": "normal", "v": "normal"}
    conflicts = li.label_conflicts(duplicates, labels).set_index("image_id")
    assert set(conflicts.index) == {"a", "x", "y", "z", "u"}
    assert conflicts.loc["u", "suggested_label"] == "nodule"
    assert conflicts.loc["u", "label_quality"] == 0.0
    assert conflicts.loc["y", "label_quality"] == 0.5
    t = _table("drop", conflicts.reset_index()).set_index("image_id")
    # "a" was audited (and flagged): both reasons; "x" was not audited (excluded by curate).
    assert t.loc["a", "reason"] == f"{li.REASON_OOF};{li.REASON_CONFLICT}"
    assert t.loc["x", "split"] == "" and bool(t.loc["x", "is_label_issue"])
    assert not t.loc["x", "is_dropped"]
    assert t["rank"].is_monotonic_increasing or sorted(t["rank"]) == list(range(1, len(t) + 1))


def test_choose_auditor():
    kw = dict(image_size=64, n_folds=5, cnn_epochs=6, cnn_cpu_budget=20000)
    assert li.choose_auditor("auto", 100, has_cuda=False, **kw) == "cnn"
    assert li.choose_auditor("auto", 5000, has_cuda=False, **kw) == "linear"
    assert li.choose_auditor("auto", 5000, has_cuda=True, **kw) == "cnn"
    assert li.choose_auditor("linear", 10, has_cuda=True, **kw) == "linear"


def test_top_sheet_skips_missing_images():
    t = _table("flag")
    imgs = {"a": np.zeros((16, 16, 1), np.uint8)}
    sheet = li.make_top_sheet(t, imgs.get, n_top=5, tile_px=32)
    assert sheet.dtype == np.uint8 and sheet.shape[1] == 32  # one tile: "b" has no image


def _write_processed(tmp_path, imgs, index):
    import json

    from pipeline.normalize import fit_normalizer

    proc = tmp_path / "processed"
    proc.mkdir()
    for split in ("train", "val", "test"):
        m = (index["split"] == split).to_numpy() if split != "test" else np.zeros(len(index), bool)
        np.save(proc / f"{split}.npy", imgs[m])
        index[m].assign(label=[CLASSES[i] for i in index["label_index"][m]], patient_id=index["group_id"][m])[
            ["image_id", "label", "patient_id", "group_id", "label_index"]
        ].to_parquet(proc / f"{split}.parquet", index=False)
    norm = fit_normalizer([imgs[(index["split"] == "train").to_numpy()]], "standardize", 255, 1)
    (proc / "normalizer.json").write_text(json.dumps(norm.to_dict()))
    meta = {
        "classes": CLASSES,
        "channels": 1,
        "image_size": imgs.shape[1],
        "dtype": "uint8",
        "max_value": 255,
    }
    (proc / "meta.json").write_text(json.dumps(meta))
    return proc


def test_stage_writes_outputs_and_drops_train_rows_only(tmp_path):
    from stages.label_issues import main

    imgs, index, _, flipped = separable_set(n_groups=30)
    proc = _write_processed(tmp_path, imgs, index)
    # Two excluded images in a conflicting duplicate cluster: reported, not in the arrays.
    manifest = pd.DataFrame(
        {
            "image_id": [*index["image_id"], "images/x/a.png", "images/x/b.png"],
            "label": [CLASSES[i] for i in index["label_index"]] + ["normal", "nodule"],
            "status": "ok",
        }
    )
    manifest.to_parquet(tmp_path / "manifest.parquet")
    dups = pd.DataFrame(
        {"image_id": ["images/x/a.png", "images/x/b.png"], "cluster_id": [7, 7], "is_label_conflict": True}
    )
    dups.to_parquet(tmp_path / "duplicates.parquet")
    params = tmp_path / "params.yaml"
    params.write_text(
        "data: {root: data}\nlabel_issues: {auditor: linear, action: drop, n_folds: 3}\n", encoding="utf-8"
    )
    out = {
        k: tmp_path / v
        for k, v in dict(csv="r/li.csv", out="li.parquet", top="r/top.png", metrics="m.json").items()
    }
    argv = ["--params", str(params), "--processed", str(proc), "--duplicates", str(tmp_path / "duplicates.parquet"),
            "--manifest", str(tmp_path / "manifest.parquet")] + [x for k, v in out.items() for x in (f"--{k}", str(v))]  # fmt: skip
    assert main(argv) == 0
    table = pd.read_parquet(out["out"])
    assert list(table.columns) == li.LABEL_ISSUE_COLUMNS
    assert len(table) == len(index) + 2
    assert table["is_dropped"].any() and (table.loc[table["is_dropped"], "split"] == "train").all()
    assert table.loc[table["split"] == "val", "is_dropped"].sum() == 0
    conflict = table.set_index("image_id").loc[["images/x/a.png", "images/x/b.png"]]
    assert conflict["is_label_issue"].all() and (conflict["reason"] == li.REASON_CONFLICT).all()
    csv = pd.read_csv(out["csv"])
    assert list(csv.columns) == li.CSV_COLUMNS and len(csv) == int(table["is_label_issue"].sum())
    metrics = pd.read_json(out["metrics"], typ="series")
    assert metrics["auditor"] == "linear" and metrics["n_audited"] == len(index)
    assert out["top"].stat().st_size > 0


def test_tiny_cnn_auditor_runs():
    pytest.importorskip("torch")
    from pipeline.normalize import fit_normalizer

    imgs, index, _, _ = separable_set(n_groups=12, n_flips=2, size=16)
    norm = fit_normalizer([imgs], "standardize", 255, 1)
    from pipeline.train import TrainConfig

    config = TrainConfig(epochs=1, batch_size=16, lr=3e-3, weight_decay=0.0)
    kw = dict(normalizer=norm, arch="small_cnn", width=8, dropout=0.0, config=config, device="cpu")
    folds, pred, _, quality = li.find_label_issues_oof(
        imgs, index, CLASSES, auditor="cnn", n_folds=3, seed=0, cnn_kwargs=kw
    )
    assert pred.shape == (len(index), 3) and np.isfinite(pred).all()
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=1e-5)
    assert ((quality >= 0) & (quality <= 1)).all()


def test_a_near_chance_auditor_and_a_class_flagged_wholesale_are_called_out():
    """Issue 17 item 9: a weak audit says so instead of presenting its flags as label errors."""
    from pipeline.params import LabelIssuesParams

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 100)
    classes = ["a", "b", "c"]
    strong = np.full((300, 3), 0.05)
    strong[np.arange(300), labels] = 0.9
    flags = np.zeros(300, bool)
    flags[::50] = True
    ok = li.auditor_strength(labels, strong, flags, classes, LabelIssuesParams())
    assert not ok["is_auditor_weak"] and ok["warnings"] == [] and ok["auditor_lift"] == pytest.approx(1.0)

    noise = rng.dirichlet([1, 1, 1], size=300)  # predictions unrelated to the labels
    wholesale = flags | (labels == 2)
    weak = li.auditor_strength(labels, noise, wholesale, classes, LabelIssuesParams())
    assert weak["is_auditor_weak"] and weak["auditor_lift"] < 0.2
    assert weak["classes_flagged_wholesale"] == ["c"]
    assert any("auditor is weak" in w for w in weak["warnings"])
    assert any("'c' is flagged wholesale" in w for w in weak["warnings"])


def test_drop_refuses_a_large_share_or_a_weak_auditor_unless_overridden():
    from pipeline.errors import InputError
    from pipeline.params import LabelIssuesParams

    table = pd.DataFrame({"is_dropped": [True] * 3 + [False] * 7})
    fine = {"is_auditor_weak": False, "warnings": []}
    weak = {"is_auditor_weak": True, "warnings": ["the auditor is weak: ..."]}
    drop = LabelIssuesParams(action="drop")
    with pytest.raises(InputError, match=r"drop would remove 3 of 10 .*max_drop_share 0.1.*allow_large_drop"):
        li.check_drop(table, 10, fine, drop)
    li.check_drop(table, 100, fine, drop)  # 3 % of the audited train images: allowed
    with pytest.raises(InputError, match="drop refused: the auditor is weak"):
        li.check_drop(table, 100, weak, drop)
    li.check_drop(table, 10, weak, LabelIssuesParams(action="drop", allow_large_drop=True))
    li.check_drop(table, 10, weak, LabelIssuesParams(action="flag"))  # flagging never refuses
