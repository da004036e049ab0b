"""The audit page's words: the opening summary, and what each number on the page means.

:func:`summarize` turns the stages' metrics into plain sentences with counts ("10 files could not be
read: 6 truncated, 4 not an image."), each pointing at the section that holds the details, and the
warnings other stages raise (a weak label audit, shortcuts, the worst subgroup). The glossaries below
are the one place where a key of a metrics file gets its explanation, so a table on the page shows
the number and its meaning side by side.

Like :mod:`pipeline.report`, this module reads no file: it gets the loaded inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.report import AuditInputs


@dataclass(frozen=True)
class Finding:
    """One sentence of the summary.

    Attributes:
        section: id of the page section with the details.
        text: The sentence, plain text (the page escapes it).
        is_warning: Something the user should act on or distrust, shown highlighted.
    """

    section: str
    text: str
    is_warning: bool = False


# ---- glossaries: metrics key -> meaning -------------------------------------------------------

REASONS = {
    "truncated": "the file ends early (an interrupted copy or download)",
    "unreadable": "the file could not be opened or decoded",
    "not_an_image": "not an image at all (an HTML page, text, JSON ...)",
    "unsupported_format": "an image format the pipeline does not decode",
    "unsupported_mode": "a pixel mode the pipeline does not handle",
    "too_large": "more pixels than ingest.max_pixels allows",
    "multi_frame": "several frames, refused by ingest.multi_frame",
    "timeout": "decoding took longer than ingest.max_seconds_per_file",
    "missing_label": "no label in the labels table",
    "unknown_label": "a label outside ingest.classes",
    "missing_patient": "no patient id (ingest.missing_patient_id: reject)",
    "features_failed": "the image decoded but its measurements failed",
    "exact_duplicate": "a byte- or pixel-identical copy of an image that was kept",
    "near_duplicate": "a near copy (resized, recompressed, shifted) of an image that was kept",
    "label_conflict": "in a duplicate cluster whose copies carry different labels",
    "label_issue": "a train image the label audit flagged (label_issues.action: drop)",
}

QUALITY = {
    "dark": "much darker than the rest of this dataset",
    "overexposed": "much brighter than the rest (washed out, saturated)",
    "blurry": "little fine detail compared with the rest",
    "low_information": "almost uniform: blank or nearly blank",
    "low_contrast": "a narrow intensity range compared with the rest",
    "odd_size": "width or height far from the dataset's usual size",
    "odd_aspect_ratio": "shape far from the dataset's usual width/height ratio",
    "channel_mismatch": "colour where the dataset is gray, or the other way round",
}

DEDUP = {
    "n_images": "images compared",
    "n_exact": "byte- or pixel-identical copies, not counting the one kept per cluster",
    "n_near": "confirmed near copies, not counting the one kept per cluster",
    "n_clusters": "groups of images that are copies of each other",
    "n_images_in_clusters": "images in those groups, the kept ones included",
    "n_cross_patient_clusters": "groups whose copies are filed under different patient ids",
    "n_label_conflict_clusters": "groups whose copies carry different labels",
    "n_candidates": "pairs with similar perceptual hashes, checked pixel by pixel",
    "n_candidates_confirmed": "candidate pairs the pixel check confirmed as copies",
    "n_candidates_rejected": "candidate pairs the pixel check found to be different images",
    "n_candidates_rejected_for_colour": "rejected pairs whose colours differ (colour images only)",
    "confirm_residual_ratio": "a pair is a copy when its pixel difference is at most this share of how much "
    "each image differs from itself shifted by one pixel (dedup.confirm_residual_ratio)",
    "max_colour_difference": "largest colour difference (CIELAB, over a 4x4 grid; about 2.3 is just "
    "noticeable) between copies of colour images (dedup.max_colour_difference)",
    "hash_method": "perceptual hash used to find candidates",
    "max_distance": "largest Hamming distance (differing hash bits) between candidates",
}

SPLIT = {
    "images": "images in the split",
    "fraction": "share of all included images",
    "target_fraction": "share asked for in params (split.fractions)",
    "patients": "distinct patient ids",
    "groups": "leakage groups (patients joined by duplicates), each wholly in one split",
    "max_abs_deviation": "largest gap between a class's share here and in the whole dataset (0 = identical)",
}

NORMALIZER = {
    "mode": "how pixels are scaled before the network sees them",
    "fitted_on": "the split whose pixels gave these statistics (train only, so nothing leaks from test)",
    "n_images": "images the statistics were computed on",
    "n_pixels": "pixels counted (per channel)",
    "channels": "colour channels (1 gray, 3 RGB)",
    "max_value": "largest raw pixel value of the stored dtype",
    "percentile_range": "the percentiles that give low and high",
    "low": "raw value at the lower percentile, per channel (the window's floor in percentile mode)",
    "high": "raw value at the upper percentile, per channel (the window's ceiling in percentile mode)",
    "mean": "mean raw pixel value per channel, subtracted",
    "std": "standard deviation per channel, divided by",
    "image_size": "side of the square arrays the network sees, in pixels",
    "image_size_reason": "why that size (normalize.image_size)",
    "aspect": "how non-square images were made square",
    "dtype": "stored array type",
    "bytes": "size of the stored arrays",
    "n_classes": "number of classes",
}

NORMALIZER_MODES = {
    "scale01": "raw value / max_value, in [0, 1]",
    "center": "(raw value - mean) / max_value: the train mean removed, the unit scale kept",
    "standardize": "(raw value - mean) / std, with the train mean and std per channel",
    "percentile": "(clip(raw value, low, high) - low) / (high - low), in [0, 1]: a fixed intensity window",
    "per_image_zscore": "(raw value - image mean) / image std, per image; nothing from train is used",
}

OUTLIERS = {
    "n_images": "images considered",
    "n_scored": "images with a score (the others could not be measured)",
    "n_flagged": "images flagged as not belonging",
    "flagged_by_kind": "flagged images per kind (atypical, rotated, mirrored, inverted)",
    "mirror_judged": "whether the mirror CNN told films from their mirror images well enough to judge them",
    "not_judged_would_flag": "per transform that is not judged: typical images a model would call stored that "
    "way (not flagged; a model near chance makes a few such calls)",
    "not_judged_warning": "transforms whose such calls are a third or more of the model's held-out errors "
    "(as a share of the set stored that way would be): their images are listed below",
    "seconds": "time the check took",
}

LABEL_ISSUES = {
    "auditor": "the model that predicted each image's label without having seen it (out of fold)",
    "n_folds": "folds, grouped by patient so no patient is in its own auditor's training data",
    "n_audited": "images audited (train and val; test is never audited)",
    "n_issues": "images whose given label is likely wrong",
    "n_out_of_fold_issues": "found by cleanlab on the out-of-fold probabilities",
    "n_duplicate_label_conflicts": "copies of one image filed under different labels",
    "n_dropped": "flagged train images left out of training (label_issues.action: drop)",
    "issues_per_class": "flagged images per given label",
    "oof_accuracy": "share of audited images whose out-of-fold prediction equals the given label",
    "oof_balanced_accuracy": "the same, averaged over classes",
    "chance": "balanced accuracy of guessing (1 / number of classes)",
    "auditor_lift": "(balanced accuracy - chance) / (1 - chance): 0 = chance, 1 = perfect",
    "flagged_share_per_class": "share of each class's audited images that were flagged",
    "classes_flagged_wholesale": "classes flagged beyond label_issues.max_class_flag_share",
    "is_auditor_weak": "true when the audit should not be trusted (see the warnings)",
    "seconds": "time the audit took",
}

TRAIN = {
    "best_epoch": "epoch whose checkpoint was kept (best on validation)",
    "epochs_run": "epochs trained before early stopping or the limit",
    "n_train": "training images",
    "n_dropped": "train images left out as label issues",
    "n_val": "validation images",
    "device": "where the model trained",
    "world_size": "processes training together",
    "seconds": "training time",
}

METRICS = {
    "accuracy": "share of test images classified correctly",
    "balanced_accuracy": "accuracy averaged over classes (chance = 1 / number of classes)",
    "macro_f1": "F1 (harmonic mean of precision and recall) averaged over classes",
    "auroc": "area under the ROC curve, one class against the rest, averaged (0.5 = chance, 1 = perfect)",
    "pr_auc": "area under the precision-recall curve, averaged over classes",
    "cohen_kappa": "agreement with the labels beyond chance (0 = chance, 1 = perfect)",
    "mcc": "Matthews correlation of predictions and labels (0 = chance, 1 = perfect)",
    "ece": "expected calibration error: average gap between confidence and accuracy (0 = perfectly calibrated)",
}

TRUTH_COLUMNS = {
    "precision": "share of the pipeline's flags of this kind that hit a planted problem",
    "recall": "share of planted problems the pipeline found",
    "recall_audited": "recall over the planted flips the label audit saw at all",
    "n_planted": "problems of this kind the demo generator planted",
    "n_flagged": "images the pipeline flagged for it",
    "n_found": "planted problems found",
    "n_excluded": "planted problems excluded from training",
    "n_audited": "planted flips in the audited splits",
    "n_flagged_other_planted": "flags on images planted as another kind (left out of precision)",
    "outlier_kind": "the outlier kind whose flags this subtype is scored against",
    "flagged": "the attributes the shortcut audit flagged",
}


def reason_meaning(reason: str) -> str:
    """Explain a rejection or exclusion reason, including ``low_quality:a+b`` and ``outlier:<kind>``."""
    if reason.startswith("low_quality:"):
        issues = reason.split(":", 1)[1].split("+")
        return "low quality: " + "; ".join(QUALITY.get(i, i) for i in issues)
    if reason.startswith("outlier:"):
        return f"does not belong to the dataset ({reason.split(':', 1)[1]}; curate.exclude_issues)"
    return REASONS.get(reason, "")


# ---- the summary -------------------------------------------------------------------------------


def _counts(d: Mapping[str, Any], names: Mapping[str, str] | None = None) -> str:
    """``{"a": 3, "b": 0, "c": 5}`` -> ``"5 c, 3 a"`` (zeros left out, largest first)."""
    items = sorted(((k, v) for k, v in d.items() if v), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{v} {(names or {}).get(k, k.replace('_', ' '))}" for k, v in items)


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def accounting_counts(a: AuditInputs) -> dict:
    """Every file's final state counted (``metrics/accounting.json``, else the split stage's copy
    taken before label issues)."""
    return a.accounting or (a.split_metrics or {}).get("accounting") or {}


def _excluded(a: AuditInputs, match: Callable[[str], bool]) -> int:
    return sum(int(v) for k, v in (accounting_counts(a).get("n_excluded") or {}).items() if match(k))


def _files(a: AuditInputs) -> list[Finding]:
    out = []
    ing = a.ingest_metrics
    if ing is not None:
        n_rej = int(ing.get("n_rejected") or 0)
        if n_rej:
            why = _counts(ing.get("rejected_by_reason") or {})
            out.append(
                Finding("rejected", f"{n_rej} of {ing.get('n_files')} files could not be used: {why}.", True)
            )
        else:
            out.append(
                Finding("rejected", f"All {ing.get('n_files')} files were readable images with a label.")
            )
    acc = accounting_counts(a)
    if acc:
        n_excl = sum((acc.get("n_excluded") or {}).values())
        kept = sum(int(acc.get(k) or 0) for k in ("n_train", "n_val", "n_test"))
        adds_up = kept + n_excl + int(acc.get("n_rejected") or 0) == acc.get("n_files")
        out.append(
            Finding(
                "accounting",
                f"Of {acc.get('n_files')} files, {kept} were kept ({acc.get('n_train')} train, {acc.get('n_val')} "
                f"val, {acc.get('n_test')} test), {acc.get('n_rejected')} rejected at ingest and {n_excl} excluded; "
                + (
                    "every file is accounted for."
                    if adds_up
                    else "these counts DO NOT add up to the files found."
                ),
                not adds_up,
            )
        )
    return out


def _quality(a: AuditInputs) -> list[Finding]:
    if a.quality_metrics is None:
        return []
    flagged = a.quality_metrics.get("flagged") or {}
    if not any(flagged.values()):
        return [Finding("quality", "No image was flagged for low quality.")]
    n_excl = _excluded(a, lambda r: r.startswith("low_quality:"))
    return [
        Finding(
            "quality",
            f"Low image quality: {_counts(flagged)} (one image can carry several flags); "
            f"{_plural(n_excl, 'image')} excluded for it.",
            True,
        )
    ]


def _duplicates(a: AuditInputs) -> list[Finding]:
    d = a.dedup_metrics
    if d is None:
        return []
    n_exact, n_near = int(d.get("n_exact") or 0), int(d.get("n_near") or 0)
    if not n_exact + n_near:
        return [Finding("duplicates", "No duplicate images were found.")]
    out = [
        Finding(
            "duplicates",
            f"{_plural(n_exact, 'exact duplicate')} and {_plural(n_near, 'near-duplicate')} in "
            f"{_plural(int(d.get('n_clusters') or 0), 'cluster')} of copies; "
            f"{_plural(_excluded(a, lambda r: r.endswith('_duplicate')), 'copy', 'copies')} excluded, one image kept "
            "per cluster.",
            True,
        )
    ]
    cross, conflict = (
        int(d.get("n_cross_patient_clusters") or 0),
        int(d.get("n_label_conflict_clusters") or 0),
    )
    if cross:
        out.append(
            Finding(
                "duplicates",
                f"{_plural(cross, 'image cluster')} filed under two or more patient ids (one patient under two ids, "
                "or a copy filed to the wrong patient); their patients are kept in one split.",
                True,
            )
        )
    if conflict:
        out.append(
            Finding("duplicates", f"{_plural(conflict, 'cluster')} of copies carry conflicting labels.", True)
        )
    return out


def _outliers(a: AuditInputs) -> list[Finding]:
    m = a.outlier_metrics
    if m is None:
        return []
    n = int(m.get("n_flagged") or 0)
    if not n:
        return [Finding("outliers", "No image stands out as not belonging to the dataset.")]
    kinds = _counts(m.get("flagged_by_kind") or {})
    n_excl = _excluded(a, lambda r: r.startswith("outlier"))
    fate = f"{n_excl} excluded" if n_excl else "kept and shown for review (curate.exclude_issues)"
    return [
        Finding("outliers", f"{_plural(n, 'image')} may not belong to this dataset ({kinds}); {fate}.", True)
    ]


def _leakage(a: AuditInputs) -> list[Finding]:
    if a.curated is None or a.manifest is None or "patient_id" not in a.manifest.columns:
        return []
    merged = a.curated.merge(a.manifest[["image_id", "patient_id"]], on="image_id", how="left")
    n_multi = int((merged.groupby("group_id")["patient_id"].nunique() > 1).sum())
    if not n_multi:
        return []
    return [
        Finding(
            "leakage",
            f"{_plural(n_multi, 'leakage group')} join several patients through duplicate images; "
            "each is kept in one split so no copy is tested on.",
        )
    ]


def _labels(a: AuditInputs) -> list[Finding]:
    m = a.label_issue_metrics
    if m is None:
        return []
    n = int(m.get("n_issues") or 0)
    text = f"{_plural(n, 'likely label error')} among {m.get('n_audited')} audited images"
    dropped = int(m.get("n_dropped") or 0)
    text += f"; {dropped} left out of training." if dropped else "; flagged for review, not removed."
    out = [Finding("label_issues", text, bool(n))]
    out += [Finding("label_issues", f"Label audit: {w}.", True) for w in m.get("warnings") or []]
    return out


def _shortcuts(a: AuditInputs) -> list[Finding]:
    m = a.shortcut_metrics
    if m is None:
        return []
    flagged = m.get("flagged") or []
    if not flagged:
        return [Finding("shortcuts", "Nothing but the image content was found to predict the label.")]
    return [
        Finding(
            "shortcuts",
            f"The label can be predicted from {', '.join(flagged)} alone: a model may learn "
            f"{'these' if len(flagged) > 1 else 'it'} instead of the anatomy.",
            True,
        )
    ]


def _interval(v: Mapping[str, Any]) -> str:
    lo, hi = v.get("ci_low"), v.get("ci_high")
    return f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""


def _model(a: AuditInputs) -> list[Finding]:
    tm = a.test_metrics
    if tm is None or not isinstance(tm.get("balanced_accuracy"), dict):
        return []
    ba = tm["balanced_accuracy"]
    level = f"{100 * float(tm.get('ci_level') or 0.95):.0f}%"
    text = f"The model's test balanced accuracy is {ba['value']:.3f}{_interval(ba)}"
    if isinstance(tm.get("auroc"), dict) and tm["auroc"].get("value") is not None:
        text += f", AUROC {tm['auroc']['value']:.3f}{_interval(tm['auroc'])}"
    n_test = accounting_counts(a).get("n_test")
    text += f" on {n_test} test images" if n_test else ""
    text += f" ({level} intervals, resampling patients)."
    cal = tm.get("calibration") or {}
    if cal.get("method") and cal.get("ece_after") is not None:
        text += (
            f" After temperature scaling its confidence is off by {cal['ece_after']:.3f} on average "
            f"(expected calibration error; {cal['ece_before']:.3f} before)."
        )
    return [Finding("test_metrics", text)]


def _subgroups(a: AuditInputs) -> list[Finding]:
    worst = (a.subgroups or {}).get("worst_group")
    if not worst:
        return []
    ba = worst.get("balanced_accuracy") or {}
    if ba.get("value") is None:
        return []
    gap = ba.get("gap")
    tail = f", {abs(gap):.3f} below the whole test set" if gap is not None and gap < 0 else ""
    return [
        Finding(
            "subgroups",
            f"Worst subgroup: {worst['column']} = {worst['group']}, balanced accuracy {ba['value']:.3f}"
            f"{_interval(ba)}{tail}.",
            bool(gap is not None and gap < 0),
        )
    ]


SUMMARY_STEPS: tuple[Callable[[AuditInputs], list[Finding]], ...] = (
    _files,
    _quality,
    _duplicates,
    _outliers,
    _leakage,
    _labels,
    _shortcuts,
    _model,
    _subgroups,
)


def summarize(a: AuditInputs) -> list[Finding]:
    """What was wrong with the data and how the model did, one sentence per finding, in page order.

    A stage that produced nothing contributes no sentence (its section says it is missing).
    """
    return [f for step in SUMMARY_STEPS for f in step(a)]
