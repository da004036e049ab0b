"""Accounting: one final state per input file; the check catches a lost row; drop hits train only."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.accounting import check_accounting, final_states, summarize


@pytest.fixture
def tables():
    ids = [f"images/p{i // 3}/img{i}.png" for i in range(12)]
    manifest = pd.DataFrame({"image_id": ids, "path": ids, "status": ["ok"] * 10 + ["rejected"] * 2,
                             "reason": [""] * 10 + ["unreadable", "not_an_image"]})  # fmt: skip
    curated = pd.DataFrame({"image_id": ids[:10], "included": [True] * 8 + [False] * 2,
                            "reason": [""] * 8 + ["low_quality:blurry", "exact_duplicate"],
                            "group_id": [f"g{i // 3}" for i in range(10)]})  # fmt: skip
    splits = pd.DataFrame({"image_id": ids[:8], "split": ["train"] * 3 + ["val"] * 3 + ["test"] * 2})
    return manifest, curated, splits


def test_every_file_has_one_final_state(tables):
    manifest, curated, splits = tables
    final = final_states(manifest, curated, splits)
    assert list(final["image_id"]) == list(manifest["image_id"])
    summary = check_accounting(final, manifest)
    assert summary["n_files"] == 12 and summary["n_rejected"] == 2
    assert summary["n_excluded"] == {"exact_duplicate": 1, "low_quality:blurry": 1}
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (3, 3, 2)
    assert summary["n_rejected_by_reason"] == {"not_an_image": 1, "unreadable": 1}


def test_check_catches_a_dropped_row(tables):
    manifest, curated, splits = tables
    with pytest.raises(ValueError, match="without a split.*img0.png"):
        final_states(manifest, curated, splits.iloc[1:])
    final = final_states(manifest, curated, splits)
    with pytest.raises(ValueError, match="1 input file\\(s\\) without a final state"):
        check_accounting(final.drop(index=4), manifest)
    with pytest.raises(ValueError, match="more than one final state"):
        check_accounting(pd.concat([final, final.iloc[[0]]]), manifest)
    bad = summarize(final, manifest)
    bad["n_train"] -= 1
    with pytest.raises(ValueError, match="do not add up to n_files=12"):
        check_accounting(final, manifest, bad)


def test_drop_removes_train_rows_only_and_still_adds_up(tables):
    manifest, curated, splits = tables
    li = pd.DataFrame({"image_id": splits["image_id"], "split": splits["split"],
                       "is_dropped": [True, False, True] + [False] * 5})  # fmt: skip
    final = final_states(manifest, curated, splits, li)
    summary = check_accounting(final, manifest)
    assert summary["n_excluded"]["label_issue"] == 2
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (1, 3, 2)
    dropped = final.loc[final["reason"] == "label_issue", "image_id"]
    assert set(dropped) <= set(splits.loc[splits["split"] == "train", "image_id"])
    li.loc[4, "is_dropped"] = True  # a val row
    with pytest.raises(ValueError, match="drop applies to train rows only"):
        final_states(manifest, curated, splits, li)


def test_inconsistent_inputs_are_named(tables):
    manifest, curated, splits = tables
    with pytest.raises(ValueError, match="missing from curated"):
        final_states(manifest, curated.iloc[1:], splits)
    bad = manifest.copy()
    bad.loc[10, "reason"] = ""
    with pytest.raises(ValueError, match="empty reason"):
        final_states(bad, curated, splits)


def test_accounting_stage_without_truth(tmp_path, tables):
    import json

    from stages.accounting import main

    manifest, curated, splits = tables
    li = pd.DataFrame(
        {"image_id": splits["image_id"], "split": splits["split"], "is_dropped": [True] + [False] * 7}
    )
    frames = {"manifest": manifest, "curated": curated, "splits": splits, "label-issues": li,
              "quality": pd.DataFrame({"image_id": manifest["image_id"]}), "duplicates": pd.DataFrame({"image_id": []})}  # fmt: skip
    args = ["--params", str(tmp_path / "params.yaml")]
    for name, df in frames.items():
        df.to_parquet(tmp_path / f"{name}.parquet", index=False)
        args += [f"--{name}", str(tmp_path / f"{name}.parquet")]
    (tmp_path / "params.yaml").write_text(
        "data:\n  root: data\n  truth: null\nlabel_issues:\n  action: drop\n"
    )
    for flag, name in (
        ("--out", "final.parquet"),
        ("--metrics", "acc.json"),
        ("--truth-metrics", "truth.json"),
    ):
        args += [flag, str(tmp_path / name)]
    assert main(args) == 0
    acc = json.loads((tmp_path / "acc.json").read_text())
    assert acc["n_excluded"]["label_issue"] == 1 and acc["n_train"] == 2
    assert json.loads((tmp_path / "truth.json").read_text()) == {"available": False}
    assert len(pd.read_parquet(tmp_path / "final.parquet")) == len(manifest)
