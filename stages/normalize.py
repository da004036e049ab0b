"""Stage ``normalize``: fixed-size NHWC arrays per split and a normalizer fitted on train only.

Reads:  ``--manifest``, ``--curated``, ``--splits`` (data/interim/*.parquet), ``--features``
        (data/interim/features.parquet: max, full_scale; the 16-bit stored range), the image files
        under ``data.root``.
Writes: ``--out`` (data/processed/): {train,val,test}.npy (uint8/uint16, N x H x W x C),
        {train,val,test}.parquet (image_id, label, patient_id, group_id, label_index), meta.json,
        normalizer.json; ``--metrics`` (metrics/normalize.json).
Params: ``normalize`` (image_size, aspect, mode, percentile_range, keep_uint16, channels),
        ``train.device`` (``image_size: auto`` is larger when training runs on CUDA), ``data.root``,
        ``ingest.max_pixels`` / ``ingest.multi_frame`` (decoding), ``executor``.
"""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.io import write_json
from pipeline.normalize import build_processed
from stages._cli import run, start

log = logging.getLogger("stages.normalize")


def _training_on_cuda(requested: str) -> bool:
    """Whether train will run on CUDA (only asked for ``image_size: auto``; imports torch)."""
    from pipeline.inference import select_device

    return select_device(requested).type == "cuda"


def main(argv: list[str] | None = None) -> int:
    args, params = start(
        __doc__, argv, "--manifest", "--curated", "--splits", "--out", "--metrics", optional=("--features",)
    )

    manifest = pd.read_parquet(args.manifest)
    features = None
    if args.features is not None:
        features = pd.read_parquet(args.features, columns=["image_id", "max", "full_scale"])
    metrics = build_processed(
        manifest,
        pd.read_parquet(args.curated),
        pd.read_parquet(args.splits),
        root=params.data.root,
        out_dir=args.out,
        params=params.normalize,
        executor=params.executor,
        max_pixels=params.ingest.max_pixels,
        multi_frame=params.ingest.multi_frame,
        features=features,
        on_cuda=params.normalize.image_size == "auto" and _training_on_cuda(params.train.device),
    )
    write_json(metrics, args.metrics)
    log.info(
        "normalize: %s images, normalizer %s",
        {s: m["n_images"] for s, m in metrics["splits"].items()},
        metrics["mode"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
