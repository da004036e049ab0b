"""What DVC shows: one small, flat headline file; every stage's JSON tracked by git (issue 17 items 2, 5)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.headline import headline
from stages import headline as headline_stage
from tests.helpers import default_params

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())

METRICS = {
    "accounting": {
        "n_files": 20,
        "n_rejected": 2,
        "n_excluded": {"exact_duplicate": 1, "low_quality:dark": 2},
        "n_train": 10,
        "n_val": 2,
        "n_test": 3,
        "n_rejected_by_reason": {"truncated": 2},
    },
    "dedup": {"n_images_in_clusters": 4, "n_clusters": 2},
    "outliers": {"n_flagged": 1, "orientation_accuracy": {"rot90": 0.99}},
    "label_issues": {"n_issues": 3, "flagged_share_per_class": {"a": 0.1}},
    "shortcuts": {"flagged": ["site", "width"], "breakdown": {"site": {"x": {"a": 3}}}},
    "train": {"val_balanced_accuracy": 0.8, "device": "cpu"},
    "test": {
        "balanced_accuracy": {"value": 0.912345, "ci_low": 0.85, "ci_high": 0.95},
        "auroc": {"value": 0.97, "ci_low": 0.9, "ci_high": 0.99},
        "per_class": {"a": {"sensitivity": 0.9}},
        "patient_level": {"auroc": {"value": 0.9}},
    },
    "subgroups": {"worst_group": {"balanced_accuracy": {"value": 0.5, "gap": -0.4}}},
    "demo_truth": {
        "dark": {"precision": 1.0, "recall": 1.0},
        "outlier": {"precision": 0.5, "recall": 0.5},
        "outlier:rotated": {"precision": 0.0, "recall": 0.0},
        "flipped_label": {"precision": 0.75, "recall": 0.75},
    },
}


def test_the_headline_is_flat_numbers_only_with_the_breakdowns_left_out():
    numbers = headline(METRICS)
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers.values())
    assert numbers["n_excluded"] == 3 and numbers["n_train"] == 10 and numbers["n_shortcuts"] == 2
    assert numbers["test_balanced_accuracy"] == 0.9123
    assert numbers["test_balanced_accuracy_ci_low"] == 0.85
    assert numbers["worst_subgroup_balanced_accuracy"] == 0.5
    # subtypes repeat their kind's total: the mean counts each kind once (1.0, 0.5, 0.75)
    assert numbers["truth_mean_recall"] == 0.75
    assert not any("per_class" in k or "rot90" in k or "site" in k for k in numbers)
    assert len(numbers) <= 30


def test_a_stage_that_wrote_nothing_leaves_its_numbers_out():
    numbers = headline(
        {"accounting": METRICS["accounting"], "test": None, "demo_truth": {"available": False}}
    )
    assert "test_balanced_accuracy" not in numbers and not any(k.startswith("truth_") for k in numbers)
    assert numbers["n_files"] == 20


def test_the_headline_stage_reads_the_metrics_folder(tmp_path):
    import json

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for name in ("accounting", "test"):
        (metrics / f"{name}.json").write_text(json.dumps(METRICS[name]))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params()))
    out = tmp_path / "headline.json"
    args = ["--params", str(tmp_path / "params.yaml"), "--metrics", str(metrics), "--out", str(out)]
    assert headline_stage.main(args) == 0
    written = json.loads(out.read_text())
    assert written["test_auroc"] == 0.97 and "n_outliers" not in written


def test_dvc_shows_only_the_headline_and_stage_json_is_tracked_by_git():
    declared = [
        next(iter(m)) if isinstance(m, dict) else m
        for stage in DVC["stages"].values()
        for m in stage.get("metrics", [])
    ]
    assert declared == ["metrics/headline.json"]
    for name, stage in DVC["stages"].items():
        for out in stage.get("outs", []):
            path, opts = (out, {}) if isinstance(out, str) else next(iter(out.items()))
            if path.startswith(("metrics/", "plots/", "dvclive/")):
                assert opts.get("cache") is False, f"{name}: {path} must be tracked by git (cache: false)"
    for name, stage in DVC["stages"].items():
        for plot in stage.get("plots", []):
            path, opts = (plot, {}) if isinstance(plot, str) else next(iter(plot.items()))
            assert opts.get("cache") is False, f"{name}: plot {path} must be tracked by git (cache: false)"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_gitignore_keeps_small_results_and_ignores_cached_outputs(tmp_path):
    """Experiments commit what git does not ignore: the small results must not be ignored, the data
    and large outputs must be."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")

    def ignored(path: str) -> bool:
        return (
            subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "-q", path], check=False).returncode
            == 0
        )

    for kept in (
        "metrics/headline.json",
        "metrics/test.json",
        "plots/roc.csv",
        "dvclive/plots/metrics/x.tsv",
    ):
        assert not ignored(kept), kept
    for dropped in (
        "data/raw/a.png",
        "data/demo/a.png",
        "models/model.pt",
        "reports/audit.html",
        "dvc_plots/index.html",
    ):
        assert ignored(dropped), dropped
