"""Curation: policy reasons, nothing lost, leakage groups joining patients through copies."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.contract import QUALITY_ISSUES
from pipeline.curate import check_nothing_lost, curate
from pipeline.params import CurateParams


def _tables(n: int = 8):
    ids = [f"img{k}.png" for k in range(n)]
    manifest = pd.DataFrame(
        {
            "image_id": ids + ["broken.png"],
            "patient_id": ["pA", "pA", "pB", "pC", "pD", "pE", "", ""][:n] + ["pZ"],
            "status": ["ok"] * n + ["rejected"],
        }
    )
    quality = pd.DataFrame({"image_id": ids})
    for issue in QUALITY_ISSUES:
        quality[f"is_{issue}_issue"] = False
    quality.loc[0, ["is_dark_issue", "is_low_information_issue"]] = True
    quality.loc[5, "is_odd_size_issue"] = True  # not excluding by default
    duplicates = pd.DataFrame(
        {
            "image_id": ["img2.png", "img3.png", "img4.png", "img5.png", "img6.png", "img7.png"],
            "cluster_id": ["c0", "c0", "c1", "c1", "c2", "c2"],
            "kind": ["near", "near", "exact", "exact", "exact", "exact"],
            "is_representative": [True, False, True, False, True, False],
            "distance": 0,
            "is_cross_patient": [True, True, True, True, False, False],
            "is_label_conflict": [False, False, True, True, False, False],
        }
    )
    return manifest, quality, duplicates


def test_reasons_follow_policy() -> None:
    manifest, quality, duplicates = _tables()
    cur = curate(manifest, quality, duplicates, CurateParams()).set_index("image_id")
    assert cur.loc["img0.png", "reason"] == "low_quality:dark+low_information"
    assert cur.loc["img1.png", "included"] and cur.loc["img5.png", "reason"] == "label_conflict"
    assert cur.loc["img4.png", "reason"] == "label_conflict"
    assert cur.loc["img3.png", "reason"] == "near_duplicate"
    assert cur.loc["img7.png", "reason"] == "exact_duplicate"
    assert cur.loc["img2.png", "included"] and cur.loc["img6.png", "included"]
    assert "broken.png" not in cur.index
    relaxed = curate(
        manifest,
        quality,
        duplicates,
        CurateParams(exclude_issues=[], keep_one_per_duplicate_cluster=False, exclude_label_conflicts=False),
    )
    assert relaxed["included"].all()


def test_duplicate_across_patients_joins_their_groups() -> None:
    manifest, quality, duplicates = _tables()
    cur = curate(manifest, quality, duplicates, CurateParams()).set_index("image_id")
    g = cur["group_id"]
    assert g["img0.png"] == g["img1.png"] == "pA"  # same patient
    assert g["img2.png"] == g["img3.png"] == "pB"  # pB and pC are one group via a near copy
    assert g["img4.png"] == g["img5.png"] == "pD"  # also through excluded copies
    assert g["img6.png"] == g["img7.png"] != g["img0.png"]  # no patient id: linked by the copy
    assert g.nunique() == 4


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.integers(-1, 3)), min_size=1, max_size=30),
    st.lists(st.sampled_from(QUALITY_ISSUES), max_size=4),
)
def test_nothing_is_lost(rows, exclude) -> None:
    """included + excluded == ok rows; every duplicate cluster stays inside one group."""
    ids = [f"i{k:02d}" for k in range(len(rows))]
    manifest = pd.DataFrame({"image_id": ids, "patient_id": [f"p{p}" for p, _, _ in rows], "status": "ok"})
    quality = pd.DataFrame({"image_id": ids})
    for issue in QUALITY_ISSUES:
        quality[f"is_{issue}_issue"] = [bad for _, bad, _ in rows]
    members = [(i, c) for i, (_, _, c) in zip(ids, rows, strict=True) if c >= 0]
    dup = pd.DataFrame(members, columns=["image_id", "cluster_id"]).astype(str)
    dup["is_representative"] = ~dup["cluster_id"].duplicated()
    dup["kind"] = "near"
    dup["is_label_conflict"] = False
    cur = curate(manifest, quality, dup, CurateParams(exclude_issues=exclude))
    assert len(cur) == len(ids) and set(cur["image_id"]) == set(ids)
    assert cur["included"].sum() + (~cur["included"]).sum() == len(ids)
    merged = dup.merge(cur, on="image_id")
    assert (merged.groupby("cluster_id")["group_id"].nunique() == 1).all()
    patients = manifest.merge(cur, on="image_id")
    assert (patients.groupby("patient_id")["group_id"].nunique() == 1).all()


def test_check_nothing_lost_names_the_missing_row() -> None:
    manifest = pd.DataFrame({"image_id": ["a", "b"], "status": ["ok", "ok"]})
    curated = pd.DataFrame({"image_id": ["a"], "included": [True], "reason": [""], "group_id": ["g"]})
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        check_nothing_lost(manifest, curated)


def test_flagged_outliers_are_excluded_only_when_asked():
    manifest, quality, duplicates = _tables()
    outliers = pd.DataFrame(
        {
            "image_id": ["img1.png", "img2.png"],
            "is_outlier_issue": [True, False],
            "outlier_kind": ["rotated", ""],
        }
    )
    kept = curate(manifest, quality, duplicates, CurateParams(), outliers).set_index("image_id")
    assert kept.loc["img1.png", "included"]
    params = CurateParams(exclude_issues=["dark", "outlier"])
    cur = curate(manifest, quality, duplicates, params, outliers).set_index("image_id")
    assert cur.loc["img1.png", "reason"] == "outlier:rotated"
    assert cur.loc["img0.png", "reason"] == "low_quality:dark"  # quality reasons come first
    with pytest.raises(ValueError, match="lists 'outlier'"):
        curate(manifest, quality, duplicates, params)
