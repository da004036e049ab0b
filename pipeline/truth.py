"""Scoring the pipeline's findings against the planted truth of the demo data (``truth.json``).

For each planted kind: ``{"precision", "recall", "n_planted", "n_flagged", "n_found"}``.
``recall = n_found / n_planted`` (planted items the pipeline caught), ``precision`` = share of
the pipeline's flags for that kind that are right. ``None`` where a denominator is 0.

Definitions (image ids are the paths in ``truth.json``):

* **Duplicates.** Truth gives each planted copy a ``source``; following sources gives each image
  its *root* (the original picture). A planted copy is **found** when it sits in the same
  duplicate cluster as its source (for ``cross_patient_duplicate``, also in a cluster flagged
  ``is_cross_patient``). The pipeline's **flags** are the non-representative cluster members
  (the images curation drops as copies): of ``kind`` ``exact`` for ``exact_duplicate``, of kind
  ``near`` for ``near_duplicate``, and those whose patient differs from their representative's
  for ``cross_patient_duplicate``. A flag is **correct** when truth says the image and its
  cluster's representative are the same picture (same root), whichever copy was kept.
* **Quality.** ``blurry``, ``dark``, ``overexposed`` against ``is_<kind>_issue``; ``blank``
  against ``is_low_information_issue``; ``odd_size`` and ``odd_aspect_ratio`` both against
  ``is_odd_size_issue | is_odd_aspect_ratio_issue`` (one geometry check: a flag is correct when
  the image was planted as either kind). Found = planted and flagged.
* **Ingest.** ``corrupt`` against rejection reasons ``truncated`` / ``unreadable``,
  ``not_an_image`` against ``not_an_image``.
* **Outliers** (kind ``outlier`` with a ``subtype``). Recall of a subtype: its planted images
  with ``is_outlier_issue``, whatever kind the pipeline named. Precision of a subtype: the share
  of the flags the pipeline gives that subtype's kind (``rotated``, ``mirrored``, ``inverted``;
  ``atypical`` for ``lateral``, ``other_modality``, ``photo``, ``document``) that are planted
  outliers of a subtype with that kind. ``outlier`` overall: any flag on any planted outlier.
* **Images planted as one kind and flagged by another check** are left out of that check's
  precision (neither right nor wrong): a document page that does not belong is also bright
  (``overexposed``), a 2:1 image is also unusual to the outlier check, an image that does not belong
  has no right label to find (``flipped_label``). ``n_flagged`` counts every
  flag; ``n_flagged_other_planted`` says how many were left out.
* **Shortcuts** (top-level ``shortcuts`` list of attribute names): precision and recall of the
  attributes the shortcut audit flags (``is_shortcut`` in metrics/shortcuts.json).
* **Labels.** ``flipped_label`` against ``is_label_issue`` of label_issues.parquet (only the
  audited images can be flagged; ``n_audited`` says how many planted ones were audited and
  ``recall_audited`` is the recall over those).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from pipeline.contract import STATUS_REJECTED, flag_col
from pipeline.errors import InputError

DUPLICATE_KINDS = ("exact_duplicate", "near_duplicate", "cross_patient_duplicate")
QUALITY_KINDS = {
    "blurry": ("blurry",),
    "dark": ("dark",),
    "overexposed": ("overexposed",),
    "blank": ("low_information",),
    "odd_size": ("odd_size", "odd_aspect_ratio"),
    "odd_aspect_ratio": ("odd_size", "odd_aspect_ratio"),
}
QUALITY_TRUTH = {
    "odd_size": ("odd_size", "odd_aspect_ratio"),
    "odd_aspect_ratio": ("odd_size", "odd_aspect_ratio"),
}
OUTLIER_KIND_OF_SUBTYPE = {"inverted": "inverted", "rotated": "rotated", "mirrored": "mirrored"}
"""The pipeline's ``outlier_kind`` for each planted subtype; other subtypes are ``atypical``."""
INGEST_REASONS = {"corrupt": ("truncated", "unreadable"), "not_an_image": ("not_an_image",)}


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _score(n_found: int, n_planted: int, n_correct: int, n_flagged: int, **extra: int) -> dict:
    return {
        "precision": _ratio(n_correct, n_flagged),
        "recall": _ratio(n_found, n_planted),
        "n_planted": n_planted,
        "n_flagged": n_flagged,
        "n_found": n_found,
        **extra,
    }


