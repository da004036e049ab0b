"""Stage ``dedup``: exact and near-duplicate clusters, confirmed on thumbnails.

Reads:  ``--manifest`` (image_id, path, sha256, width, height, patient_id, label, status),
        ``--features`` (pixel_sha256, the ``dedup.hash_method`` hash, chroma, thumb, thumb_size),
        ``--quality`` (to choose each cluster's representative); the image files of the pairs
        shown on the sheet, under ``data.root``.
Writes: ``--out`` (data/interim/duplicates.parquet: one row per member of every cluster),
        ``--pairs-dir``/pairs.csv (every exact link and near candidate, confirmed or not) and
        ``--pairs-dir``/pairs.png (side by side, ``dedup.n_pairs_sheet`` pairs),
        ``--metrics`` (metrics/dedup.json).
Params: ``dedup`` (hash_method, max_distance, confirm_residual_ratio, max_colour_difference,
        align_max_shift, align_zooms, n_pairs_sheet), ``data.root`` and ``ingest.max_pixels`` / ``ingest.multi_frame`` (sheet).
"""

from __future__ import annotations

import logging

import pandas as pd
import pyarrow.parquet as pq

from pipeline.contract import QUALITY_ISSUES, flag_col, score_col
from pipeline.dedup import MANIFEST_COLUMNS, find_duplicates, pairs_for_sheet
from pipeline.io import write_csv, write_json, write_parquet, write_png
from pipeline.sheets import pairs_sheet
from pipeline.similarity import Thumbnails
from stages._cli import run, start

log = logging.getLogger("stages.dedup")


def main(argv: list[str] | None = None) -> int:
    args, params = start(
        __doc__, argv, "--manifest", "--features", "--quality", "--out", "--pairs-dir", "--metrics"
    )

    # only the columns used: the per-image tables are what grows with the number of images
    manifest = pd.read_parquet(args.manifest, columns=[*MANIFEST_COLUMNS, "path"])
    # thumbnails are read later, only for the candidate pairs (memory does not grow with the images)
    colour = ["chroma"] if "chroma" in pq.read_schema(args.features).names else []
    features = pd.read_parquet(
        args.features, columns=["image_id", "pixel_sha256", params.dedup.hash_method, *colour]
    )
    wanted = ["image_id", *(c for x in QUALITY_ISSUES for c in (score_col(x), flag_col(x)))]
    present = set(pq.read_schema(args.quality).names)
    quality = pd.read_parquet(args.quality, columns=[c for c in wanted if c in present])
    result = find_duplicates(
        manifest, features, quality, params.dedup, Thumbnails.from_parquet(args.features)
    )
    del features

    write_parquet(result.duplicates, args.out)
    write_csv(result.pairs, args.pairs_dir / "pairs.csv")
    shown = pairs_for_sheet(result.pairs, params.dedup.n_pairs_sheet)
    paths = manifest.set_index("image_id")["path"]
    sheet = pairs_sheet(shown, paths, params.data.root, params.ingest.max_pixels, params.ingest.multi_frame)
    write_png(sheet, args.pairs_dir / "pairs.png")
    write_json(result.metrics, args.metrics)
    log.info("dedup: %s", {k: v for k, v in result.metrics.items() if k.startswith("n_")})
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
