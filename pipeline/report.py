"""The audit report: one self-contained HTML page that a curator reads top to bottom.

Images are inlined as base64 PNG, charts are drawn with matplotlib into inline PNGs, and no
script, stylesheet or font is fetched, so the page opens offline. The page opens with a summary in
plain sentences (:func:`pipeline.report_text.summarize`), each linking to its section; every number
below is shown beside what it means. Every section is always present (the demo ground truth only
when the data has one); a section whose stage produced nothing says so instead of disappearing.

The page is built from an :class:`AuditInputs` bundle (tables, metrics dicts and images already
loaded) so that this module does no file I/O and is easy to test.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pipeline import report_text as words

SECTIONS = (
    ("accounting", "Input accounting"),
    ("rejected", "Rejected files"),
    ("quality", "Image quality"),
    ("duplicates", "Duplicates"),
    ("outliers", "Images that do not belong (outliers)"),
    ("leakage", "Leakage groups"),
    ("split", "Split balance"),
    ("normalization", "Normalization"),
    ("augmentation", "Augmentation preview"),
    ("label_issues", "Label issues"),
    ("shortcuts", "Shortcuts: what else predicts the label"),
    ("training", "Training curves"),
    ("test_metrics", "Test metrics"),
    ("confusion", "Confusion matrix"),
    ("subgroups", "Subgroups: where the model fails"),
    ("demo_truth", "Detection of planted problems (demo ground truth)"),
)


@dataclass
class AuditInputs:
    """Everything the report shows. Any field may be ``None`` when its stage produced nothing."""

    ingest_metrics: dict | None = None
    rejected: pd.DataFrame | None = None
    accounting: dict | None = None
    final_states: pd.DataFrame | None = None
    quality_metrics: dict | None = None
    quality_sheets: dict[str, np.ndarray] = field(default_factory=dict)
    dedup_metrics: dict | None = None
    duplicates: pd.DataFrame | None = None
    dedup_sheet: np.ndarray | None = None
    curated: pd.DataFrame | None = None
    manifest: pd.DataFrame | None = None
    split_metrics: dict | None = None
    split_balance: pd.DataFrame | None = None
    normalizer: dict | None = None
    normalize_metrics: dict | None = None
    augment_preview: np.ndarray | None = None
    label_issue_metrics: dict | None = None
    label_issues: pd.DataFrame | None = None
    label_issue_sheet: np.ndarray | None = None
    train_metrics: dict | None = None
    curves: pd.DataFrame | None = None
    test_metrics: dict | None = None
    confusion: pd.DataFrame | None = None
    roc: pd.DataFrame | None = None
    demo_truth: dict | None = None
    outlier_metrics: dict | None = None
    outliers: pd.DataFrame | None = None
    outlier_gallery: np.ndarray | None = None
    shortcut_metrics: dict | None = None
    shortcut_sheets: dict[str, np.ndarray] = field(default_factory=dict)
    subgroups: dict | None = None
    dedup_pairs: pd.DataFrame | None = None
    """Candidate pairs to show side by side (``reports/dedup/pairs.csv`` rows, most useful first)."""
    thumbnails: dict[str, np.ndarray] = field(default_factory=dict)
    """image_id -> small uint8 RGB picture, for the duplicate pairs and the label issues."""
    has_truth: bool = True
    """False for real data (``data.truth: null``): the demo ground-truth section is left out."""
    n_gallery: int = 24


def png_data_uri(image: np.ndarray) -> str:
    """Encode an RGB or gray uint8 array as a ``data:image/png;base64,...`` URI."""
    arr = image
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError("could not encode image as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _figure_uri(draw: Callable[[Any], None], size: tuple[float, float] = (6.0, 3.2)) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _literal(text: object) -> str:
    """``text`` for a matplotlib label, shown as written: a ``$`` would start math text (a label
    like ``$x^$`` made the whole report fail), so each one is escaped."""
    return str(text).replace("$", r"\$")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _table(df: pd.DataFrame, max_rows: int = 50, na_rep: str = "–") -> str:
    shown = df.head(max_rows)
    if {"image_id", "path"} <= set(shown.columns) and (shown["image_id"] == shown["path"]).all():
        shown = shown.drop(columns="path")  # the id is the path: one column says it
    more = f"<p class=note>{len(df) - max_rows} more rows not shown.</p>" if len(df) > max_rows else ""
    return (
        shown.to_html(index=False, border=0, classes="tbl", float_format=lambda v: f"{v:.4g}", na_rep=na_rep)
        + more
    )


def _kv(d: dict, meanings: dict[str, str] | None = None) -> str:
    """Key-value table; a nested dict becomes a small table in its cell, never run-on text. With
    ``meanings``, a third column says what each key means."""
    rows = []
    for k, v in d.items():
        cell = _kv(v) if isinstance(v, dict) and v else html.escape(_fmt(v))
        meaning = f"<td class=note>{html.escape(meanings.get(k, ''))}</td>" if meanings is not None else ""
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{cell}</td>{meaning}</tr>")
    head = "<tr><th>key</th><th>value</th><th>meaning</th></tr>" if meanings is not None else ""
    return f"<table class=tbl>{head}{''.join(rows)}</table>"


def _thumb(image_id: str, a: AuditInputs) -> str:
    """One picture captioned with its file name, both inside one fixed-width box (captions wrap, so
    they never run into the neighbouring picture); the full image_id is the tooltip."""
    img = a.thumbnails.get(image_id)
    pic = (
        f'<img src="{png_data_uri(img)}" width="{img.shape[1]}" height="{img.shape[0]}" '
        f'alt="{html.escape(image_id)}">'
        if img is not None
        else "<div class=noimg>not readable now</div>"
    )
    name = html.escape(str(image_id).rsplit("/", 1)[-1])
    return (
        f'<figure class=thumb title="{html.escape(image_id)}">{pic}<figcaption>{name}</figcaption></figure>'
    )


def _card(head: str, pictures: str, facts: list[str]) -> str:
    """A box holding a heading, one or two captioned pictures and a few explained facts."""
    lines = "".join(f"<div>{f}</div>" for f in facts)
    return f"<div class=card><div class=card-head>{head}</div>{pictures}<div class=facts>{lines}</div></div>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "none"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _missing(what: str) -> str:
    return f"<p class=missing>Nothing to show: {html.escape(what)} was not produced.</p>"


def _section_accounting(a: AuditInputs) -> str:
    if a.accounting is None:
        return _missing("metrics/accounting.json")
    acc = a.accounting
    excluded = acc.get("n_excluded", {})
    rows = [
        ("files found", acc.get("n_files"), "every file under the data root"),
        ("rejected at ingest", acc.get("n_rejected"), "could not be used at all (see Rejected files)"),
    ]
    rows += [(f"excluded: {r}", n, words.reason_meaning(r)) for r, n in sorted(excluded.items())]
    rows += [
        ("train", acc.get("n_train"), "used to fit the model and the normalization"),
        ("val", acc.get("n_val"), "used to choose the epoch, calibration and threshold"),
        ("test", acc.get("n_test"), "evaluated once, at the end"),
    ]
    total = (
        (acc.get("n_rejected") or 0)
        + sum(excluded.values())
        + sum(acc.get(k) or 0 for k in ("n_train", "n_val", "n_test"))
    )
    adds_up = total == acc.get("n_files")
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{v}</td><td class=note>{html.escape(m)}</td></tr>"
        for k, v, m in rows
    )
    verdict = "adds up" if adds_up else "DOES NOT ADD UP"
    return (
        f"<p>Every input file ends in exactly one final state. Sum of states = {total}; "
        f"files found = {acc.get('n_files')}: <b class={'ok' if adds_up else 'bad'}>{verdict}</b>.</p>"
        f"<table class=tbl>{body}</table>{_class_losses(acc)}"
    )


def _class_losses(acc: dict) -> str:
    """Exclusions per class (curation and label-issue drops, of the readable images)."""
    per = acc.get("excluded_by_class") or {}
    if not per:
        return ""
    table = pd.DataFrame(per).T.rename_axis("class").reset_index()
    warn = "".join(
        f"<p class=warn><b>Warning:</b> {html.escape(w)}.</p>" for w in acc.get("class_loss_warnings", [])
    )
    return (
        "<h3>Exclusions per class</h3><p>Readable images of each class and how many curation or the "
        "label-issue audit excluded; a class that loses far more than the others is named above the "
        "table (the curated class mix then differs from the data's).</p>" + warn + _table(table)
    )


def _section_rejected(a: AuditInputs) -> str:
    if a.rejected is None:
        return _missing("reports/ingest/rejected.csv")
    if a.rejected.empty:
        return "<p>No file was rejected at ingest.</p>"
    counts = a.rejected["reason"].value_counts().rename_axis("reason").reset_index(name="n_files")
    counts["meaning"] = counts["reason"].map(words.reason_meaning)
    return (
        "<p>Files that could not be used at all, counted by reason, then one row per file.</p>"
        + _table(counts)
        + _table(a.rejected, max_rows=100)
    )


def _section_quality(a: AuditInputs) -> str:
    if a.quality_metrics is None:
        return _missing("metrics/quality.json")
    flagged = a.quality_metrics.get("flagged", {})
    excluded = words.accounting_counts(a).get("n_excluded") or {}
    rows = [
        {
            "issue": issue,
            "flagged": n,
            "excluded": sum(v for r, v in excluded.items() if r.startswith("low_quality:") and issue in r[12:].split("+")),
            "meaning": words.QUALITY.get(issue, ""),
        }
        for issue, n in flagged.items()
    ]  # fmt: skip
    out = [
        f"<p>{a.quality_metrics.get('n_images')} images scored, each measure relative to this dataset's own "
        "images. <i>flagged</i>: images past the issue's threshold; <i>excluded</i>: images left out for it "
        "(<code>curate.exclude_issues</code>; an image can carry several issues).</p>",
        _table(pd.DataFrame(rows)) if rows else "",
        "<p class=note>Gallery captions: <b>score</b> is the issue score in [0, 1], lower is worse; 0.00 means "
        "the most extreme image of this dataset on that measure (not a missing value); then the file name. "
        "Worst first.</p>",
    ]
    mod = a.quality_metrics.get("modality")
    if mod:
        how = "inferred from the images" if mod.get("param") == "auto" else "set by data.modality"
        out.insert(
            0,
            f"<p>Modality: <b>{html.escape(str(mod.get('modality')))}</b> ({how}: "
            f"{100 * float(mod.get('colour_share', 0)):.0f}% of {mod.get('n_images')} readable images have "
            "real colour); the per-modality checks follow it (colour photographs: overexposed needs clipping).</p>",
        )
    for issue in sorted(flagged):
        out.append(f"<h3>{html.escape(issue)} ({flagged[issue]} flagged)</h3>")
        sheet = a.quality_sheets.get(issue)
        if flagged[issue] and sheet is not None:
            out.append(_img(png_data_uri(sheet), f"worst {issue} images"))
        else:
            out.append("<p class=note>No image flagged.</p>")
    return "".join(out)


def _section_duplicates(a: AuditInputs) -> str:
    if a.dedup_metrics is None:
        return _missing("metrics/dedup.json")
    out = [
        "<p>Candidates are pairs whose perceptual hashes differ in few bits; each is confirmed or rejected "
        "by comparing the aligned pixels. Copies form clusters; one image per cluster is kept.</p>",
        _kv(a.dedup_metrics, words.DEDUP),
    ]
    if a.duplicates is not None and not a.duplicates.empty:
        d = a.duplicates
        flags = [c for c in ("is_cross_patient", "is_label_conflict") if c in d.columns]
        if flags:
            flagged = d[d[flags].any(axis=1)]
            out.append(f"<h3>Flagged clusters ({flagged['cluster_id'].nunique()})</h3>")
            out.append(
                "<p class=note>One row per image of a cluster whose copies sit under different patient ids "
                "(<i>is_cross_patient</i>) or carry different labels (<i>is_label_conflict</i>). <i>kind</i>: exact "
                "(byte- or pixel-identical) or near; <i>is_representative</i>: the copy that is kept; "
                "<i>distance</i>: differing hash bits to the kept copy; <i>similarity</i>: aligned pixel "
                "correlation with it (1 = identical).</p>"
            )
            out.append(_table(flagged.sort_values(["cluster_id", "image_id"]), max_rows=60))
    out.append(_pairs(a))
    return "".join(out)


def _pairs(a: AuditInputs) -> str:
    """Candidate pairs side by side, as a table: the two pictures and what the check said."""
    p = a.dedup_pairs
    if p is None or p.empty or not a.thumbnails:
        if a.dedup_sheet is None:
            return ""
        return (
            "<h3>Duplicate pairs side by side</h3><p class=note>Neighbouring tiles are one pair. Caption: "
            "<b>copy</b> (confirmed near duplicate) or <b>not copy</b> (a candidate the pixel check rejected), "
            "<b>sim</b> aligned pixel correlation (1 = identical), <b>dist</b> differing hash bits, file name.</p>"
            + _img(png_data_uri(a.dedup_sheet), "duplicate pairs")
        )
    cards = []
    for k, r in enumerate(p.itertuples(index=False), start=1):
        verdict = "copy" if r.is_confirmed else "not a copy"
        pa, pb = html.escape(str(r.patient_id_a)), html.escape(str(r.patient_id_b))
        patients = f"same patient ({pa})" if pa == pb else f"<b class=bad>different patients</b> ({pa}, {pb})"
        la, lb = html.escape(str(r.label_a)), html.escape(str(r.label_b))
        labels = f"label {la}" if la == lb else f"<b class=bad>different labels</b> ({la}, {lb})"
        cards.append(
            _card(
                f"pair {k}: <b class={'bad' if r.is_confirmed else 'ok'}>{verdict}</b>",
                _thumb(r.image_id_a, a) + _thumb(r.image_id_b, a),
                [
                    f"similarity {r.similarity:.3f}, hash distance {r.distance}",
                    _pair_ratios(r),
                    patients,
                    labels,
                ],
            )
        )
    return (
        f"<h3>Candidate pairs side by side ({len(p)})</h3>"
        "<p class=note>Confirmed pairs across patients first, then the confirmed pairs closest to the threshold, "
        "then the rejected candidates that came closest. <b>copy</b>: the pixel check confirmed it; "
        "<b>not a copy</b>: similar hashes but different pictures. <b>similarity</b>: correlation of the aligned "
        "thumbnails (1 = identical); <b>hash distance</b>: bits that differ between the two perceptual hashes "
        "(0 = same hash); <b>residual ratio</b>: the pair's pixel difference as a share of how much each image "
        "differs from itself moved by one pixel (a copy when at most "
        f"{_fmt((a.dedup_metrics or {}).get('confirm_residual_ratio'))}); <b>colour difference</b>: CIELAB "
        "distance over a 4x4 grid, colour images only (a copy when at most "
        f"{_fmt((a.dedup_metrics or {}).get('max_colour_difference'))}; about 2.3 is just noticeable).</p>"
        f"<div class='cards pairs'>{''.join(cards)}</div>"
    )


def _pair_ratios(r: Any) -> str:
    """The two numbers the confirmation decided on (absent from tables of older runs)."""
    ratio, colour = getattr(r, "residual_ratio", None), getattr(r, "colour_difference", None)
    parts = [] if ratio is None or pd.isna(ratio) else [f"residual ratio {ratio:.2f}"]
    if colour is not None and not pd.isna(colour):
        parts.append(f"colour difference {colour:.1f}")
    return ", ".join(parts)


def _section_leakage(a: AuditInputs) -> str:
    if a.curated is None or a.manifest is None:
        return _missing("data/interim/curated.parquet")
    merged = a.curated.merge(a.manifest[["image_id", "patient_id"]], on="image_id", how="left")
    per_group = merged.groupby("group_id")["patient_id"].agg(lambda s: sorted(set(map(str, s))))
    multi = per_group[per_group.map(len) > 1]
    head = (
        f"<p>{per_group.size} leakage groups (patients joined by near-duplicate links); "
        f"{len(multi)} join more than one patient. The split assigns whole groups.</p>"
    )
    if multi.empty:
        return head
    table = pd.DataFrame({"group_id": multi.index, "patients": [", ".join(p) for p in multi]})
    return head + _table(table)


def _section_split(a: AuditInputs) -> str:
    if a.split_metrics is None:
        return _missing("metrics/split.json")
    sm = a.split_metrics
    per_split = sm.get("splits") or {k: v for k, v in sm.items() if isinstance(v, dict) and "images" in v}
    out = [
        "<p>Whole leakage groups (patients joined by duplicate images) are assigned to train, val and test so "
        "that each split's class shares stay close to the whole dataset's.</p>"
    ]
    if per_split:
        rows = []
        for name, sp in per_split.items():
            row = {"split": name, **{k: sp.get(k) for k in words.SPLIT if k in sp}}
            for cls, n in (sp.get("class_counts") or {}).items():
                share = (sp.get("class_proportions") or {}).get(cls)
                row[f"{cls} (n, share)"] = f"{n} ({100 * share:.1f}%)" if share is not None else n
            rows.append(row)
        out.append(_table(pd.DataFrame(rows)))
        legend = "; ".join(f"<i>{k}</i>: {html.escape(v)}" for k, v in words.SPLIT.items())
        out.append(
            f"<p class=note>{legend}; <i>class (n, share)</i>: images of that class and their share of the split.</p>"
        )
    whole = sm.get("class_proportions") or {}
    if whole:
        shares = ", ".join(f"{html.escape(str(c))} {100 * v:.1f}%" for c, v in whole.items())
        out.append(f"<p>Whole dataset ({sm.get('n_images')} images): {shares}.</p>")
    if "max_abs_deviation" in sm:
        out.append(
            f"<p>Largest gap between a class's share in any split and in the whole dataset: "
            f"{100 * sm['max_abs_deviation']:.2f} percentage points.</p>"
        )
    leaks = {k: sm[k] for k in ("leaking_groups", "leaking_patients", "leaking_clusters") if k in sm}
    if leaks:
        ok = not any(leaks.values())
        text = ", ".join(f"{v} {k.removeprefix('leaking_')}" for k, v in leaks.items())
        out.append(
            f"<p>In more than one split: <b class={'ok' if ok else 'bad'}>{text}</b> (leakage groups, patients, "
            "duplicate clusters; the split stage refuses to write anything else).</p>"
        )
    bal = a.split_balance
    if bal is not None and {"label", "split", "n_images"} <= set(bal.columns):
        pivot = bal.pivot_table(
            index="label", columns="split", values="n_images", aggfunc="sum", fill_value=0
        )
        if not per_split:
            out.append(_table(pivot.reset_index()))

        def draw(ax: Any) -> None:
            share = (pivot / pivot.sum(axis=0)).rename(index=_literal)
            share.T.plot.bar(stacked=True, ax=ax, rot=0)
            ax.set_ylabel("class share of split")
            ax.legend(fontsize=7, loc="upper right")

        out.append(_img(_figure_uri(draw), "class proportions per split"))
    return "".join(out)


def _section_normalization(a: AuditInputs) -> str:
    if a.normalizer is None:
        return _missing("data/processed/normalizer.json")
    mode = str(a.normalizer.get("mode"))
    formula = words.NORMALIZER_MODES.get(mode, "")
    out = [
        "<p>Fitted on the train split only, applied unchanged to val and test. Mode "
        f"<b>{html.escape(mode)}</b>: a network input is {html.escape(formula)} (statistics in the raw pixel "
        "scale).</p>",
        _kv(a.normalizer, words.NORMALIZER),
    ]
    nm = a.normalize_metrics
    if nm:
        out.append("<h3>Stored arrays</h3>")
        out.append(
            _kv({k: v for k, v in nm.items() if k in words.NORMALIZER and k != "mode"}, words.NORMALIZER)
        )
        splits = nm.get("splits") or {}
        if splits:
            rows = [
                {"split": name, "images": sp.get("n_images"), "array shape (N, H, W, C)": str(tuple(sp.get("shape") or ())),
                 **{str(c): n for c, n in (sp.get("class_counts") or {}).items()}}
                for name, sp in splits.items()
            ]  # fmt: skip
            out.append(_table(pd.DataFrame(rows)))
    return "".join(out)


def _section_augmentation(a: AuditInputs) -> str:
    if a.augment_preview is None:
        return _missing("reports/augment/preview.png")
    return "<p>Rows: train images; columns: augmented variants.</p>" + _img(
        png_data_uri(a.augment_preview), "augmentation preview"
    )


def _section_label_issues(a: AuditInputs) -> str:
    if a.label_issue_metrics is None:
        return _missing("metrics/label_issues.json")
    out = [
        f"<p class=warn><b>Warning:</b> {html.escape(w)}.</p>"
        for w in a.label_issue_metrics.get("warnings", [])
    ]
    out.append(
        "<p>An auditor model predicts each image's label without having seen it (out-of-fold, folds grouped "
        "by patient); cleanlab flags images whose given label the auditor finds unlikely.</p>"
    )
    out.append(_kv({k: v for k, v in a.label_issue_metrics.items() if k != "warnings"}, words.LABEL_ISSUES))
    out.append(_label_issue_table(a))
    return "".join(out)


def _label_issue_table(a: AuditInputs) -> str:
    """The flagged images in rank order, each row with its picture, so pictures and rows cannot disagree."""
    li = a.label_issues
    legend = (
        "<p class=note><b>rank</b>: 1 = most likely mislabelled; <b>label quality</b>: the auditor's "
        "probability for the given label, in [0, 1] (0.00 = it gives the label almost no chance); "
        "<b>suggested</b>: the label it finds most likely; <b>reason</b>: <i>out_of_fold</i> (cleanlab) or "
        "<i>duplicate_label_conflict</i> (a copy of this image carries another label).</p>"
    )
    if li is None:
        return (
            "" if a.label_issue_sheet is None else _img(png_data_uri(a.label_issue_sheet), "top label issues")
        )
    if li.empty:
        return "<p>No image was flagged.</p>"
    shown = li.sort_values("rank") if "rank" in li.columns else li
    if not a.thumbnails:
        sheet = (
            "" if a.label_issue_sheet is None else _img(png_data_uri(a.label_issue_sheet), "top label issues")
        )
        return legend + sheet + _table(shown, max_rows=a.n_gallery)
    cards = [
        _card(
            f"#{r.rank}",
            _thumb(r.image_id, a),
            [
                f"given <b>{html.escape(str(r.given_label))}</b>",
                f"suggested <b>{html.escape(str(r.suggested_label))}</b>",
                f"label quality {r.label_quality:.2f}",
                f"{html.escape(str(r.reason))}, {html.escape(str(r.split))}",
            ],
        )
        for r in shown.head(a.n_gallery).itertuples(index=False)
    ]
    more = len(shown) - a.n_gallery
    tail = f"<p class=note>{more} more in reports/label_issues.csv.</p>" if more > 0 else ""
    return (
        legend + f"<p class=note>The {min(len(shown), a.n_gallery)} highest-ranked, in rank order (as in "
        "reports/label_issues.csv).</p>" + f"<div class='cards issues'>{''.join(cards)}</div>" + tail
    )


def _section_training(a: AuditInputs) -> str:
    if a.train_metrics is None:
        return _missing("metrics/train.json")
    out = [_kv(a.train_metrics, words.TRAIN)]
    c = a.curves
    if c is not None and not c.empty:
        x = "step" if "step" in c.columns else c.columns[0]
        for group in (["train_loss", "val_loss"], ["val_balanced_accuracy", "val_auroc"]):
            cols = [g for g in group if g in c.columns]
            if not cols:
                continue

            def draw(ax: Any, cols: list[str] = cols) -> None:
                for col in cols:
                    ax.plot(c[x], c[col], marker="o", ms=3, label=col)
                ax.set_xlabel("epoch")
                ax.legend(fontsize=8)

            out.append(_img(_figure_uri(draw), " and ".join(cols)))
    return "".join(out)


def _calibration_note(tm: dict) -> str:
    """Temperature and ECE before/after; the binary operating point (metrics/test.json)."""
    out = []
    cal = tm.get("calibration") or {}
    if cal.get("method"):
        out.append(
            f"<p>Temperature scaling fitted on val: T = {_fmt(cal.get('temperature'))}; test ECE "
            f"{_fmt(cal.get('ece_before'))} before, {_fmt(cal.get('ece_after'))} after (predicted classes unchanged). "
            "ECE, the expected calibration error, is the average gap between the model's confidence and its "
            "accuracy (0.05 = a prediction made with 90% confidence is right about 85% or 95% of the time); "
            "T &gt; 1 means the raw model was overconfident, T &lt; 1 underconfident.</p>"
        )
    op = tm.get("operating_point")
    if isinstance(op, dict):
        rows = [{"split": s, **(op.get(s) or {})} for s in ("val", "test")]
        out.append(
            f"<p>Operating threshold {_fmt(op.get('threshold'))} on P({html.escape(str(op.get('positive_class')))}),"
            f" chosen on val ({html.escape(str(op.get('method')))}), applied unchanged to test. Sensitivity: share of"
            " positives called positive; specificity: share of negatives called negative; PPV / NPV: share of"
            " positive / negative calls that are right.</p>"
        )
        out.append(_table(pd.DataFrame(rows)))
    return "".join(out)


def _section_test_metrics(a: AuditInputs) -> str:
    if a.test_metrics is None:
        return _missing("metrics/test.json")
    tm = a.test_metrics
    rows = []
    level = f"{100 * float(tm.get('ci_level') or 0.95):.0f}% CI"
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "pr_auc", "cohen_kappa", "mcc", "ece"):
        if isinstance(tm.get(key), dict):
            v = tm[key]
            pl = (tm.get("patient_level") or {}).get(key) or {}
            rows.append(
                {
                    "metric": key,
                    "value": v.get("value"),
                    level: f"[{_fmt(v.get('ci_low'))}, {_fmt(v.get('ci_high'))}]",
                    "patient-level": pl.get("value"),
                    "meaning": words.METRICS.get(key, ""),
                }
            )
    out = [
        f"<p>The test split, evaluated once. <i>{level}</i>: the range that holds the value in {level[:-3]} of "
        "bootstrap resamples of the test patients (a patient's images move together). <i>patient-level</i>: the "
        "same metric with one prediction per patient (the mean of their images' probabilities). Higher is "
        "better except for ECE.</p>",
        _table(pd.DataFrame(rows)),
    ]
    if isinstance(tm.get("per_class"), dict):
        pc = pd.DataFrame(tm["per_class"]).T.reset_index(names="class")
        out.append(
            "<p class=note>Per class: <i>sensitivity</i> = share of that class's images called that class; "
            "<i>specificity</i> = share of the other images not called that class.</p>"
        )
        out.append(_table(pc))
    out.append(_calibration_note(tm))
    if a.roc is not None and {"fpr", "tpr"} <= set(a.roc.columns):

        def draw(ax: Any) -> None:
            groups = a.roc.groupby("class") if "class" in a.roc.columns else [("all", a.roc)]
            for name, g in groups:
                ax.plot(g["fpr"], g["tpr"], label=_literal(name))
            ax.plot([0, 1], [0, 1], "k:", lw=0.8)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.legend(fontsize=8)

        out.append(_img(_figure_uri(draw, (4.5, 4.0)), "ROC curves"))
    return "".join(out)


def _section_confusion(a: AuditInputs) -> str:
    if a.confusion is None or not {"actual", "predicted"} <= set(a.confusion.columns):
        return _missing("plots/confusion.csv")
    cm = pd.crosstab(a.confusion["actual"], a.confusion["predicted"])
    return (
        "<p>Test images counted by actual label (rows) and predicted label (columns); the diagonal holds the "
        "correct predictions.</p>" + _table(cm.reset_index())
    )


def _section_demo_truth(a: AuditInputs) -> str:
    if a.demo_truth is None:
        return _missing("metrics/demo_truth.json")
    kinds = {k: v for k, v in a.demo_truth.items() if isinstance(v, dict) and "recall" in v}
    if not kinds:
        return "<p>No ground truth for this dataset (only the demo data has one).</p>"
    table = pd.DataFrame(kinds).T.reset_index(names="planted kind")
    # undefined ratios are null in the JSON; lists (the flagged attributes) read as one line of text
    table = table.map(lambda v: ", ".join(map(str, v)) if isinstance(v, list) else "–" if v is None else v)
    table = table[["planted kind", *[c for c in words.TRUTH_COLUMNS if c in table.columns],
                   *[c for c in table.columns if c not in words.TRUTH_COLUMNS and c != "planted kind"]]]  # fmt: skip
    legend = "; ".join(
        f"<i>{k}</i>: {html.escape(v)}" for k, v in words.TRUTH_COLUMNS.items() if k in table.columns
    )
    return (
        "<p>How many of the demo data's planted problems the pipeline found.</p>"
        f"<p class=note>{legend}. &ndash;: not defined (nothing planted or nothing flagged of that kind, or the "
        "measure does not apply to it).</p>" + _table(table)
    )


def _warnings(a: AuditInputs) -> str:
    """Warnings shown above every section: what the audit could not check, settings that do not fit
    the data (modality, augmentation domain) and exclusions that fall on one class."""
    lines = [
        *(a.quality_metrics or {}).get("warnings", []),
        *(a.accounting or {}).get("class_loss_warnings", []),
    ]
    out = "".join(f"<p class=warn><b>Warning:</b> {html.escape(w)}.</p>" for w in lines)
    n_own = (a.ingest_metrics or {}).get("n_own_patient") or 0
    if not n_own:
        return out
    return out + (
        f"<p class=warn><b>Warning:</b> {n_own} image(s) have no patient id; each was made its own patient "
        "(<code>ingest.missing_patient_id: own_group</code>), so patient-level leakage control is not "
        "possible for them: images of one patient may sit in different splits. Only near-duplicate "
        "links join them into leakage groups.</p>"
    )


def _section_outliers(a: AuditInputs) -> str:
    if a.outlier_metrics is None:
        return _missing("metrics/outliers.json")
    m = a.outlier_metrics
    out = [
        "<p>Images unlike the rest of this dataset: another view, modality or body part, a photo or a "
        "document (<b>atypical</b>: far from the dataset's own distribution of thumbnails), or an image "
        "stored the wrong way (<b>rotated</b>, <b>mirrored</b>, <b>inverted</b>: a model trained on this "
        "dataset's own images says which way up it is, and undoing that makes the image typical). "
        "Scores are in [0, 1], lower is worse; flagged images are kept unless "
        "<code>curate.exclude_issues</code> lists <code>outlier</code>.</p>",
        _kv({k: v for k, v in m.items() if k != "orientation_accuracy"}, words.OUTLIERS),
    ]
    acc = m.get("orientation_accuracy") or {}
    if acc:
        rows = [{"transform": t, "held-out accuracy": v} for t, v in acc.items()]
        out.append(
            "<p class=note>How often the orientation models tell each transform from upright on held-out "
            "images (1 = always, 0.5 = a coin toss): rotations and inversions by the linear model on "
            "32 px thumbnails, <code>flip</code> (mirroring) by the mirror CNN on 64 px thumbnails (empty "
            "when there were too few typical images to train it). Transforms below "
            "<code>outliers.min_orientation_accuracy</code> are not judged, so nothing is called e.g. "
            "mirrored when the model cannot see mirroring in this dataset.</p>" + _table(pd.DataFrame(rows))
        )
    warned = m.get("not_judged_warning") or []
    if warned and a.outliers is not None and "unjudged_orientation" in a.outliers.columns:
        listed = a.outliers[a.outliers["unjudged_orientation"].astype(str).isin(warned)]
        would = m.get("not_judged_would_flag") or {}
        out.append(
            f"<p class=warn><b>Warning:</b> {len(listed)} typical images look stored turned "
            f"({html.escape(', '.join(f'{k}: {would.get(k)}' for k in warned))}) to an orientation model whose "
            "held-out accuracy is below <code>outliers.min_orientation_accuracy</code>, so they are not "
            "flagged. They are a third or more of the model's held-out errors: a model that cannot see "
            "orientation errs by doubt, not with confidence, so a share of the set may really be stored "
            "that way (the held-out accuracy counts such images as errors). Look at them:</p>"
            + _table(listed[["image_id", "unjudged_orientation"]], max_rows=a.n_gallery)
        )
    if a.outlier_gallery is not None and m.get("n_flagged"):
        out.append(
            "<p class=note>Gallery captions: the kind of finding and the outlier score (lower is worse; 0.00 "
            "= the most extreme image of this dataset), then the file name. Worst first.</p>"
        )
        out.append(_img(png_data_uri(a.outlier_gallery), "flagged outliers"))
    if a.outliers is not None and "is_outlier_issue" in a.outliers.columns:
        flagged = a.outliers[a.outliers["is_outlier_issue"].astype(bool)].sort_values("outlier_score")
        out.append(_table(flagged, max_rows=a.n_gallery))
    return "".join(out)


def _section_shortcuts(a: AuditInputs) -> str:
    if a.shortcut_metrics is None:
        return _missing("metrics/shortcuts.json")
    m = a.shortcut_metrics
    out = [
        f"<p>How well each attribute <i>alone</i> predicts the label (balanced accuracy out of fold, "
        f"{m.get('n_folds')} folds grouped by patient, {m.get('n_images')} images of {m.get('splits')}), "
        f"against chance ({1 / max(m.get('n_classes') or 1, 1):.3g}). An attribute is flagged when the "
        f"lower end of its patient-bootstrap interval is above chance and its lift "
        f"(score &minus; chance) / (1 &minus; chance) is at least {m.get('min_lift')}. "
        "<b>border_only</b> is an auditor that sees only the image frame (centre masked): when it "
        "predicts the label, markers, text or borders carry it. A flagged attribute is not proof of a "
        "shortcut, but the model can learn it instead of the anatomy.</p>"
    ]
    for note in m.get("notes", []):
        out.append(f"<p class=missing>{html.escape(note)}</p>")
    flagged = m.get("flagged", [])
    out.append(
        f"<p>Flagged: <b class={'bad' if flagged else 'ok'}>{html.escape(', '.join(flagged) or 'none')}</b></p>"
    )
    if m.get("attributes"):
        table = pd.DataFrame(m["attributes"])
        first = [c for c in ("attribute", "source", "score", "chance", "ci_low", "ci_high", "lift", "is_shortcut")
                 if c in table.columns]  # fmt: skip
        out.append(_table(table[first + [c for c in table.columns if c not in first]], max_rows=100))
    for name in flagged:
        out.append(f"<h3>{html.escape(name)}</h3>")
        breakdown = (m.get("breakdown") or {}).get(name)
        if breakdown:
            out.append(_table(pd.DataFrame(breakdown).T.fillna(0).astype(int).reset_index(names="value")))
        sheet = a.shortcut_sheets.get(name)
        if sheet is not None:
            out.append(_img(png_data_uri(sheet), f"examples of {name}"))
    return "".join(out)


def _section_subgroups(a: AuditInputs) -> str:
    if a.subgroups is None:
        return _missing("metrics/subgroups.json")
    s = a.subgroups
    level = f"{100 * s.get('ci_level', 0.95):.0f}%"
    out = [
        f"<p>The test metrics per group of the columns in <code>evaluate.subgroups</code>, with {level} "
        "intervals by patient bootstrap and the gap to the whole test set.</p>"
    ]
    for note in s.get("notes", []):
        out.append(f"<p class=missing>{html.escape(note)}</p>")
    worst = s.get("worst_group")
    if worst:
        ba = worst["balanced_accuracy"]
        out.append(
            f"<p>Worst group: <b>{html.escape(worst['column'])} = {html.escape(worst['group'])}</b>, "
            f"balanced accuracy {_fmt(ba.get('value'))} [{_fmt(ba.get('ci_low'))}, {_fmt(ba.get('ci_high'))}], "
            f"gap {_fmt(ba.get('gap'))}.</p>"
        )
    rows = []
    for g in s.get("groups", []):
        row = {k: g[k] for k in ("column", "group", "n_images", "n_patients")}
        for key in s.get("metrics", []):
            v = g.get(key)
            row[key] = "too small" if g["too_small"] else (
                f"{_fmt(v['value'])} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}] gap {_fmt(v['gap'])}"
            )  # fmt: skip
        rows.append(row)
    if rows:
        out.append(_table(pd.DataFrame(rows), max_rows=100))
        sized = [g for g in s["groups"] if not g["too_small"] and g["balanced_accuracy"]["value"] is not None]
        if sized:

            def draw(ax: Any) -> None:
                names = [f"{g['column']}={g['group']}" for g in sized]
                val = np.array([g["balanced_accuracy"]["value"] for g in sized], float)
                lo = np.array([g["balanced_accuracy"]["ci_low"] or np.nan for g in sized], float)
                hi = np.array([g["balanced_accuracy"]["ci_high"] or np.nan for g in sized], float)
                ax.errorbar(val, range(len(sized)), xerr=[val - lo, hi - val], fmt="o", capsize=3)
                ax.set_yticks(range(len(sized)), names, fontsize=7)
                ax.set_xlabel(f"balanced accuracy ({level} CI)")

            out.append(
                _img(_figure_uri(draw, (6.0, 0.35 * len(sized) + 1.0)), "balanced accuracy per subgroup")
            )
    return "".join(out)


BUILDERS: dict[str, Callable[[AuditInputs], str]] = {
    "accounting": _section_accounting,
    "rejected": _section_rejected,
    "quality": _section_quality,
    "duplicates": _section_duplicates,
    "outliers": _section_outliers,
    "leakage": _section_leakage,
    "split": _section_split,
    "normalization": _section_normalization,
    "augmentation": _section_augmentation,
    "label_issues": _section_label_issues,
    "shortcuts": _section_shortcuts,
    "training": _section_training,
    "test_metrics": _section_test_metrics,
    "confusion": _section_confusion,
    "subgroups": _section_subgroups,
    "demo_truth": _section_demo_truth,
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em} img{max-width:100%;border:1px solid #ccc;margin:.4em 0}
.tbl{border-collapse:collapse;font-size:13px;margin:.5em 0} .tbl th,.tbl td{border:1px solid #ddd;padding:3px 8px;text-align:left}
.warn{background:#fff3cd;border:1px solid #e0b000;padding:.6em} .missing{color:#a60;font-style:italic} .note{color:#666;font-size:12px} .ok{color:#070} .bad{color:#b00}
#summary ul{padding-left:1.2em} #summary li{margin:.35em 0;line-height:1.4} #summary li.warn-item::marker{color:#b00}
#summary li a{margin-left:.4em;font-size:13px;white-space:nowrap}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:.5em 0}
.card{border:1px solid #ddd;padding:4px;font-size:12px;line-height:1.35}
.card-head{font-size:13px;margin-bottom:2px} .facts{overflow-wrap:anywhere} .issues .card{width:140px}
figure.thumb{width:136px;margin:0 2px;display:inline-block;vertical-align:top}
figure.thumb img{display:block;max-width:128px;height:auto;margin:0 auto;border:1px solid #ccc}
figure.thumb figcaption{font-size:11px;line-height:1.25;overflow-wrap:anywhere;text-align:center;color:#333}
.noimg{width:128px;height:64px;background:#eee;color:#888;font-size:11px;text-align:center}
"""


