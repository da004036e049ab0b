"""Curation: the keep/exclude decision per image and the leakage groups for the split.

Reasons (first that applies wins, in this order):

1. ``low_quality:<issues>``: the image has one or more of ``curate.exclude_issues``; all of them
   are named, joined with ``+`` in the fixed order of :data:`pipeline.contract.QUALITY_ISSUES`
   (e.g. ``low_quality:dark+low_information``).
   Then ``outlier:<kind>`` (e.g. ``outlier:rotated``) when ``exclude_issues`` lists ``outlier``
   and the outliers stage flagged the image.
2. ``label_conflict``: the image is in a duplicate cluster whose copies carry different labels
   (``curate.exclude_label_conflicts``): which label is right is unknown, so no copy is kept.
3. ``exact_duplicate`` / ``near_duplicate``: the image is a non-representative member of a
   duplicate cluster (``curate.keep_one_per_duplicate_cluster``), by its ``kind``.

``group_id`` joins images of one patient and images linked as duplicates (exact or near, also
through copies that are excluded), as connected components: the split keeps a group together,
so no two copies and no two patient ids that are really one person land in different splits
(:func:`pipeline.graph.key_components`).
The id is the smallest ``patient_id`` in the group, or the smallest ``image_id`` when no member
has a patient id.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline.contract import QUALITY_ISSUES, STATUS_OK, flag_col, require_columns
from pipeline.errors import InputError
from pipeline.graph import key_components
from pipeline.params import CurateParams

log = logging.getLogger(__name__)

CURATED_COLUMNS = ["image_id", "included", "reason", "group_id"]


def leakage_groups(ok: pd.DataFrame, duplicates: pd.DataFrame) -> np.ndarray:
    """Group id per row of ``ok``: components of same-patient and duplicate-cluster links.

    Args:
        ok: Rows with ``image_id`` and ``patient_id`` (``""`` or missing = unknown patient).
        duplicates: duplicates.parquet (``image_id, cluster_id``).

    Returns:
        Object array of group ids aligned with ``ok``.
    """
    ids = ok["image_id"].astype(str).to_numpy()
    patients = ok["patient_id"].fillna("").astype(str).to_numpy()
    cluster_of = duplicates.set_index("image_id")["cluster_id"].astype(str)
    cluster = ok["image_id"].map(cluster_of).astype(object).fillna("").astype(str).to_numpy()
    comp = key_components(patients, cluster)
    frame = pd.DataFrame({"comp": comp, "patient": np.where(patients == "", None, patients), "image_id": ids})
    by_comp = frame.groupby("comp")
    name = by_comp["patient"].min().fillna(by_comp["image_id"].min())
    return name.reindex(comp).to_numpy(dtype=object)


def curate(
    manifest: pd.DataFrame,
    quality: pd.DataFrame,
    duplicates: pd.DataFrame,
    params: CurateParams,
    outliers: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Decide, for every ``status == ok`` image, whether it goes on, and why not.

    Args:
        manifest: manifest.parquet.
        quality: quality.parquet (``image_id``, ``is_<issue>_issue``).
        duplicates: duplicates.parquet (``image_id, cluster_id, kind, is_representative,
            is_label_conflict``).
        params: The ``curate`` params section.
        outliers: outliers.parquet (``image_id, is_outlier_issue, outlier_kind``); needed only
            when ``exclude_issues`` lists ``outlier``.

    Returns:
        ``image_id, included, reason, group_id``: one row per ok image, sorted by ``image_id``.

    Raises:
        InputError: If quality lacks a flag column named in ``exclude_issues``.
        ValueError: If the decision does not cover every ok image exactly once (a bug).
    """
    ok = manifest.loc[manifest["status"] == STATUS_OK, ["image_id", "patient_id"]]
    ok = ok.sort_values("image_id", ignore_index=True)
    reason = pd.Series("", index=ok.index, dtype=object)

    issues = [x for x in QUALITY_ISSUES if x in params.exclude_issues]
    require_columns(
        quality, [flag_col(x) for x in issues], "quality.parquet", hint="named by curate.exclude_issues"
    )
    q = quality.set_index("image_id")
    if issues:
        flags = q.reindex(ok["image_id"])[[flag_col(x) for x in issues]].fillna(False).astype(bool).to_numpy()
        names = np.array(issues, dtype=object)
        low = ["+".join(names[row]) for row in flags]
        reason = reason.mask(flags.any(axis=1), ["low_quality:" + x for x in low])
    if "outlier" in params.exclude_issues:
        if outliers is None or flag_col("outlier") not in outliers.columns:
            raise InputError(
                "curate.exclude_issues lists 'outlier' but no outliers table with is_outlier_issue was given"
            )
        o = outliers.set_index("image_id").reindex(ok["image_id"])
        is_out = o[flag_col("outlier")].fillna(False).astype(bool).to_numpy()
        kinds = "outlier:" + o["outlier_kind"].fillna("").astype(str).replace("", "atypical")
        reason = reason.mask((reason == "") & is_out, pd.Series(kinds.to_numpy(), index=ok.index))

    d = duplicates.set_index("image_id").reindex(ok["image_id"])
    in_cluster = d["cluster_id"].notna().to_numpy()
    if params.exclude_label_conflicts:
        conflict = in_cluster & d["is_label_conflict"].fillna(False).astype(bool).to_numpy()
        reason = reason.mask((reason == "") & conflict, "label_conflict")
    if params.keep_one_per_duplicate_cluster:
        copy = in_cluster & ~d["is_representative"].fillna(True).astype(bool).to_numpy()
        kind = d["kind"].fillna("near").astype(str).to_numpy() + "_duplicate"
        reason = reason.mask((reason == "") & copy, pd.Series(kind, index=ok.index))

    curated = pd.DataFrame(
        {
            "image_id": ok["image_id"].to_numpy(),
            "included": (reason == "").to_numpy(),
            "reason": reason.astype(str).to_numpy(),
            "group_id": leakage_groups(ok, duplicates).astype(str),
        },
        columns=CURATED_COLUMNS,
    )
    check_nothing_lost(manifest, curated)
    return curated


