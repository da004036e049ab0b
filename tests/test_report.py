"""The audit report parses, contains every section and inlines every image."""

from __future__ import annotations

import html as html_module
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from pipeline.report import SECTIONS, AuditInputs, build_report

ALL_SECTIONS = ["summary", *(sid for sid, _ in SECTIONS)]


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.img_srcs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "img":
            self.img_srcs.append(a.get("src", ""))
        for key in ("src", "href"):
            v = a.get(key)
            if v and not (v.startswith("data:") or v.startswith("#")):
                self.external.append(v)


def _full_inputs() -> AuditInputs:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    return AuditInputs(
        ingest_metrics={"n_files": 10, "n_ok": 8, "n_rejected": 2, "rejected_by_reason": {"truncated": 2}},
        rejected=pd.DataFrame({"path": ["a.png", "b.jpg"], "reason": ["truncated", "truncated"]}),
        accounting={
            "n_files": 10,
            "n_rejected": 2,
            "n_excluded": {"exact_duplicate": 1},
            "n_train": 5,
            "n_val": 1,
            "n_test": 1,
        },
        quality_metrics={"n_images": 8, "flagged": {"dark": 1, "blurry": 0}},
        quality_sheets={"dark": img},
        dedup_metrics={"n_exact": 1, "n_near": 0, "n_clusters": 1},
        duplicates=pd.DataFrame(
            {
                "image_id": ["x", "y"],
                "cluster_id": [0, 0],
                "is_cross_patient": [True, True],
                "is_label_conflict": [False, False],
            }
        ),
        dedup_sheet=img,
        curated=pd.DataFrame(
            {
                "image_id": ["x", "y"],
                "included": [True, False],
                "reason": ["", "exact_duplicate"],
                "group_id": ["g0", "g0"],
            }
        ),
        manifest=pd.DataFrame({"image_id": ["x", "y"], "patient_id": ["p1", "p2"]}),
        split_metrics={"train": {"images": 5, "patients": 3}, "leaking_groups": 0},
        split_balance=pd.DataFrame(
            {"label": ["a", "b", "a"], "split": ["train", "train", "test"], "n_images": [3, 2, 1]}
        ),
        normalizer={"mode": "standardize", "mean": [0.4], "std": [0.2]},
        augment_preview=img,
        label_issue_metrics={"n_audited": 6, "n_issues": 1},
        label_issues=pd.DataFrame(
            {"image_id": ["x", "y"], "split": ["train", "val"], "given_label": ["a", "b"],
             "suggested_label": ["b", "a"], "label_quality": [0.001, 0.2], "rank": [1, 2],
             "reason": ["out_of_fold", "out_of_fold"]}
        ),
        label_issue_sheet=img,
        train_metrics={"best_epoch": 2},
        curves=pd.DataFrame(
            {
                "step": [0, 1],
                "train_loss": [1.0, 0.5],
                "val_loss": [1.1, 0.7],
                "val_balanced_accuracy": [0.5, 0.7],
            }
        ),
        test_metrics={
            "accuracy": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9},
            "balanced_accuracy": {"value": 0.75, "ci_low": 0.6, "ci_high": 0.85},
            "per_class": {"a": {"sensitivity": 0.9, "specificity": 0.8}},
            "patient_level": {"accuracy": {"value": 0.85, "ci_low": 0.7, "ci_high": 0.95}},
            "calibration": {
                "method": "temperature_scaling",
                "temperature": 1.7,
                "ece_before": 0.11,
                "ece_after": 0.04,
            },
            "operating_point": {
                "positive_class": "b",
                "method": "youden",
                "threshold": 0.42,
                "val": {"sensitivity": 0.9},
                "test": {"sensitivity": 0.85},
            },
        },  # fmt: skip
        confusion=pd.DataFrame({"actual": ["a", "b", "a"], "predicted": ["a", "b", "b"]}),
        roc=pd.DataFrame({"fpr": [0, 0.5, 1], "tpr": [0, 0.8, 1], "class": ["a", "a", "a"]}),
        demo_truth={"dark": {"precision": 1.0, "recall": 1.0, "n_planted": 1, "n_flagged": 1}},
        outlier_metrics={"n_images": 3, "n_flagged": 1, "flagged_by_kind": {"rotated": 1}, "orientation_accuracy": {"rot90": 1.0}},
        outliers=pd.DataFrame(
            {"image_id": ["a.png", "b.png"], "outlier_score": [0.01, 0.9], "is_outlier_issue": [True, False],
             "outlier_kind": ["rotated", ""]}
        ),
        outlier_gallery=img,
        shortcut_metrics={
            "n_images": 2, "n_classes": 2, "n_folds": 2, "splits": ["train"], "min_lift": 0.1, "flagged": ["site"],
            "attributes": [{"attribute": "site", "score": 0.9, "chance": 0.5, "is_shortcut": True}],
            "breakdown": {"site": {"a": {"neg": 5, "pos": 1}, "b": {"pos": 4}}}, "notes": [],
        },
        shortcut_sheets={"site": img},
        dedup_pairs=pd.DataFrame(
            {"image_id_a": ["x", "site_b/p0417_03_lateral_view_extra_long_file_name_without_breaks.png"],
             "image_id_b": ["y", "z"], "link": ["near", "near"], "distance": [6, 10], "similarity": [0.98, 0.91],
             "is_confirmed": [True, False], "patient_id_a": ["p1", "p3"], "patient_id_b": ["p2", "p3"],
             "label_a": ["a", "b"], "label_b": ["a", "a"]}
        ),
        thumbnails={
            "x": img, "y": img[:, ::-1], "z": img[::2],
            "site_b/p0417_03_lateral_view_extra_long_file_name_without_breaks.png": img.transpose(1, 0, 2),
        },
        subgroups={
            "metrics": ["balanced_accuracy"], "notes": [], "columns": ["site"], "missing_columns": [],
            "groups": [
                {"column": "site", "group": "a", "n_images": 30, "n_patients": 10, "too_small": False,
                 "balanced_accuracy": {"value": 0.6, "ci_low": 0.5, "ci_high": 0.7, "gap": -0.2}},
                {"column": "site", "group": "b", "n_images": 3, "n_patients": 1, "too_small": True},
            ],
            "worst_group": {"column": "site", "group": "a", "balanced_accuracy": {"value": 0.6, "ci_low": 0.5,
                            "ci_high": 0.7, "gap": -0.2}},
        },
    )  # fmt: skip


