"""Stage ``shortcuts``: does anything but anatomy predict the label? (pipeline/shortcuts.py)

Reads:  ``--processed`` (the audited splits ``label_issues.splits``: <split>.npy/.parquet,
        normalizer.json, meta.json), ``--manifest`` (labels-table extra columns, ``dicom_*``
        header fields, width, height, format, bit_depth), ``--features`` (channel mode and
        intensity statistics), the files under ``data.root`` (their sizes only).
Writes: ``--metrics`` (metrics/shortcuts.json: every attribute's score, chance, interval, lift and
        ``is_shortcut``; the class breakdown of flagged ones; notes), ``--csv``
        (reports/shortcuts.csv, one row per attribute), ``--sheets`` (reports/shortcuts/<attribute>.png:
        example images of each flagged attribute).
Params: ``seed``, ``shortcuts.*``, ``label_issues.n_folds`` / ``splits`` / ``linear_c`` (the same
        folds and auditor as the label-issue audit), ``data.root``.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import shortcuts as sc
from pipeline.contract import STATUS_OK
from pipeline.io import write_csv, write_json, write_png
from pipeline.label_issues import extract_features, make_group_folds
from pipeline.processed import ProcessedData
from pipeline.sheets import make_contact_sheet
from stages._cli import run, start

log = logging.getLogger("stages.shortcuts")


def _file_sizes(root: Path, manifest: pd.DataFrame) -> pd.Series:
    sizes = {}
    for image_id, path in zip(manifest["image_id"], manifest["path"], strict=True):
        try:
            sizes[image_id] = (root / path).stat().st_size
        except OSError:
            sizes[image_id] = np.nan
    return pd.Series(sizes, dtype=float)


def main(argv: list[str] | None = None) -> int:
    args, params = start(
        __doc__, argv, "--processed", "--manifest", "--features", "--metrics", "--csv", "--sheets"
    )
    p, li = params.shortcuts, params.label_issues
    t0 = time.perf_counter()

    processed = ProcessedData(args.processed)
    classes = processed.classes
    data = {s: processed.split(s) for s in li.splits if processed.has_split(s)}
    index = pd.concat([data[s][1].assign(split=s) for s in data], ignore_index=True)
    labels = index["label_index"].to_numpy(np.int64)
    groups = index["group_id"].astype(str).to_numpy()
    notes: list[str] = []
    rows: list[dict] = []
    breakdown: dict[str, dict] = {}
    if args.sheets.exists():
        shutil.rmtree(args.sheets)
    args.sheets.mkdir(parents=True)

    present = np.unique(labels)
    if present.size < 2 or len(pd.unique(groups)) < 2:
        notes.append(
            f"the audited splits {list(data)} hold {present.size} class(es) and {len(pd.unique(groups))} "
            "group(s): nothing can predict the label, no attribute was audited"
        )
    else:
        manifest = pd.read_parquet(args.manifest)
        manifest = manifest[manifest["status"] == STATUS_OK].set_index("image_id", drop=False)
        audited = manifest.reindex(index["image_id"]).reset_index(drop=True)
        features = pd.read_parquet(args.features, columns=sc.FEATURE_COLUMNS)
        sizes = _file_sizes(Path(params.data.root), audited)
        attributes, sources = sc.candidate_attributes(audited, features, sizes)
        if not any(v == "labels table" for v in sources.values()):
            notes.append("the labels table has no columns besides image_path, label and patient_id")
        if not any(v == "DICOM" for v in sources.values()):
            notes.append("no DICOM header fields (no DICOM files, or none with the listed tags)")
        folds = make_group_folds(labels, groups, li.n_folds, params.seed)
        rows, codes_of = sc.audit_attributes(
            attributes, sources, labels, groups, folds, len(classes), n_bins=p.n_bins,
            n_bootstrap=p.n_bootstrap, ci_level=p.ci_level, min_lift=p.min_lift, seed=params.seed,
        )  # fmt: skip
        normalizer = processed.normalizer()
        masked = [sc.mask_centre(np.asarray(data[s][0]), p.border_fraction) for s in data]
        feats = np.concatenate([extract_features(m, normalizer.apply) for m in masked])
        border_row, border_pred = sc.border_test(
            feats, labels, groups, folds, len(classes), linear_c=li.linear_c, n_bootstrap=p.n_bootstrap,
            ci_level=p.ci_level, min_lift=p.min_lift, seed=params.seed,
        )  # fmt: skip
        rows.append(border_row)
        images = np.concatenate(masked)
        for row in rows:
            if not row["is_shortcut"]:
                continue
            name = row["attribute"]
            if name == sc.BORDER_ATTRIBUTE:
                hit = np.flatnonzero(border_pred == labels)
                k = int(np.bincount(labels[hit], minlength=len(classes)).argmax()) if hit.size else 0
                pick = hit[labels[hit] == k][: p.n_examples]
                captions = [f"border: {classes[k]}"] * pick.size
            else:
                codes, names = codes_of[name]
                breakdown[name] = sc.class_breakdown(codes, names, labels, classes)
                c, k = sc.most_skewed(codes, labels, len(classes))
                pick = np.flatnonzero((codes == c) & (labels == k))[: p.n_examples]
                captions = [f"{names[c]}: {classes[k]}"] * pick.size
            sheet = make_contact_sheet([images[i] if name == sc.BORDER_ATTRIBUTE else _unmasked(data, i)
                                        for i in pick], captions, tile_px=96, n_cols=6)  # fmt: skip
            write_png(sheet, args.sheets / f"{name}.png")

    rows.sort(key=lambda r: (-r["score"], r["attribute"]))
    table = pd.DataFrame(rows, columns=sc.TABLE_COLUMNS)
    flagged = [r["attribute"] for r in rows if r["is_shortcut"]]
    metrics = {
        "metric": "balanced_accuracy",
        "n_images": len(index),
        "n_classes": len(classes),
        "splits": list(data),
        "n_folds": int(min(li.n_folds, len(pd.unique(groups)))) if len(index) else 0,
        "min_lift": p.min_lift,
        "flagged": flagged,
        "attributes": rows,
        "breakdown": breakdown,
        "notes": notes,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(metrics, args.metrics)
    write_csv(table, args.csv)
    log.info("shortcuts: %d attributes audited, flagged %s %s", len(rows), flagged, notes)
    return 0


def _unmasked(data: dict, i: int) -> np.ndarray:
    """Row ``i`` of the concatenated audited splits."""
    for x, idx in data.values():
        if i < len(idx):
            return np.asarray(x[i])
        i -= len(idx)
    raise IndexError(i)


if __name__ == "__main__":
    raise SystemExit(run(main))
