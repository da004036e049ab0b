"""Stage ``dedup``: exact and near-duplicate clusters, confirmed on thumbnails.

Reads:  ``--manifest`` (image_id, path, sha256, width, height, patient_id, label, status),
        ``--features`` (pixel_sha256, the ``dedup.hash_method`` hash, thumb, thumb_size),
        ``--quality`` (to choose each cluster's representative); the image files of the pairs
        shown on the sheet, under ``data.root``.
Writes: ``--out`` (data/interim/duplicates.parquet: one row per member of every cluster),
        ``--pairs-dir``/pairs.csv (every exact link and near candidate, confirmed or not) and
        ``--pairs-dir``/pairs.png (side by side, ``dedup.n_pairs_sheet`` pairs),
        ``--metrics`` (metrics/dedup.json).
Params: ``dedup`` (hash_method, max_distance, confirm_similarity, align_max_shift, align_zooms,
        n_pairs_sheet), ``data.root`` and ``ingest.max_pixels`` / ``ingest.multi_frame`` (sheet).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipeline.contract import QUALITY_ISSUES, flag_col, score_col
from pipeline.dedup import MANIFEST_COLUMNS, find_duplicates, pairs_for_sheet
from pipeline.io import write_csv, write_json, write_parquet, write_png
from pipeline.params import load_params
from pipeline.sheets import make_contact_sheet, read_for_sheet
from pipeline.similarity import Thumbnails
from stages._cli import run

log = logging.getLogger("stages.dedup")


def _pairs_sheet(pairs: pd.DataFrame, manifest: pd.DataFrame, params) -> object:
    paths = manifest.set_index("image_id")["path"]
    images, captions = [], []
    for row in pairs.itertuples():
        ids = (row.image_id_a, row.image_id_b)
        pair = [
            read_for_sheet(
                Path(params.data.root) / paths[x], params.ingest.max_pixels, params.ingest.multi_frame
            )
            for x in ids
        ]
        if any(p is None for p in pair):
            continue
        verdict = "dup" if row.is_confirmed else "no"
        for pixels, image_id in zip(pair, ids, strict=True):
            images.append(pixels)
            captions.append(f"{verdict} {row.similarity:.3f} d{row.distance} {Path(image_id).stem}")
    return make_contact_sheet(images, captions, tile_px=128, n_cols=6)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", required=True, type=Path)
    ap.add_argument("--features", required=True, type=Path)
    ap.add_argument("--quality", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--pairs-dir", required=True, type=Path)
    ap.add_argument("--metrics", required=True, type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)

    # only the columns used: the per-image tables are what grows with the number of images
    manifest = pd.read_parquet(args.manifest, columns=[*MANIFEST_COLUMNS, "path"])
    # thumbnails are read later, only for the candidate pairs (memory does not grow with the images)
    features = pd.read_parquet(args.features, columns=["image_id", "pixel_sha256", params.dedup.hash_method])
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
    write_png(_pairs_sheet(shown, manifest, params), args.pairs_dir / "pairs.png")
    write_json(result.metrics, args.metrics)
    log.info("dedup: %s", {k: v for k, v in result.metrics.items() if k.startswith("n_")})
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
