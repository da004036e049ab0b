"""Truth scoring: recall and precision definitions on hand-made tables."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.truth import score_against_truth

TRUTH = {
    "items": [
        {"path": "a_copy.png", "kind": "exact_duplicate", "source": "a.png"},
        {"path": "b_near.png", "kind": "near_duplicate", "source": "b.png"},
        {"path": "c_near.png", "kind": "near_duplicate", "source": "c.png"},  # missed
        {"path": "x_other.png", "kind": "cross_patient_duplicate", "source": "x.png"},
        {"path": "blur.png", "kind": "blurry"},
        {"path": "blank.png", "kind": "blank"},
        {"path": "wide.png", "kind": "odd_aspect_ratio"},
        {"path": "bad.png", "kind": "corrupt"},
        {"path": "flip.png", "kind": "flipped_label", "true_label": "normal"},
    ]
}


def _tables():
    ok = [
        "a.png",
        "a_copy.png",
        "b.png",
        "b_near.png",
        "c.png",
        "c_near.png",
        "x.png",
        "x_other.png",
        "blur.png",
        "blank.png",
        "wide.png",
        "clean.png",
        "flip.png",
        "lookalike.png",
    ]
    manifest = pd.DataFrame(
        {
            "image_id": ok + ["bad.png"],
            "patient_id": ["p1"] * 7 + ["p2"] + ["p3"] * 7,
            "status": ["ok"] * len(ok) + ["rejected"],
            "reason": [""] * len(ok) + ["truncated"],
        }
    )
    quality = pd.DataFrame({"image_id": ok})
    for issue in ("blurry", "dark", "overexposed", "low_information", "odd_size", "odd_aspect_ratio"):
        quality[f"is_{issue}_issue"] = False
    quality.loc[quality["image_id"] == "blur.png", "is_blurry_issue"] = True
    quality.loc[quality["image_id"] == "clean.png", "is_blurry_issue"] = True  # a false flag
    quality.loc[quality["image_id"] == "blank.png", "is_low_information_issue"] = True
    quality.loc[quality["image_id"] == "wide.png", "is_odd_size_issue"] = True  # either geometry flag counts
    duplicates = pd.DataFrame(
        {
            "image_id": [
                "a_copy.png",
                "a.png",
                "b.png",
                "b_near.png",
                "lookalike.png",
                "x.png",
                "x_other.png",
            ],
            "cluster_id": ["c0", "c0", "c1", "c1", "c1", "c2", "c2"],
            "kind": ["exact", "exact", "near", "near", "near", "exact", "exact"],
            "is_representative": [True, False, True, False, False, True, False],
            "is_cross_patient": [False, False, False, False, False, True, True],
        }
    )
    curated = pd.DataFrame({"image_id": ok, "included": True})
    label_issues = pd.DataFrame({"image_id": ["flip.png", "clean.png"], "is_label_issue": [True, False]})
    return manifest, quality, duplicates, curated, label_issues


def test_scores() -> None:
    s = score_against_truth(TRUTH, *_tables())
    # a flagged source (the copy was kept) and a cross-patient byte copy are right exact flags
    assert s["exact_duplicate"] == pytest.approx(
        {"precision": 1.0, "recall": 1.0, "n_planted": 1, "n_flagged": 2, "n_found": 1, "n_excluded": 0}
    )
    near = s["near_duplicate"]
    assert (near["recall"], near["precision"], near["n_flagged"]) == (0.5, 0.5, 2)  # lookalike is wrong
    assert s["cross_patient_duplicate"]["recall"] == 1.0 and s["cross_patient_duplicate"]["precision"] == 1.0
    assert (s["blurry"]["recall"], s["blurry"]["precision"]) == (1.0, 0.5)
    assert s["blank"]["recall"] == 1.0
    assert s["odd_aspect_ratio"]["recall"] == 1.0 and s["odd_aspect_ratio"]["precision"] == 1.0
    assert s["odd_size"]["n_planted"] == 0 and s["odd_size"]["recall"] is None
    assert s["corrupt"]["recall"] == 1.0
    assert s["flipped_label"]["recall"] == 1.0 and s["flipped_label"]["n_audited"] == 1
    assert s["flipped_label"]["recall_audited"] == 1.0
    assert "flipped_label" not in score_against_truth(TRUTH, *_tables()[:4])


def test_bad_truth_is_named() -> None:
    with pytest.raises(ValueError, match="'items' list"):
        score_against_truth({"kinds": []}, *_tables()[:4])


def test_flips_outside_the_audited_splits_count_against_recall_only():
    truth = {"items": TRUTH["items"] + [{"path": "x.png", "kind": "flipped_label", "true_label": "normal"}]}
    s = score_against_truth(truth, *_tables())["flipped_label"]
    # x.png was never audited (e.g. it is in the test split): recall halves, recall over audited flips does not
    assert (s["recall"], s["recall_audited"], s["n_audited"], s["n_planted"]) == (0.5, 1.0, 1, 2)


def test_flags_on_images_planted_as_another_kind_count_neither_way() -> None:
    truth = {
        "items": [
            {"path": "a", "kind": "overexposed"},
            {"path": "doc", "kind": "outlier", "subtype": "document"},
            {"path": "f", "kind": "flipped_label", "true_label": "x"},
        ]
    }
    manifest = pd.DataFrame(
        {"image_id": ["a", "doc", "f", "c"], "patient_id": ["p"] * 4, "status": "ok", "reason": ""}
    )
    quality = pd.DataFrame(
        {"image_id": ["a", "doc", "f", "c"], "is_overexposed_issue": [True, True, False, False]}
    )
    dup = pd.DataFrame(columns=["image_id", "cluster_id", "is_representative", "kind", "is_cross_patient"])
    curated = pd.DataFrame({"image_id": ["a", "doc", "f", "c"], "included": True})
    li = pd.DataFrame({"image_id": ["doc", "f", "c"], "is_label_issue": [True, True, False]})
    outliers = pd.DataFrame(
        {"image_id": ["a", "doc", "f", "c"], "is_outlier_issue": [True, True, False, False],
         "outlier_kind": ["atypical", "atypical", "", ""]}
    )  # fmt: skip
    out = score_against_truth(truth, manifest, quality, dup, curated, li, outliers, None)
    assert out["overexposed"]["precision"] == 1.0 and out["overexposed"]["n_flagged_other_planted"] == 1
    assert out["flipped_label"]["precision"] == 1.0 and out["flipped_label"]["n_flagged"] == 2
    assert out["outlier:document"]["precision"] == 1.0 and out["outlier:document"]["recall"] == 1.0
    assert out["outlier"]["n_flagged_other_planted"] == 1