def sections_shown(inputs: AuditInputs) -> list[tuple[str, str]]:
    """The sections of this page, in order: all of :data:`SECTIONS`, except the demo ground truth
    when the data has none (real data, ``data.truth: null``)."""
    no_truth = not inputs.has_truth or (inputs.demo_truth or {}).get("available") is False
    return [(sid, name) for sid, name in SECTIONS if not (sid == "demo_truth" and no_truth)]


def _summary(inputs: AuditInputs) -> str:
    """The opening section: one sentence per finding, each linking to the section with its details."""
    names = dict(SECTIONS)
    items = [
        f"<li class={'warn-item' if f.is_warning else 'info-item'}>{html.escape(f.text)}"
        f'<a href="#{f.section}">&rarr; {html.escape(names.get(f.section, f.section))}</a></li>'
        for f in words.summarize(inputs)
    ]
    body = (
        f"<ul>{''.join(items)}</ul>"
        if items
        else "<p class=missing>No stage has written its metrics yet.</p>"
    )
    return (
        '<section id="summary"><h2>Summary: what was found</h2>'
        "<p class=note>What was wrong with the data and how the model did, in order of the pipeline; "
        "red bullets need a look. The details follow below.</p>"
        f"{body}</section>"
    )


def build_report(inputs: AuditInputs, title: str = "Dataset audit") -> str:
    """Render the audit page.

    Args:
        inputs: The loaded outputs of every stage (missing ones as ``None``).
        title: Page title.

    Returns:
        A complete, self-contained HTML document (UTF-8 text): the summary (``<section id=summary>``),
        then one ``<section id=...>`` per entry of :func:`sections_shown`, in that order.
    """
    shown = sections_shown(inputs)
    nav = "".join(
        f'<a href="#{sid}">{html.escape(name)}</a>' for sid, name in [("summary", "Summary"), *shown]
    )
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>{_warnings(inputs)}{_summary(inputs)}<nav>{nav}</nav>",
    ]
    for sid, name in shown:
        parts.append(f'<section id="{sid}"><h2>{html.escape(name)}</h2>{BUILDERS[sid](inputs)}</section>')
    parts.append("</body></html>")
    return "\n".join(parts)