def _set_score(
    planted: Iterable[str],
    flagged: Iterable[str],
    correct_pool: Iterable[str] | None = None,
    ignore: Iterable[str] = (),
) -> dict:
    """Precision/recall; flags on ``ignore`` images (planted as another kind) count neither way."""
    planted, flagged = set(planted), set(flagged)
    pool = planted if correct_pool is None else set(correct_pool)
    left_out = (flagged & set(ignore)) - pool
    kept = flagged - left_out
    score = _score(len(planted & flagged), len(planted), len(kept & pool), len(kept))
    if left_out:
        score["n_flagged"] = len(flagged)
        score["n_flagged_other_planted"] = len(left_out)
    return score


def score_against_truth(
    truth: dict,
    manifest: pd.DataFrame,
    quality: pd.DataFrame,
    duplicates: pd.DataFrame,
    curated: pd.DataFrame,
    label_issues: pd.DataFrame | None = None,
    outliers: pd.DataFrame | None = None,
    shortcuts: dict | None = None,
) -> dict:
    """Precision and recall of every planted kind (see the module docstring for definitions).

    Args:
        truth: ``{"items": [{"path", "kind", "source"?, ...}]}`` from truth.json.
        manifest: manifest.parquet.
        quality: quality.parquet.
        duplicates: duplicates.parquet.
        curated: curated.parquet (used for ``n_excluded``: planted items curation excluded).
        label_issues: label_issues.parquet, or ``None`` to skip ``flipped_label``.
        outliers: outliers.parquet, or ``None`` to skip ``outlier``.
        shortcuts: metrics/shortcuts.json, or ``None`` to skip ``shortcut``.

    Returns:
        ``{kind: {"precision", "recall", "n_planted", "n_flagged", "n_found", ...}}``.

    Raises:
        ValueError: If ``truth`` has no ``items`` list.
    """
    items = truth.get("items") if isinstance(truth, dict) else None
    if not isinstance(items, list):
        raise InputError(f"truth: expected a mapping with an 'items' list, got {type(truth).__name__}")
    by_kind: dict[str, list[dict]] = {}
    for it in items:
        by_kind.setdefault(str(it["kind"]), []).append(it)
    out: dict[str, dict] = {}

    out.update(_score_duplicates(items, by_kind, manifest, duplicates))

    outlier_paths = {it["path"] for it in by_kind.get("outlier", [])}
    defect_paths = {it["path"] for k in QUALITY_KINDS for it in by_kind.get(k, [])}

    # quality
    q = quality.set_index("image_id")
    for kind, issues in QUALITY_KINDS.items():
        cols = [flag_col(x) for x in issues if flag_col(x) in q.columns]
        flagged = q.index[q[cols].fillna(False).astype(bool).any(axis=1)] if cols else []
        truth_kinds = QUALITY_TRUTH.get(kind, (kind,))
        pool = [it["path"] for k in truth_kinds for it in by_kind.get(k, [])]
        out[kind] = _set_score([it["path"] for it in by_kind.get(kind, [])], flagged, pool, outlier_paths)

    if outliers is not None:
        out.update(_score_outliers(by_kind, outliers, defect_paths))

    # ingest
    rejected = manifest[manifest["status"] == STATUS_REJECTED]
    for kind, reasons in INGEST_REASONS.items():
        flagged = rejected.loc[rejected["reason"].isin(reasons), "image_id"]
        out[kind] = _set_score([it["path"] for it in by_kind.get(kind, [])], flagged)

    # labels
    if label_issues is not None:
        planted = {it["path"] for it in by_kind.get("flipped_label", [])}
        flagged = label_issues.loc[label_issues["is_label_issue"].astype(bool), "image_id"]
        score = _set_score(planted, flagged, ignore=outlier_paths)  # an outlier has no right label
        # Flips that land in the test split or on excluded images are never audited (the test
        # split is read by evaluate only), so recall is also given over the audited flips.
        n_audited = len(planted & set(label_issues["image_id"]))
        score["n_audited"] = n_audited
        score["recall_audited"] = round(score["n_found"] / n_audited, 4) if n_audited else None
        out["flipped_label"] = score

    excluded = set(curated.loc[~curated["included"].astype(bool), "image_id"])
    for kind, score in out.items():
        items_of_kind = by_kind.get(kind.split(":")[0], [])
        if ":" in kind:
            items_of_kind = [it for it in items_of_kind if it.get("subtype") == kind.split(":", 1)[1]]
        score["n_excluded"] = sum(it["path"] in excluded for it in items_of_kind)

    # shortcuts (attribute names, not images)
    if shortcuts is not None and isinstance(truth.get("shortcuts"), list):
        rows = shortcuts.get("attributes", []) if isinstance(shortcuts, dict) else []
        flagged_attrs = sorted(str(r["attribute"]) for r in rows if r.get("is_shortcut"))
        score = _set_score(truth["shortcuts"], flagged_attrs)
        score["flagged"] = flagged_attrs
        out["shortcut"] = score
    return out