def test_report_has_every_section_and_inline_images():
    page = build_report(_full_inputs())
    parser = _Collector()
    parser.feed(page)
    assert parser.sections == ALL_SECTIONS
    assert parser.external == [], "the page must not reference anything outside itself"
    # quality sheet, dedup sheet, split chart, preview, label issues sheet, 2 curves, ROC
    assert len(parser.img_srcs) >= 8
    assert all(src.startswith("data:image/png;base64,") for src in parser.img_srcs)
    assert "Nothing to show" not in page
    assert "adds up" in page and "DOES NOT ADD UP" not in page
    assert "T = 1.7" in page and "Operating threshold 0.42" in page


def test_empty_inputs_say_so_in_every_section():
    page = build_report(AuditInputs())
    parser = _Collector()
    parser.feed(page)
    assert parser.sections == ALL_SECTIONS
    assert page.count("Nothing to show") == len(SECTIONS)


def test_accounting_mismatch_is_visible():
    inputs = _full_inputs()
    inputs.accounting = dict(inputs.accounting, n_files=11)
    assert "DOES NOT ADD UP" in build_report(inputs)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    import cv2

    page = tmp_path / "audit.html"
    page.write_text(build_report(_full_inputs()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        page.as_uri(),
    ]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    img = cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)
    assert img is not None and img.shape[0] > 100
    # Not blank: text and pictures make the screenshot far from uniform.
    assert img.std() > 10
    assert (img < 128).mean() > 0.005


@pytest.mark.parametrize("label", ["$x^$", "a$b", "$\\alpha$ <b>"])
def test_labels_are_shown_literally(label):
    """Issue 14 item 8: a label is text, never matplotlib math or HTML."""
    inputs = _full_inputs()
    inputs.split_balance = inputs.split_balance.replace({"label": {"a": label}})
    inputs.roc = inputs.roc.assign(**{"class": label})
    inputs.confusion = inputs.confusion.replace({"actual": {"a": label}, "predicted": {"a": label}})
    page = build_report(inputs)
    if "<" in label:  # the label's own markup is escaped, never rendered
        assert label not in page
    parser = _Collector()
    parser.feed(page)
    assert len(parser.img_srcs) >= 8


def test_images_without_patient_id_are_warned_about_at_the_top():
    inputs = _full_inputs()
    assert "leakage control is not possible" not in build_report(inputs)
    inputs.ingest_metrics = dict(inputs.ingest_metrics, n_own_patient=3)
    page = build_report(inputs)
    warning = page.index("leakage control is not possible")
    assert warning < page.index("<nav>") and "3 image(s) have no patient id" in page


