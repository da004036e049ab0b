"""Stage ``outliers``: images that do not belong in this dataset (another view, modality or body
part, non-medical pictures, inverted, rotated or mirrored images), scored relative to the dataset.

Reads:  ``--manifest`` (image_id, path, width, height, status), ``--features`` (thumbnails and
        colour measures from ingest), ``--quality`` (images without structure are not judged).
Writes: ``--out`` (data/interim/outliers.parquet: image_id, outlier_score, is_outlier_issue,
        outlier_kind, orientation, atypicality_score, orientation_score, atypicality_z,
        unjudged_orientation),
        ``--gallery`` (reports/outliers/gallery.png), ``--metrics`` (metrics/outliers.json).
Params: ``seed``, ``outliers.*``, ``data.root``, ``ingest.max_pixels``, ``ingest.multi_frame``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from pipeline import outliers as ol
from pipeline.contract import STATUS_OK, flag_col, score_col
from pipeline.inference import select_device
from pipeline.io import write_json, write_parquet, write_png
from pipeline.sheets import make_contact_sheet, read_for_sheet
from stages._cli import run, start

log = logging.getLogger("stages.outliers")


def main(argv: list[str] | None = None) -> int:
    args, params = start(
        __doc__, argv, "--manifest", "--features", "--quality", "--out", "--gallery", "--metrics"
    )
    p = params.outliers
    t0 = time.perf_counter()

    manifest = pd.read_parquet(args.manifest, columns=["image_id", "path", "width", "height", "status"])
    manifest = manifest[manifest["status"] == STATUS_OK]
    features = pd.read_parquet(args.features, columns=ol.FEATURE_COLUMNS)
    quality = pd.read_parquet(args.quality, columns=["image_id", flag_col("low_information")])
    aspect = pd.Series(
        (manifest["width"].astype(float) / manifest["height"].astype(float)).to_numpy(),
        index=manifest["image_id"].to_numpy(),
    )
    table, info = ol.find_outliers(
        features, threshold=p.threshold, robust_z_cut=p.robust_z, max_orientation_images=p.max_orientation_images,
        min_orientation_accuracy=p.min_orientation_accuracy, seed=params.seed, mirror_epochs=p.mirror_epochs,
        device=select_device(p.device, "outliers.device"), aspect=aspect,
        skip=quality.loc[quality[flag_col("low_information")].astype(bool), "image_id"].tolist(),
    )  # fmt: skip

    paths = manifest.set_index("image_id")["path"]
    images, captions = [], []
    for row in ol.worst_flagged(table, p.n_gallery).itertuples(index=False):
        pixels = read_for_sheet(
            Path(params.data.root) / paths[row.image_id], params.ingest.max_pixels, params.ingest.multi_frame
        )
        if pixels is not None:
            images.append(pixels)
            score = getattr(row, score_col("outlier"))
            captions.append(f"{row.outlier_kind} {score:.2f}\n{Path(str(row.image_id)).name}")
    metrics = ol.summarize(table, info, time.perf_counter() - t0)

    write_parquet(table, args.out)
    write_png(make_contact_sheet(images, captions, tile_px=128, n_cols=6), args.gallery)
    write_json(metrics, args.metrics)
    log.info(
        "outliers: %d of %d flagged %s", metrics["n_flagged"], metrics["n_images"], metrics["flagged_by_kind"]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