def _score_duplicates(
    items: list[dict], by_kind: dict[str, list[dict]], manifest: pd.DataFrame, duplicates: pd.DataFrame
) -> dict[str, dict]:
    """Exact, near and cross-patient duplicates: a planted copy is found when it shares a cluster
    with its source; a flagged non-representative is right when it traces back to its
    representative's source."""
    out: dict[str, dict] = {}
    source = {it["path"]: it["source"] for it in items if it.get("source")}

    def root(path: str) -> str:
        seen = set()
        while path in source and path not in seen:
            seen.add(path)
            path = source[path]
        return path

    dup = duplicates.set_index("image_id")
    cluster = dup["cluster_id"].to_dict()
    reps = duplicates[duplicates["is_representative"].astype(bool)].set_index("cluster_id")["image_id"]
    patient = manifest.set_index("image_id")["patient_id"].fillna("").astype(str).to_dict()
    non_rep = duplicates[~duplicates["is_representative"].astype(bool)].copy()
    non_rep["rep"] = non_rep["cluster_id"].map(reps)
    non_rep["correct"] = [
        root(a) == root(b) for a, b in zip(non_rep["image_id"], non_rep["rep"], strict=True)
    ]
    cross_patient = (non_rep["image_id"].map(patient) != non_rep["rep"].map(patient)) & non_rep[
        "is_cross_patient"
    ].astype(bool)
    flagged_by_kind = {
        "exact_duplicate": non_rep[non_rep["kind"] == "exact"],
        "near_duplicate": non_rep[non_rep["kind"] == "near"],
        "cross_patient_duplicate": non_rep[cross_patient],
    }
    cross_cluster = set(duplicates.loc[duplicates["is_cross_patient"].astype(bool), "cluster_id"])
    for kind in DUPLICATE_KINDS:
        planted = by_kind.get(kind, [])
        found = 0
        for it in planted:
            c = cluster.get(it["path"])
            ok = c is not None and c == cluster.get(it.get("source"))
            if kind == "cross_patient_duplicate":
                ok = ok and c in cross_cluster
            found += ok
        flagged = flagged_by_kind[kind]
        out[kind] = _score(found, len(planted), int(flagged["correct"].sum()), len(flagged))
    return out


def _score_outliers(
    by_kind: dict[str, list[dict]], outliers: pd.DataFrame, defect_paths: set[str]
) -> dict[str, dict]:
    """Outliers overall and per planted subtype (a subtype's precision is over the kind it is
    expected to be flagged as; a flag on a planted quality defect counts neither way)."""
    out: dict[str, dict] = {}
    o = outliers[outliers["is_outlier_issue"].astype(bool)]
    flagged_kind = dict(zip(o["image_id"].astype(str), o["outlier_kind"].astype(str), strict=True))
    subtype_of = {it["path"]: str(it.get("subtype", "")) for it in by_kind.get("outlier", [])}
    out["outlier"] = _set_score(subtype_of, flagged_kind, ignore=defect_paths)
    for subtype in sorted(set(subtype_of.values())):
        kind = OUTLIER_KIND_OF_SUBTYPE.get(subtype, "atypical")
        planted = [p for p, st in subtype_of.items() if st == subtype]
        pool = [p for p, st in subtype_of.items() if OUTLIER_KIND_OF_SUBTYPE.get(st, "atypical") == kind]
        found = [p for p in planted if p in flagged_kind]
        as_kind = [p for p, k in flagged_kind.items() if k == kind]
        score = _set_score(planted, as_kind, pool, defect_paths)
        score["recall"], score["n_found"] = _ratio(len(found), len(planted)), len(found)
        score["outlier_kind"] = kind
        out[f"outlier:{subtype}"] = score
    return out
