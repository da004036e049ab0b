"""Stage ``curate``: keep/exclude decision per image and the leakage groups.

Reads:  ``--manifest`` (image_id, patient_id, status), ``--quality`` (is_<issue>_issue),
        ``--duplicates`` (cluster_id, kind, is_representative, is_label_conflict),
        ``--outliers`` (is_outlier_issue, outlier_kind; used when exclude_issues lists "outlier").
Writes: ``--out`` (data/interim/curated.parquet: image_id, included, reason, group_id for every
        ``status == ok`` image), ``--metrics`` (metrics/curate.json: counts by reason, groups).
Params: ``curate`` (exclude_issues, keep_one_per_duplicate_cluster, exclude_label_conflicts).
"""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.curate import curate, summarize
from pipeline.io import write_json, write_parquet
from stages._cli import run, start

log = logging.getLogger("stages.curate")


def main(argv: list[str] | None = None) -> int:
    args, params = start(
        __doc__,
        argv,
        "--manifest",
        "--quality",
        "--duplicates",
        "--out",
        "--metrics",
        optional=("--outliers",),
    )

    manifest = pd.read_parquet(args.manifest)
    outliers = pd.read_parquet(args.outliers) if args.outliers is not None else None
    curated = curate(
        manifest, pd.read_parquet(args.quality), pd.read_parquet(args.duplicates), params.curate, outliers
    )
    # curate() already checked that every ok image is here exactly once (nothing is lost).
    write_parquet(curated, args.out)
    metrics = summarize(curated)
    write_json(metrics, args.metrics)
    log.info(
        "curate: %d included, %d excluded %s",
        metrics["n_included"],
        metrics["n_excluded"],
        metrics["excluded_by_reason"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