def check_nothing_lost(manifest: pd.DataFrame, curated: pd.DataFrame) -> None:
    """Every ok image appears exactly once; excluded rows have a reason, included rows none.

    Raises:
        ValueError: Naming the counts and a few offending image ids.
    """
    ok_ids = set(manifest.loc[manifest["status"] == STATUS_OK, "image_id"])
    ids = curated["image_id"]
    dup = ids[ids.duplicated()].tolist()
    lost = sorted(ok_ids - set(ids))
    extra = sorted(set(ids) - ok_ids)
    n_in, n_out = int(curated["included"].sum()), int((~curated["included"]).sum())
    if dup or lost or extra or n_in + n_out != len(ok_ids):
        raise ValueError(
            f"curation lost track of images: {len(ok_ids)} ok in the manifest, {n_in} included + {n_out} "
            f"excluded; duplicated {dup[:5]}, missing {lost[:5]}, unknown {extra[:5]}"
        )
    bad = curated[curated["included"] == (curated["reason"] != "")]
    if len(bad):
        raise ValueError(
            f"curated rows with inconsistent included/reason: {bad['image_id'].head(5).tolist()}"
        )


def summarize(curated: pd.DataFrame) -> dict:
    """Counts for metrics/curate.json."""
    excluded = curated[~curated["included"]]
    groups = curated.groupby("group_id").size()
    return {
        "n_ok": len(curated),
        "n_included": int(curated["included"].sum()),
        "n_excluded": len(excluded),
        "excluded_by_reason": {
            str(k): int(v) for k, v in excluded["reason"].value_counts().sort_index().items()
        },
        "n_groups": int(groups.size),
        "largest_group": int(groups.max()) if groups.size else 0,
    }
