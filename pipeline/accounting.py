"""Nothing is lost (README, ``accounting`` stage): one final state per input file, and counts that add up.

Every manifest row (one per file found by ingest) ends in exactly one final state: ``train``,
``val``, ``test`` or ``excluded`` with a machine-readable reason:

* rejected by ingest -> the ingest reason (``unreadable``, ``not_an_image``, ``too_large`` ...);
* not included by curation -> the curation reason (``low_quality:blurry``, ``exact_duplicate`` ...);
* dropped as a label issue (``label_issues.is_dropped``; train rows only) -> ``label_issue``;
* otherwise its split.

:func:`final_states` builds that table and refuses inconsistent inputs; :func:`summarize`
counts it; :func:`check_accounting` is the check a stage runs before it writes.
"""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.contract import FINAL_STATES, SPLITS, STATUS_OK, STATUS_REJECTED, included, require_columns

log = logging.getLogger(__name__)

LABEL_ISSUE_REASON = "label_issue"
FINAL_COLUMNS = ["image_id", "path", "final_state", "reason"]


def _ids(df: pd.DataFrame, name: str) -> pd.Series:
    require_columns(df, ["image_id"], name)
    ids = df["image_id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ValueError(f"{name}: image_id(s) appear more than once: {sorted(dup.unique())[:5]}")
    return ids


# Long on purpose: it reads as the list of rules a file's final state follows, in the order they
# apply (manifest, curation, split, label issues); each rule is a few lines and splitting them would
# scatter one decision over several functions.
def final_states(
    manifest: pd.DataFrame,
    curated: pd.DataFrame,
    splits: pd.DataFrame,
    label_issues: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The final state of every input file.

    Args:
        manifest: One row per input file: ``image_id, path, status, reason``.
        curated: ``image_id, included, reason`` for every ``status == "ok"`` manifest row.
        splits: ``image_id, split`` for every included row.
        label_issues: Optional ``image_id, split, is_dropped``; rows with ``is_dropped`` true
            become ``excluded`` / ``label_issue``. Only train rows may be dropped.

    Returns:
        DataFrame ``image_id, path, final_state, reason`` in manifest order, one row per
        manifest row; ``reason`` is ``""`` for train/val/test.

    Raises:
        ValueError: If the inputs disagree: duplicate ids, an ok row missing from ``curated``,
            an included row without a split (or a split for a row that is not included), a
            rejected row without a reason, an unknown status or split, or a dropped row that is
            not in train. The message names the image ids.
    """
    m_ids = _ids(manifest, "manifest")
    c_ids = _ids(curated, "curated")
    s_ids = _ids(splits, "splits")

    status = manifest["status"].astype(str)
    bad_status = ~status.isin([STATUS_OK, STATUS_REJECTED])
    if bad_status.any():
        raise ValueError(
            f"manifest: status must be '{STATUS_OK}' or '{STATUS_REJECTED}'; got {sorted(status[bad_status].unique())[:5]} "
            f"(e.g. image_id {m_ids[bad_status].iloc[0]!r})"
        )
    ok_ids = set(m_ids[status == STATUS_OK])
    missing_cur = sorted(ok_ids - set(c_ids))
    extra_cur = sorted(set(c_ids) - ok_ids)
    if missing_cur or extra_cur:
        raise ValueError(
            f"curated vs manifest: {len(missing_cur)} ok image(s) missing from curated (e.g. {missing_cur[:5]}), "
            f"{len(extra_cur)} curated image(s) not ok in the manifest (e.g. {extra_cur[:5]})"
        )
    inc_mask = included(curated).to_numpy()
    inc_ids = set(c_ids[inc_mask])
    missing_split = sorted(inc_ids - set(s_ids))
    extra_split = sorted(set(s_ids) - inc_ids)
    if missing_split or extra_split:
        raise ValueError(
            f"splits vs curated: {len(missing_split)} included image(s) without a split (e.g. {missing_split[:5]}), "
            f"{len(extra_split)} split image(s) not included (e.g. {extra_split[:5]})"
        )
    split_of = dict(zip(s_ids, splits["split"].astype(str), strict=True))
    bad = sorted({s for s in split_of.values() if s not in SPLITS})
    if bad:
        raise ValueError(f"splits: unknown split value(s) {bad}; expected one of {list(SPLITS)}")

    dropped: set[str] = set()
    if label_issues is not None and len(label_issues):
        li_ids = _ids(label_issues, "label_issues")
        is_dropped = label_issues["is_dropped"].fillna(False).astype(bool).to_numpy()
        dropped = set(li_ids[is_dropped])
        unknown = sorted(dropped - set(split_of))
        if unknown:
            raise ValueError(f"label_issues: dropped image(s) that have no split: {unknown[:5]}")
        not_train = sorted(i for i in dropped if split_of[i] != "train")
        if not_train:
            raise ValueError(
                f"label_issues: is_dropped is true for non-train image(s) {not_train[:5]} "
                f"(splits {[split_of[i] for i in not_train[:5]]}); drop applies to train rows only"
            )

    cur_reason = dict(zip(c_ids, curated["reason"].fillna("").astype(str), strict=True))
    man_reason = manifest["reason"].fillna("").astype(str).to_numpy()
    states, reasons = [], []
    for i, (image_id, st) in enumerate(zip(m_ids, status, strict=True)):
        if st == STATUS_REJECTED:
            if not man_reason[i]:
                raise ValueError(f"manifest: rejected image_id {image_id!r} has an empty reason")
            states.append("excluded")
            reasons.append(man_reason[i])
        elif image_id not in inc_ids:
            reason = cur_reason[image_id]
            if not reason:
                raise ValueError(f"curated: excluded image_id {image_id!r} has an empty reason")
            states.append("excluded")
            reasons.append(reason)
        elif image_id in dropped:
            states.append("excluded")
            reasons.append(LABEL_ISSUE_REASON)
        else:
            states.append(split_of[image_id])
            reasons.append("")
    return pd.DataFrame(
        {
            "image_id": m_ids.to_numpy(),
            "path": manifest["path"].astype(str).to_numpy(),
            "final_state": states,
            "reason": reasons,
        }
    )


def summarize(final: pd.DataFrame, manifest: pd.DataFrame) -> dict:
    """Counts of final states (``metrics/accounting.json``).

    Args:
        final: Output of :func:`final_states`.
        manifest: The manifest (tells ingest rejections from later exclusions).

    Returns:
        ``{"n_files", "n_rejected", "n_rejected_by_reason": {reason: n}, "n_excluded":
        {reason: n}, "n_train", "n_val", "n_test"}``. ``n_excluded`` counts exclusions after
        ingest (curation, label issues); ingest rejections are in ``n_rejected``, so
        ``n_files == n_rejected + sum(n_excluded) + n_train + n_val + n_test``.
    """
    rejected_ids = set(
        manifest.loc[manifest["status"].astype(str) == STATUS_REJECTED, "image_id"].astype(str)
    )
    is_rej = final["image_id"].astype(str).isin(rejected_ids)
    excl = final["final_state"] == "excluded"
    counts = final["final_state"].value_counts()
    return {
        "n_files": len(manifest),
        "n_rejected": int(is_rej.sum()),
        "n_rejected_by_reason": {
            str(k): int(v) for k, v in final.loc[is_rej, "reason"].value_counts().sort_index().items()
        },
        "n_excluded": {
            str(k): int(v) for k, v in final.loc[excl & ~is_rej, "reason"].value_counts().sort_index().items()
        },
        **{f"n_{s}": int(counts.get(s, 0)) for s in SPLITS},
    }


def check_accounting(final: pd.DataFrame, manifest: pd.DataFrame, summary: dict | None = None) -> dict:
    """Raise unless every input file has exactly one final state and the counts add up.

    Checks, independently of how ``final`` was built: one row per manifest ``image_id`` (none
    missing, none extra, none twice), states in ``FINAL_STATES``, a non-empty reason for every
    excluded row and an empty one otherwise, and ``n_rejected + sum(n_excluded) + n_train + n_val
    + n_test == n_files``.

    Args:
        final: ``image_id, final_state, reason``.
        manifest: The manifest.
        summary: The summary to check; computed with :func:`summarize` when ``None``.

    Returns:
        The (checked) summary.

    Raises:
        ValueError: Naming the missing/extra/repeated ids or the numbers that disagree.
    """
    ids = final["image_id"].astype(str)
    repeated = sorted(ids[ids.duplicated()].unique())
    if repeated:
        raise ValueError(f"accounting: image_id(s) with more than one final state: {repeated[:5]}")
    m_ids = set(manifest["image_id"].astype(str))
    missing, extra = sorted(m_ids - set(ids)), sorted(set(ids) - m_ids)
    if missing or extra:
        raise ValueError(
            f"accounting: {len(missing)} input file(s) without a final state (e.g. {missing[:5]}), "
            f"{len(extra)} final state(s) for files not in the manifest (e.g. {extra[:5]})"
        )
    bad_state = ~final["final_state"].isin(FINAL_STATES)
    if bad_state.any():
        raise ValueError(
            f"accounting: unknown final_state {sorted(final.loc[bad_state, 'final_state'].astype(str).unique())[:5]}; "
            f"expected one of {list(FINAL_STATES)}"
        )
    reason = final["reason"].fillna("").astype(str)
    excl = final["final_state"] == "excluded"
    if (excl & (reason == "")).any():
        raise ValueError(
            f"accounting: excluded image(s) without a reason: {ids[excl & (reason == '')].tolist()[:5]}"
        )
    if (~excl & (reason != "")).any():
        raise ValueError(
            f"accounting: kept image(s) with an exclusion reason: {ids[~excl & (reason != '')].tolist()[:5]}"
        )
    summary = summarize(final, manifest) if summary is None else summary
    parts = {
        "n_rejected": summary["n_rejected"],
        "n_excluded": sum(summary["n_excluded"].values()),
        **{f"n_{s}": summary[f"n_{s}"] for s in SPLITS},
    }
    if sum(parts.values()) != summary["n_files"]:
        raise ValueError(
            f"accounting: counts do not add up to n_files={summary['n_files']}: {parts} (sum {sum(parts.values())})"
        )
    if summary["n_files"] != len(manifest):
        raise ValueError(
            f"accounting: n_files={summary['n_files']} but the manifest has {len(manifest)} rows"
        )
    log.info("accounting adds up: %s", parts)
    return summary


CLASS_LOSS_RATIO = 2.0
"""A class whose excluded share is at least this many times the other classes' share ..."""
CLASS_LOSS_MIN_GAP = 0.05
"""... and at least this much larger (absolute), with 3 or more images excluded, is warned about."""


def class_losses(final: pd.DataFrame, manifest: pd.DataFrame) -> dict:
    """Exclusions per class among the readable images, and a warning per class that loses far more.

    Curation and label-issue drops can fall on one class (a bright class flagged overexposed, a
    class the auditor distrusts): the model is then trained and tested on a shifted class mix
    without anyone being told. Rejections at ingest (unreadable files) are not counted: they carry
    no usable label.

    Args:
        final: Output of :func:`final_states`.
        manifest: The manifest (``image_id``, ``label``, ``status``).

    Returns:
        ``{"excluded_by_class": {label: {"n_images", "n_excluded", "share_excluded"}},
        "class_loss_warnings": [str]}``: a class is named when its share excluded is at least
        :data:`CLASS_LOSS_RATIO` times that of the other classes together and at least
        :data:`CLASS_LOSS_MIN_GAP` above it, with 3 or more images excluded.
    """
    if "label" not in manifest.columns:  # nothing to break down by
        return {"excluded_by_class": {}, "class_loss_warnings": []}
    ok = manifest.loc[manifest["status"].astype(str) == STATUS_OK, ["image_id", "label"]].astype(str)
    state = final.set_index(final["image_id"].astype(str))["final_state"]
    ok = ok.assign(excluded=ok["image_id"].map(state).eq("excluded").to_numpy())
    per = ok.groupby("label")["excluded"].agg(["size", "sum"])
    out: dict = {"excluded_by_class": {}, "class_loss_warnings": []}
    for label, row in per.sort_index().iterrows():
        n, k = int(row["size"]), int(row["sum"])
        out["excluded_by_class"][str(label)] = {
            "n_images": n, "n_excluded": k, "share_excluded": round(k / n, 4) if n else 0.0,
        }  # fmt: skip
        n_rest, k_rest = int(per["size"].sum()) - n, int(per["sum"].sum()) - k
        if not n or not n_rest or k < 3:
            continue
        share, rest = k / n, k_rest / n_rest
        if share >= CLASS_LOSS_RATIO * rest and share - rest >= CLASS_LOSS_MIN_GAP:
            out["class_loss_warnings"].append(
                f"class {label!r} loses {k} of {n} readable images ({share:.0%}) to exclusion, the other "
                f"classes {k_rest} of {n_rest} ({rest:.0%}): the curated class mix differs from the data's"
            )
    for w in out["class_loss_warnings"]:
        log.warning("%s", w)
    return out
