"""The headline numbers: the one small, flat metrics file that ``dvc metrics show`` and ``dvc exp show`` show.

DVC puts every key of every declared metrics file in a column of its own. The stages' own JSON files
(``metrics/<stage>.json``, about 300 keys: per-class, per-split, per-kind breakdowns, intervals) made an
84 KB table that no one could read and an ``exp show`` nobody could compare. They stay in ``metrics/``
(tracked by git, so every experiment keeps them, and read by the report), declared as plain outputs;
this module picks from them the ~20 numbers worth a column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# the test metrics shown (each as test_<name>; its interval for balanced accuracy)
TEST_METRICS = ("balanced_accuracy", "auroc", "macro_f1", "accuracy", "ece")


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return round(value, 4) if isinstance(value, float) else value


def _data_counts(accounting: Mapping) -> dict:
    excluded = accounting.get("n_excluded", {})
    return {
        "n_files": accounting.get("n_files"),
        "n_rejected": accounting.get("n_rejected"),
        "n_excluded": sum(excluded.values()) if isinstance(excluded, Mapping) else excluded,
        "n_train": accounting.get("n_train"),
        "n_val": accounting.get("n_val"),
        "n_test": accounting.get("n_test"),
    }


def _findings(m: Mapping[str, Mapping | None]) -> dict:
    shortcuts = (m.get("shortcuts") or {}).get("flagged")
    return {
        "n_duplicate_images": (m.get("dedup") or {}).get("n_images_in_clusters"),
        "n_outliers": (m.get("outliers") or {}).get("n_flagged"),
        "n_label_issues": (m.get("label_issues") or {}).get("n_issues"),
        "n_shortcuts": len(shortcuts) if isinstance(shortcuts, list) else None,
    }


def _model(m: Mapping[str, Mapping | None]) -> dict:
    train, test = m.get("train") or {}, m.get("test") or {}
    out = {"val_balanced_accuracy": train.get("val_balanced_accuracy")}
    for name in TEST_METRICS:
        out[f"test_{name}"] = (test.get(name) or {}).get("value")
    bacc = test.get("balanced_accuracy") or {}
    out["test_balanced_accuracy_ci_low"] = bacc.get("ci_low")
    out["test_balanced_accuracy_ci_high"] = bacc.get("ci_high")
    worst = ((m.get("subgroups") or {}).get("worst_group") or {}).get("balanced_accuracy") or {}
    out["worst_subgroup_balanced_accuracy"] = worst.get("value")
    return out


def _truth(truth: Mapping) -> dict:
    """Demo data only: mean precision and recall over the planted kinds, and the flipped labels'."""
    kinds = {  # "outlier:<subtype>" entries repeat the "outlier" total by subtype: not counted twice
        k: v
        for k, v in truth.items()
        if ":" not in k and isinstance(v, Mapping) and "precision" in v and "recall" in v
    }
    if not kinds:
        return {}
    precisions = [_number(v["precision"]) for v in kinds.values()]
    recalls = [_number(v["recall"]) for v in kinds.values()]
    precisions = [p for p in precisions if p is not None]
    recalls = [r for r in recalls if r is not None]
    flipped = kinds.get("flipped_label", {})
    return {
        "truth_mean_precision": sum(precisions) / len(precisions) if precisions else None,
        "truth_mean_recall": sum(recalls) / len(recalls) if recalls else None,
        "truth_flipped_label_precision": flipped.get("precision"),
        "truth_flipped_label_recall": flipped.get("recall"),
    }


def headline(metrics: Mapping[str, Mapping | None]) -> dict[str, float | int]:
    """The headline numbers from the stages' metrics.

    Args:
        metrics: Stage metrics by file stem (``accounting``, ``dedup``, ``outliers``, ``label_issues``,
            ``shortcuts``, ``train``, ``test``, ``subgroups``, ``demo_truth``); a missing or None
            entry (a stage that wrote nothing) leaves its numbers out.

    Returns:
        One flat ``{name: number}`` mapping, floats rounded to 4 decimals, in a fixed order; a number
        its stage did not produce is left out (never written as null).
    """
    flat = {
        **_data_counts(metrics.get("accounting") or {}),
        **_findings(metrics),
        **_model(metrics),
        **_truth(metrics.get("demo_truth") or {}),
    }
    return {k: n for k, v in flat.items() if (n := _number(v)) is not None}