# ---- the page as a person sees it: laid out by a real browser ---------------------------------

# Runs in the rendered page: every check a reader would make by eye, written into the DOM as JSON.
_LAYOUT_CHECK = """
<script>
window.addEventListener('load', () => {
  const r = {summary: [], broken_links: [], caption_overflow: [], overlapping: [], empty_sections: [],
             sections: [], nav: []};
  const box = (e) => e.getBoundingClientRect();
  document.querySelectorAll('#summary li').forEach((li) => {
    const a = li.querySelector('a[href^="#"]');
    r.summary.push(li.textContent);
    if (!a || !document.getElementById(a.getAttribute('href').slice(1))) r.broken_links.push(li.textContent);
  });
  document.querySelectorAll('nav a').forEach((a) => {
    r.nav.push(a.getAttribute('href').slice(1));
    if (!document.getElementById(a.getAttribute('href').slice(1))) r.broken_links.push(a.textContent);
  });
  const figs = [...document.querySelectorAll('figure')];
  r.n_figures = figs.length;
  figs.forEach((f) => {
    const fb = box(f), cap = f.querySelector('figcaption');
    if (!cap) return;
    const cb = box(cap);
    // the caption lies within its picture's box, and its text is not cut or scrolled away
    if (cb.left < fb.left - 0.5 || cb.right > fb.right + 0.5 || cap.scrollWidth > cap.clientWidth + 1
        || cb.width === 0 || cb.height === 0)
      r.caption_overflow.push(cap.textContent);
  });
  for (let i = 0; i < figs.length; i++) for (let j = i + 1; j < figs.length; j++) {
    const a = box(figs[i]), b = box(figs[j]);
    if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5)
      r.overlapping.push([figs[i].textContent, figs[j].textContent]);
  }
  document.querySelectorAll('section').forEach((s) => {
    r.sections.push(s.id);
    const h = s.querySelector('h2');
    const text = s.textContent.replace(h ? h.textContent : '', '').trim();
    if (box(s).height - (h ? box(h).height : 0) < 15 || (text.length < 20 && !s.querySelector('img')))
      r.empty_sections.push(s.id);
  });
  const out = document.createElement('pre');
  out.id = 'layout-check';
  out.textContent = JSON.stringify(r);
  document.body.appendChild(out);
});
</script>
"""


def _render_and_check(page: str, tmp_path, extra_css: str = "") -> dict:
    """Lay the page out in headless Chromium (1200 px wide) and return what :data:`_LAYOUT_CHECK` saw."""
    import json
    import re

    html_path = tmp_path / "audit.html"
    html_path.write_text(
        page.replace("</style>", extra_css + "</style>").replace("</body>", _LAYOUT_CHECK + "</body>")
    )
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000", "--virtual-time-budget=10000",
        "--dump-dom", html_path.as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(cmd, check=True, timeout=120, capture_output=True, text=True).stdout
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', dom, re.S)
    assert found, "the layout check did not run"
    return json.loads(html_module.unescape(found.group(1)))


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed")
def test_page_as_a_person_sees_it(tmp_path):
    """Issue 17 item 13: summary first, every caption inside its picture, nothing overlaps, no empty section."""
    seen = _render_and_check(build_report(_full_inputs()), tmp_path)
    assert seen["sections"] == ALL_SECTIONS
    assert any("2 of 10 files could not be used" in s for s in seen["summary"])
    assert any("1 likely label error" in s for s in seen["summary"])
    assert any("site" in s and "predicted from" in s for s in seen["summary"])  # the shortcut warning
    assert any("test balanced accuracy is 0.750 [0.600, 0.850]" in s for s in seen["summary"])
    assert seen["broken_links"] == []
    assert seen["caption_overflow"] == [] and seen["overlapping"] == []
    assert seen["empty_sections"] == []
    assert seen["n_figures"] == 2 * 2 + 2  # 2 duplicate pairs + 2 label issues were measured
    assert seen["nav"][0] == "summary"


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed")
def test_layout_check_sees_a_caption_that_spills(tmp_path):
    """The check above can fail: a caption kept on one line runs past its picture and is reported."""
    css = "figure.thumb figcaption{white-space:nowrap;overflow-wrap:normal;overflow:visible}"
    seen = _render_and_check(build_report(_full_inputs()), tmp_path, extra_css=css)
    assert any("extra_long_file_name" in c for c in seen["caption_overflow"])


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed")
def test_real_data_page_has_no_demo_truth_and_no_empty_section(tmp_path):
    """Real data (data.truth null) with optional stages missing: no ground-truth section or link, every
    section still says something."""
    inputs = _full_inputs()
    inputs.has_truth = False
    inputs.demo_truth = {"available": False}
    inputs.shortcut_metrics = inputs.shortcut_sheets = None
    inputs.shortcut_sheets = {}
    inputs.subgroups = inputs.outlier_metrics = inputs.outliers = inputs.dedup_pairs = None
    inputs.thumbnails = {}
    seen = _render_and_check(build_report(inputs), tmp_path)
    assert "demo_truth" not in seen["sections"] and "demo_truth" not in seen["nav"]
    assert seen["sections"] == [s for s in ALL_SECTIONS if s != "demo_truth"]
    assert seen["empty_sections"] == [] and seen["broken_links"] == []
    assert seen["caption_overflow"] == [] and seen["overlapping"] == []


