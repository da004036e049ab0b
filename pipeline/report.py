"""The audit report: one self-contained HTML page that a curator reads top to bottom.

Images are inlined as base64 PNG, charts are drawn with matplotlib into inline PNGs, and no
script, stylesheet or font is fetched, so the page opens offline. Every section is always
present; a section whose stage produced nothing says so instead of disappearing.

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


def _table(df: pd.DataFrame, max_rows: int = 50) -> str:
    shown = df.head(max_rows)
    more = f"<p class=note>{len(df) - max_rows} more rows not shown.</p>" if len(df) > max_rows else ""
    return shown.to_html(index=False, border=0, classes="tbl", float_format=lambda v: f"{v:.4g}") + more


def _kv(d: dict) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in d.items()
    )
    return f"<table class=tbl>{rows}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
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
    rows = [("files found", acc.get("n_files")), ("rejected at ingest", acc.get("n_rejected"))]
    rows += [(f"excluded: {r}", n) for r, n in sorted(excluded.items())]
    rows += [("train", acc.get("n_train")), ("val", acc.get("n_val")), ("test", acc.get("n_test"))]
    total = (
        (acc.get("n_rejected") or 0)
        + sum(excluded.values())
        + sum(acc.get(k) or 0 for k in ("n_train", "n_val", "n_test"))
    )
    adds_up = total == acc.get("n_files")
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
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
    return _table(counts) + _table(a.rejected, max_rows=100)


def _section_quality(a: AuditInputs) -> str:
    if a.quality_metrics is None:
        return _missing("metrics/quality.json")
    flagged = a.quality_metrics.get("flagged", {})
    out = [f"<p>{a.quality_metrics.get('n_images')} images scored. Flagged per issue:</p>", _kv(flagged)]
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
    out = [_kv(a.dedup_metrics)]
    if a.duplicates is not None and not a.duplicates.empty:
        d = a.duplicates
        flags = [c for c in ("is_cross_patient", "is_label_conflict") if c in d.columns]
        if flags:
            flagged = d[d[flags].any(axis=1)]
            out.append(f"<h3>Flagged clusters ({flagged['cluster_id'].nunique()})</h3>")
            out.append(_table(flagged.sort_values(["cluster_id", "image_id"]), max_rows=60))
    if a.dedup_sheet is not None:
        out.append("<h3>Duplicate pairs side by side</h3>")
        out.append(_img(png_data_uri(a.dedup_sheet), "duplicate pairs"))
    return "".join(out)


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
    out = []
    sm = a.split_metrics
    per_split = {k: v for k, v in sm.items() if isinstance(v, dict) and "images" in v}
    if per_split:
        rows = []
        for name, s in per_split.items():
            row = {"split": name}
            row.update({k: v for k, v in s.items() if not isinstance(v, dict)})
            rows.append(row)
        out.append(_table(pd.DataFrame(rows)))
    out.append(_kv({k: v for k, v in sm.items() if k not in per_split}))
    bal = a.split_balance
    if bal is not None and {"label", "split", "n_images"} <= set(bal.columns):
        pivot = bal.pivot_table(
            index="label", columns="split", values="n_images", aggfunc="sum", fill_value=0
        )
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
    out = ["<p>Fitted on the train split only, applied unchanged to val and test.</p>", _kv(a.normalizer)]
    if a.normalize_metrics:
        out.append(_kv(a.normalize_metrics))
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
    out.append(_kv(a.label_issue_metrics))
    if a.label_issue_sheet is not None:
        out.append(_img(png_data_uri(a.label_issue_sheet), "top-ranked label issues"))
    if a.label_issues is not None:
        out.append(_table(a.label_issues, max_rows=a.n_gallery))
    return "".join(out)


def _section_training(a: AuditInputs) -> str:
    if a.train_metrics is None:
        return _missing("metrics/train.json")
    out = [_kv(a.train_metrics)]
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
            f"{_fmt(cal.get('ece_before'))} before, {_fmt(cal.get('ece_after'))} after (predicted classes unchanged).</p>"
        )
    op = tm.get("operating_point")
    if isinstance(op, dict):
        rows = [{"split": s, **(op.get(s) or {})} for s in ("val", "test")]
        out.append(
            f"<p>Operating threshold {_fmt(op.get('threshold'))} on P({html.escape(str(op.get('positive_class')))}),"
            f" chosen on val ({html.escape(str(op.get('method')))}), applied unchanged to test:</p>"
        )
        out.append(_table(pd.DataFrame(rows)))
    return "".join(out)


def _section_test_metrics(a: AuditInputs) -> str:
    if a.test_metrics is None:
        return _missing("metrics/test.json")
    tm = a.test_metrics
    rows = []
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "pr_auc", "cohen_kappa", "mcc", "ece"):
        if isinstance(tm.get(key), dict):
            v = tm[key]
            pl = (tm.get("patient_level") or {}).get(key) or {}
            rows.append(
                {
                    "metric": key,
                    "value": v.get("value"),
                    "95% CI": f"[{_fmt(v.get('ci_low'))}, {_fmt(v.get('ci_high'))}]",
                    "patient-level": pl.get("value"),
                }
            )
    out = [
        "<p>The test split, evaluated once. Confidence intervals by bootstrap over patients.</p>",
        _table(pd.DataFrame(rows)),
    ]
    if isinstance(tm.get("per_class"), dict):
        pc = pd.DataFrame(tm["per_class"]).T.reset_index(names="class")
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
    return "<p>Rows: actual; columns: predicted.</p>" + _table(cm.reset_index())


def _section_demo_truth(a: AuditInputs) -> str:
    if a.demo_truth is None:
        return _missing("metrics/demo_truth.json")
    kinds = {k: v for k, v in a.demo_truth.items() if isinstance(v, dict) and "recall" in v}
    if not kinds:
        return "<p>No ground truth for this dataset (only the demo data has one).</p>"
    table = pd.DataFrame(kinds).T.reset_index(names="planted kind")
    return "<p>How many of the demo data's planted problems the pipeline found.</p>" + _table(table)


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
        _kv({k: v for k, v in m.items() if k != "orientation_accuracy"}),
    ]
    acc = m.get("orientation_accuracy") or {}
    if acc:
        out.append(
            "<p class=note>How often the orientation model tells each transform from upright on held-out "
            "images (transforms below <code>outliers.min_orientation_accuracy</code> are not judged): "
            + html.escape(_fmt(acc))
            + "</p>"
        )
    if a.outlier_gallery is not None and m.get("n_flagged"):
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
"""


def build_report(inputs: AuditInputs, title: str = "Dataset audit") -> str:
    """Render the audit page.

    Args:
        inputs: The loaded outputs of every stage (missing ones as ``None``).
        title: Page title.

    Returns:
        A complete, self-contained HTML document (UTF-8 text) with one ``<section id=...>`` per
        entry of :data:`SECTIONS`, in that order.
    """
    nav = "".join(f'<a href="#{sid}">{html.escape(name)}</a>' for sid, name in SECTIONS)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>{_warnings(inputs)}<nav>{nav}</nav>",
    ]
    for sid, name in SECTIONS:
        parts.append(f'<section id="{sid}"><h2>{html.escape(name)}</h2>{BUILDERS[sid](inputs)}</section>')
    parts.append("</body></html>")
    return "\n".join(parts)
