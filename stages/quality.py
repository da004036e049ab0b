"""Stage ``quality``: score every ingested image for low-quality issues.

Reads:  the manifest (image_id, path, width, height, channels, bit_depth, status) and the
        per-image features table written by ingest (only the columns quality needs); the image
        files of the worst flagged images, under ``data.root``, for the contact sheets.
Writes: ``--out`` (data/interim/quality.parquet: image_id, <issue>_score, is_<issue>_issue, raw
        measures), ``--metrics`` (metrics/quality.json: {"n_images", "flagged": {issue: count},
        "modality": {modality, param, inferred, colour_share, n_images, warnings}, "warnings"}),
        ``--sheets``/<issue>.png (the ``quality.n_contact_sheet`` worst flagged images per issue).
Params: ``quality`` (thresholds, robust_z, size/aspect tolerance, n_contact_sheet), ``data.modality``
        (``auto``: inferred from the images; picks the per-modality checks), ``augment.domain``
        (warned about when it is a preset for the other modality), ``data.root``,
        ``ingest.max_pixels`` / ``ingest.multi_frame`` (decoding the sheet images).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline.contract import score_col
from pipeline.errors import InputError
from pipeline.io import write_json, write_parquet, write_png
from pipeline.modality import domain_mismatch, resolve_modality
from pipeline.quality import (
    CHECKS,
    FEATURE_COLUMNS,
    MANIFEST_COLUMNS,
    find_low_quality,
    summarize,
    worst_flagged,
)
from pipeline.sheets import issue_sheet
from stages._cli import run, start

log = logging.getLogger("stages.quality")


def main(argv: list[str] | None = None) -> int:
    args, params = start(__doc__, argv, "--manifest", "--features", "--out", "--sheets", "--metrics")

    manifest = pd.read_parquet(args.manifest, columns=[*MANIFEST_COLUMNS, "path"])
    manifest = manifest[manifest["status"] == "ok"]
    features = pd.read_parquet(args.features, columns=FEATURE_COLUMNS)
    if len(features) != len(manifest):
        raise InputError(
            f"{args.features}: {len(features)} rows, but {args.manifest} has {len(manifest)} ok images"
        )
    modality = resolve_modality(params.data.modality, features)
    quality = find_low_quality(features, manifest, params.quality, modality["modality"])
    del features

    write_parquet(quality, args.out)
    warnings = list(modality["warnings"])
    mismatch = domain_mismatch(params.augment.domain, modality["modality"])
    if mismatch:
        log.warning("%s", mismatch)
        warnings.append(mismatch)
    metrics = {**summarize(quality), "modality": modality, "warnings": warnings}
    write_json(metrics, args.metrics)
    root = Path(params.data.root)
    paths = manifest.set_index("image_id")["path"]
    for issue in CHECKS:
        rows = worst_flagged(quality, issue, params.quality.n_contact_sheet)
        sheet = issue_sheet(
            rows["image_id"],
            rows[score_col(issue)],
            paths,
            root,
            params.ingest.max_pixels,
            params.ingest.multi_frame,
        )
        write_png(sheet, args.sheets / f"{issue}.png")
    log.info("%d images; flagged: %s", metrics["n_images"], metrics["flagged"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
