"""ingest stage: scan the data root, validate every file, hash it, decode it once, measure it.

Reads:  data.root (the images) and data.labels (CSV image_path,label,patient_id; null = a
        class-per-folder tree). A bad labels table stops the stage naming the file and row; a
        bad image never does (it is rejected with a reason).
Writes: <manifest> (data/interim/manifest.parquet): one row per file found (MANIFEST_COLUMNS +
        the labels table's extra columns), status ok|rejected, reason.
        <features> (data/interim/features.parquet): image_id + pipeline.features fields, ok rows.
        <rejected> (reports/ingest/rejected.csv): image_id, path, reason, detail.
        <metrics> (metrics/ingest.json): n_files, n_ok, n_rejected, rejected_by_reason,
        n_own_patient (readable images without a patient id, each made its own patient).
Params: data.root, data.labels, ingest.* (extensions, max_pixels, max_file_mb, multi_frame,
        classes, max_seconds_per_file, missing_patient_id), executor.* (kind, n_workers,
        chunk_size, address), dedup.hash_method (the one perceptual hash computed).
Stops (one ``error:`` line) when git would commit the data root or the labels table (inside the
project's git work tree, neither git-ignored nor DVC-tracked: pipeline.workspace), when no image is
readable or when the readable ones hold fewer than two classes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import InputError
from pipeline.ingest import ingest
from pipeline.io import write_csv, write_json, write_parquet
from pipeline.labels import check_two_classes
from pipeline.workspace import check_data_stays_out_of_git
from stages._cli import run, start

logger = logging.getLogger("stages.ingest")


def main(argv: list[str] | None = None) -> int:
    args, params = start(__doc__, argv, "--manifest", "--features", "--rejected", "--metrics")
    check_data_stays_out_of_git(params.data.root, params.data.labels)
    # features stream to their file as images are measured (never whole in memory)
    result = ingest(
        params.data.root,
        params.data.labels,
        params.ingest,
        params.executor,
        hashes=(params.dedup.hash_method,),
        features_out=args.features,
    )
    if result.metrics["n_ok"] == 0:
        Path(args.features).unlink(missing_ok=True)
        reasons = {k: v for k, v in result.metrics["rejected_by_reason"].items() if v}
        raise InputError(
            f"{params.data.root}: no readable image ({result.metrics['n_files']} file(s) found, rejected: "
            f"{reasons}); ingest.extensions = {params.ingest.extensions}"
        )
    ok = result.manifest["status"] == "ok"
    try:
        check_two_classes(
            result.manifest.loc[ok, "label"].value_counts().to_dict(),
            params.data.labels or f"{params.data.root} (class folders)",
            "readable images",
        )
    except ValueError:
        Path(args.features).unlink(missing_ok=True)
        raise
    # accounting was checked inside ingest() (before it committed the features file); write only
    # complete, consistent outputs
    write_parquet(result.manifest, args.manifest)
    write_csv(result.rejected, args.rejected)
    write_json(result.metrics, args.metrics)
    m = result.metrics
    logger.info("%d files: %d ok, %d rejected -> %s", m["n_files"], m["n_ok"], m["n_rejected"], args.manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
