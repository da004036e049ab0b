"""Shortcut audit: a column that copies the label is flagged, a random one is not; a label written
in an image corner is caught by the border-only test, a label shown only in the centre is not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import shortcuts as sc
from pipeline.label_issues import extract_features, make_group_folds

KW = dict(n_bins=8, n_bootstrap=200, ci_level=0.95, min_lift=0.1, seed=0)


@pytest.fixture(scope="module")
def cohort():
    """300 images of 100 patients (3 each), one label per patient, 3 classes."""
    rng = np.random.default_rng(0)
    patient_label = rng.integers(0, 3, 100)
    groups = np.repeat(np.arange(100).astype(str), 3)
    labels = np.repeat(patient_label, 3)
    folds = make_group_folds(labels, groups, 5, 0)
    return rng, labels, groups, folds


def test_a_column_that_copies_the_label_is_flagged_and_a_random_one_is_not(cohort):
    rng, labels, groups, folds = cohort
    names = np.array(["normal", "nodule", "effusion"])
    attributes = pd.DataFrame(
        {
            "copy": names[labels],
            "random_site": np.repeat(rng.choice(["a", "b", "c"], 100), 3),
            "random_age": np.repeat(rng.integers(18, 90, 100), 3).astype(str),
            "accession": [f"acc{i}" for i in range(300)],  # unique per image: never seen in a fold
            "constant": "x",
        }
    )
    rows, _ = sc.audit_attributes(
        attributes, dict.fromkeys(attributes, "labels table"), labels, groups, folds, 3, **KW
    )
    by = {r["attribute"]: r for r in rows}
    assert by["copy"]["is_shortcut"] and by["copy"]["score"] == 1.0
    for name in ("random_site", "random_age", "accession", "constant"):
        assert not by[name]["is_shortcut"], by[name]
    assert by["accession"]["score"] == pytest.approx(1 / 3, abs=0.05)
    assert all(r["chance"] == pytest.approx(1 / 3, abs=1e-3) for r in rows)


def test_a_rare_class_that_a_site_predicts_is_flagged():
    rng = np.random.default_rng(1)
    labels = np.repeat((rng.random(200) < 0.1).astype(np.int64), 2)  # 10 % positive patients
    site = np.repeat(np.where(labels[::2] == 1, rng.random(200) < 0.8, rng.random(200) < 0.05), 2)
    groups = np.repeat(np.arange(200).astype(str), 2)
    folds = make_group_folds(labels, groups, 5, 0)
    rows, _ = sc.audit_attributes(
        pd.DataFrame({"site": site}), {"site": "labels table"}, labels, groups, folds, 2, **KW
    )
    assert rows[0]["is_shortcut"] and rows[0]["score"] > 0.8


def _images(labels: np.ndarray, where: str, rng: np.random.Generator) -> np.ndarray:
    """32x32 noise images; the label drawn as a bright square in a corner or in the centre."""
    x = rng.integers(40, 120, (labels.size, 32, 32, 1)).astype(np.uint8)
    for i, y in enumerate(labels):
        if y == 0:
            continue
        if where == "corner":
            r, c = (1, 1) if y == 1 else (1, 26)
        else:
            r, c = (10, 10) if y == 1 else (17, 17)
        x[i, r : r + 5, c : c + 5] = 250
    return x


@pytest.mark.parametrize(("where", "flagged"), [("corner", True), ("centre", False)])
def test_border_only_test(cohort, where, flagged):
    rng, labels, groups, folds = cohort
    masked = sc.mask_centre(_images(labels, where, rng), 0.15)
    row, _ = sc.border_test(
        extract_features(masked), labels, groups, folds, 3, linear_c=0.01, n_bootstrap=200, ci_level=0.95,
        min_lift=0.1, seed=0,
    )  # fmt: skip
    assert row["attribute"] == sc.BORDER_ATTRIBUTE
    assert row["is_shortcut"] is flagged, row


def test_encode_attribute():
    codes, kind, names = sc.encode_attribute(["3", "1", "", "2", "x"] + ["5"] * 20, n_bins=8)
    assert kind == "numeric" and names[-1] == "(missing)" and codes[2] == codes[4] == len(names) - 1
    codes, kind, _ = sc.encode_attribute(np.arange(100).astype(float), n_bins=4)
    assert kind == "numeric" and np.bincount(codes).tolist() == [25, 25, 25, 25]
    codes, kind, names = sc.encode_attribute(["b", "a", None, "b"], n_bins=4)
    assert kind == "categorical" and [names[c] for c in codes] == ["b", "a", "(missing)", "b"]


def test_candidates_include_table_dicom_and_acquisition_columns():
    rows = pd.DataFrame(
        {
            "image_id": ["a", "b"], "path": ["a", "b"], "label": ["x", "y"], "patient_id": ["p", "q"],
            "sha256": "", "width": [10, 20], "height": [10, 10], "channels": 1, "bit_depth": 8,
            "format": "png", "status": "ok", "reason": "", "site": ["s1", "s2"],
            "dicom_Manufacturer": ["GE", "Siemens"],
        }
    )  # fmt: skip
    feats = pd.DataFrame(
        {"image_id": ["a", "b"], "mean": 0.5, "std": 0.1, "p05": 0.1, "p95": 0.9, "n_channels": [1, 3],
         "is_gray_rgb": [False, False]}
    )  # fmt: skip
    table, source = sc.candidate_attributes(rows, feats, pd.Series({"a": 100.0, "b": 200.0}))
    assert source["site"] == "labels table" and source["dicom_Manufacturer"] == "DICOM"
    assert source["file_size"] == "acquisition" and table["aspect_ratio"].tolist() == [1.0, 2.0]
    assert table["channel_mode"].tolist() == ["gray", "rgb"]


def _stage_inputs(tmp_path, one_class: bool):
    from test_label_issues import _write_processed, separable_set

    imgs, index, _, _ = separable_set(n_groups=30)
    if one_class:
        index = index.assign(label_index=0)
    proc = _write_processed(tmp_path, imgs, index)
    n = len(index)
    manifest = pd.DataFrame(
        {
            "image_id": index["image_id"], "path": index["image_id"], "label": "x", "patient_id": index["group_id"],
            "sha256": "", "width": 32, "height": 32, "channels": 1, "bit_depth": 8, "format": "png",
            "status": "ok", "reason": "",
        }
    )  # fmt: skip
    manifest.to_parquet(tmp_path / "manifest.parquet")
    pd.DataFrame(
        {"image_id": index["image_id"], "mean": np.linspace(0, 1, n), "std": 0.1, "p05": 0.1, "p95": 0.9,
         "n_channels": 1, "is_gray_rgb": False}
    ).to_parquet(tmp_path / "features.parquet")  # fmt: skip
    (tmp_path / "params.yaml").write_text(
        "data: {root: nowhere}\nlabel_issues: {n_folds: 3}\n", encoding="utf-8"
    )
    return [
        "--params", str(tmp_path / "params.yaml"), "--processed", str(proc), "--manifest",
        str(tmp_path / "manifest.parquet"), "--features", str(tmp_path / "features.parquet"), "--metrics",
        str(tmp_path / "m.json"), "--csv", str(tmp_path / "s.csv"), "--sheets", str(tmp_path / "sheets"),
    ]  # fmt: skip


@pytest.mark.parametrize("one_class", [False, True])
def test_stage_notes_messy_tables_instead_of_failing(tmp_path, one_class):
    import json

    from stages.shortcuts import main

    assert main(_stage_inputs(tmp_path, one_class)) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    notes = " ".join(metrics["notes"])
    if one_class:
        assert "nothing can predict the label" in notes and metrics["attributes"] == []
    else:
        assert "no columns besides image_path, label and patient_id" in notes
        names = {r["attribute"] for r in metrics["attributes"]}
        assert {"width", "file_size", "intensity_mean", sc.BORDER_ATTRIBUTE} <= names
    assert (tmp_path / "s.csv").is_file()