def _section(page: str, sid: str) -> str:
    start = page.index(f'<section id="{sid}">')
    return page[start : page.index("</section>", start)]


def test_summary_says_what_was_wrong_in_sentences_with_counts():
    """Issue 17 item 11: counts in sentences, each linking to its section, warnings of other stages included."""
    inputs = _full_inputs()
    inputs.dedup_metrics = {"n_exact": 3, "n_near": 64, "n_clusters": 40, "n_cross_patient_clusters": 3,
                            "n_label_conflict_clusters": 0}  # fmt: skip
    inputs.label_issue_metrics = {"n_audited": 900, "n_issues": 65, "n_dropped": 0,
                                  "warnings": ["out-of-fold balanced accuracy 0.52 is near chance"]}  # fmt: skip
    summary = _section(build_report(inputs), "summary")
    for sentence, target in [
        ("2 of 10 files could not be used: 2 truncated.", "rejected"),
        ("3 exact duplicates and 64 near-duplicates in 40 clusters", "duplicates"),
        ("3 image clusters filed under two or more patient ids", "duplicates"),
        ("65 likely label errors among 900 audited images", "label_issues"),
        ("Label audit: out-of-fold balanced accuracy 0.52 is near chance.", "label_issues"),
        ("1 image may not belong to this dataset (1 rotated)", "outliers"),
        ("Worst subgroup: site = a, balanced accuracy 0.600 [0.500, 0.700], 0.200 below", "subgroups"),
    ]:
        item = summary[summary.index(sentence) :]
        assert item.index(f'href="#{target}"') < item.index("</li>"), sentence
    assert "conflicting labels" not in summary  # a zero count is not a finding


def test_numbers_are_explained_not_dumped():
    """Issue 17 item 12: no NaN, no dict text, the id shown once when it is the path, ECE explained."""
    inputs = _full_inputs()
    inputs.rejected = pd.DataFrame({"image_id": ["a.png"], "path": ["a.png"], "reason": ["truncated"]})
    inputs.demo_truth = {"dark": {"precision": None, "recall": 1.0, "n_planted": 0, "n_flagged": 0},
                         "flipped_label": {"precision": 0.75, "recall": 0.7, "recall_audited": 0.85},
                         "outlier:mirrored": {"n_planted": 10, "outlier_kind": "mirrored", "precision": None,
                                              "recall": 0.0},
                         "shortcut": {"precision": 1.0, "recall": 1.0, "flagged": ["site", "border_only"]}}  # fmt: skip
    inputs.split_metrics = {"splits": {"train": {"images": 5, "patients": 3, "class_counts": {"a": 3, "b": 2},
                                                 "class_proportions": {"a": 0.6, "b": 0.4}}},
                            "max_abs_deviation": 0.01, "leaking_groups": 0}  # fmt: skip
    page = build_report(inputs)
    assert "NaN" not in page and "nan<" not in page
    assert "images: 5" not in page and "a: 3, b: 2" not in page  # no dict printed as run-on text
    rejected = _section(page, "rejected")
    assert rejected.count("a.png") == 1 and "the file ends early" in rejected
    assert "3 (60.0%)" in _section(page, "split")
    assert "expected calibration error" in _section(page, "test_metrics")
    assert "recall over the planted flips" in _section(page, "demo_truth")
    assert ">None<" not in _section(page, "demo_truth")


def test_label_issue_pictures_follow_the_rank():
    inputs = _full_inputs()
    inputs.label_issues = inputs.label_issues.iloc[::-1]  # the file's row order must not matter
    section = _section(build_report(inputs), "label_issues")
    assert section.index("#1") < section.index("#2")
    first = section[section.index("#1") : section.index("#2")]
    assert 'title="x"' in first and "given <b>a</b>" in first and "label quality 0.00" in first
