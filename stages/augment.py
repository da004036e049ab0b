"""augment stage: build the domain augmentation policy, save it, and draw a preview.

Reads:  <processed>/train.npy (+ index) via pipeline.processed.ProcessedData: channel count and image
        size for the policy, sample images for the preview.
Writes: <policy> (models/augment/policy.json): albumentations serialization; training loads it
        with pipeline.augment.load_policy (or A.from_dict). An extra "augment" key records the
        domain, channels, image size and the batch-level settings (training reads those from
        params).
        <preview> (reports/augment/preview.png): rows = train images, column 1 = original,
        then the augmented variants of epochs 0, 1, ...
Params: seed, augment.* (domain, transforms, allow_unsafe, horizontal_flip, mixup_alpha,
        cutmix_alpha, label_smoothing, n_preview_images, n_preview_variants). A domain preset made for
        the other modality than the processed images' (3 channels = colour) is logged as a warning
        and recorded in the policy's ``augment.warnings`` (the quality stage reports it too).
"""

from __future__ import annotations

import logging

from pipeline.augment import build_policy, make_preview, policy_to_dict
from pipeline.errors import InputError
from pipeline.io import write_json, write_png
from pipeline.modality import domain_mismatch
from pipeline.processed import ProcessedData
from stages._cli import run, start

logger = logging.getLogger("stages.augment")


def main(argv: list[str] | None = None) -> int:
    args, params = start(__doc__, argv, "--processed", "--policy", "--preview")
    cfg = params.augment
    images, _ = ProcessedData(args.processed).split("train")
    if images.ndim != 4:
        raise InputError(
            f"{args.processed}/train.npy: expected (N, H, W, C) images, got shape {images.shape}"
        )
    channels, image_shape = int(images.shape[3]), (int(images.shape[1]), int(images.shape[2]))

    mismatch = domain_mismatch(cfg.domain, "colour" if channels == 3 else "gray")
    if mismatch:
        logger.warning("%s", mismatch)
    policy = build_policy(cfg, channels=channels, image_shape=image_shape)
    meta = {
        "domain": cfg.domain,
        "channels": channels,
        "image_size": list(image_shape),
        "transforms": [type(t).__name__ for t in policy.transforms],
        "warnings": [mismatch] if mismatch else [],
        "batch": {
            "mixup_alpha": cfg.mixup_alpha,
            "cutmix_alpha": cfg.cutmix_alpha,
            "label_smoothing": cfg.label_smoothing,
        },
    }
    write_json(policy_to_dict(policy, meta), args.policy)
    logger.info("domain %s, %d channel(s): %s -> %s", cfg.domain, channels, meta["transforms"], args.policy)

    sheet = make_preview(images, policy, params.seed, cfg.n_preview_images, cfg.n_preview_variants)
    write_png(sheet, args.preview)
    logger.info(
        "preview of %d image(s) x %d variant(s) -> %s",
        min(cfg.n_preview_images, len(images)),
        cfg.n_preview_variants,
        args.preview,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
