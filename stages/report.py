"""Stage `report`: one self-contained HTML audit page.

Reads: the outputs of every earlier stage (metrics/*.json, data/interim/*.parquet,
reports/**.png|csv, data/processed/normalizer.json, plots/*.csv, the dvclive curves), and the
images of the duplicate pairs and label issues it shows (from the data root). Missing inputs are shown
as "nothing to show" sections rather than failing.
Writes: reports/audit.html.
Params: report.n_gallery; data.root, data.truth (no ground-truth section without one),
ingest.max_pixels and ingest.multi_frame (decoding the pictures).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.dedup import pairs_for_sheet
from pipeline.io import read_json, write_text
from pipeline.report import AuditInputs, build_report
from pipeline.sheets import read_thumbnails
from stages._cli import run, start

log = logging.getLogger("stages.report")


def _json(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def _table(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    sep = "\t" if path.suffix == ".tsv" else ","
    return pd.read_csv(path, sep=sep)


def _png(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _curves(live_dir: Path) -> pd.DataFrame | None:
    """Join dvclive's per-metric TSV files (dvclive/plots/metrics/**.tsv) on the step column."""
    files = sorted((live_dir / "plots" / "metrics").rglob("*.tsv")) if live_dir.is_dir() else []
    frames = []
    for f in files:
        df = pd.read_csv(f, sep="\t")
        name = f.relative_to(live_dir / "plots" / "metrics").with_suffix("").as_posix().replace("/", "_")
        value_col = [c for c in df.columns if c not in ("step", "timestamp")][-1]
        frames.append(df[["step", value_col]].rename(columns={value_col: name}).set_index("step"))
    return pd.concat(frames, axis=1).reset_index() if frames else None


def _pairs_shown(pairs_csv: Path, n: int) -> pd.DataFrame | None:
    """The candidate pairs the page shows side by side (the same choice as ``reports/dedup/pairs.png``)."""
    pairs = _table(pairs_csv)
    return None if pairs is None else pairs_for_sheet(pairs, n).reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    args, params = start(
        __doc__, argv, "--metrics", "--reports", "--interim", "--processed", "--plots", "--live", "--out"
    )
    m, r, i = args.metrics, args.reports, args.interim
    n_gallery = params.report.n_gallery
    manifest = _table(i / "manifest.parquet")
    label_issues = _table(r / "label_issues.csv")
    dedup_pairs = _pairs_shown(r / "dedup" / "pairs.csv", n_gallery)
    # pictures of what the page shows as rows: duplicate pairs and the top label issues
    shown_ids = [] if dedup_pairs is None else [*dedup_pairs["image_id_a"], *dedup_pairs["image_id_b"]]
    if label_issues is not None and not label_issues.empty:
        shown_ids += list(label_issues.sort_values("rank")["image_id"].head(n_gallery))
    paths = {} if manifest is None else dict(zip(manifest["image_id"], manifest["path"], strict=True))
    thumbnails = read_thumbnails(
        shown_ids, paths, params.data.root, params.ingest.max_pixels, params.ingest.multi_frame
    )
    quality_dir = r / "quality"
    sheets = {p.stem: _png(p) for p in sorted(quality_dir.glob("*.png"))} if quality_dir.is_dir() else {}
    inputs = AuditInputs(
        ingest_metrics=_json(m / "ingest.json"),
        rejected=_table(r / "ingest" / "rejected.csv"),
        accounting=_json(m / "accounting.json"),
        final_states=_table(i / "final_states.parquet"),
        quality_metrics=_json(m / "quality.json"),
        quality_sheets={k: v for k, v in sheets.items() if v is not None},
        dedup_metrics=_json(m / "dedup.json"),
        duplicates=_table(i / "duplicates.parquet"),
        dedup_sheet=_png(r / "dedup" / "pairs.png"),
        curated=_table(i / "curated.parquet"),
        manifest=manifest,
        split_metrics=_json(m / "split.json"),
        split_balance=_table(args.plots / "split_balance.csv"),
        normalizer=_json(args.processed / "normalizer.json"),
        normalize_metrics=_json(m / "normalize.json"),
        augment_preview=_png(r / "augment" / "preview.png"),
        label_issue_metrics=_json(m / "label_issues.json"),
        label_issues=label_issues,
        label_issue_sheet=_png(r / "label_issues" / "top.png"),
        train_metrics=_json(m / "train.json"),
        curves=_curves(args.live),
        test_metrics=_json(m / "test.json"),
        confusion=_table(args.plots / "confusion.csv"),
        roc=_table(args.plots / "roc.csv"),
        demo_truth=_json(m / "demo_truth.json"),
        outlier_metrics=_json(m / "outliers.json"),
        outliers=_table(i / "outliers.parquet"),
        outlier_gallery=_png(r / "outliers" / "gallery.png"),
        shortcut_metrics=_json(m / "shortcuts.json"),
        shortcut_sheets={
            p.stem: v for p in sorted((r / "shortcuts").glob("*.png")) if (v := _png(p)) is not None
        },
        subgroups=_json(m / "subgroups.json"),
        dedup_pairs=dedup_pairs,
        thumbnails=thumbnails,
        has_truth=params.data.truth is not None,
        n_gallery=n_gallery,
    )
    page = build_report(inputs)
    write_text(page, args.out)
    log.info("wrote %s (%.1f kB)", args.out, len(page) / 1024)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
