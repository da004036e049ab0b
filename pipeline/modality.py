"""The data's modality (``data.modality``), inferred from the images when ``auto``, and the checks
that depend on it (issue 17 items 8 and 10).

Defaults written for radiographs misfire on colour photographs: a dermoscopy image brighter than
the rest is not overexposed unless it clips, and the ``chest_xray`` augmentation preset (no flips,
no colour jitter reasoning for gray film) is the wrong policy for RGB lesions. One mechanism
decides which kind of data this is:

* ``gray``: radiology-like images (X-ray, CT, MR): one channel, or three equal ones;
* ``colour``: photographs (dermoscopy, fundus, histopathology, endoscopy): real colour.

``auto`` (default) infers it from the features ingest measured: ``colour`` when most readable
images have real colour (``n_channels == 3`` and not ``is_gray_rgb``), else ``gray``. The stage
logs what was inferred and from what, writes it in ``metrics/quality.json`` (``modality``) and the
report shows it; a ``data.modality`` that disagrees with the images and an ``augment.domain`` made
for the other modality are warnings (log, metrics, report).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

MODALITIES = ("gray", "colour")
DOMAIN_MODALITY = {
    "chest_xray": "gray",
    "dermoscopy": "colour",
    "histopathology": "colour",
    "fundus": "colour",
    "generic": None,
}
"""The modality each ``augment.domain`` preset is written for (``generic``: any)."""
COLOUR_MAJORITY = 0.5
"""Share of readable images with real colour above which ``auto`` infers ``colour``."""


def colour_share(features: pd.DataFrame) -> float:
    """Share of the rows of a features table that have real colour (0.0 for an empty table).

    Args:
        features: features.parquet rows with ``n_channels`` and ``is_gray_rgb``.
    """
    if len(features) == 0:
        return 0.0
    colour = (features["n_channels"].to_numpy() == 3) & ~features["is_gray_rgb"].to_numpy(bool)
    return float(np.mean(colour))


def resolve_modality(param: str, features: pd.DataFrame) -> dict:
    """The modality the pipeline uses, how it was decided, and any disagreement with the images.

    Args:
        param: ``data.modality`` (``auto``, ``gray`` or ``colour``).
        features: features.parquet rows (``n_channels``, ``is_gray_rgb``) of the readable images.

    Returns:
        ``{"modality", "param", "inferred", "colour_share", "n_images", "warnings": [str]}``;
        ``modality`` is ``inferred`` when ``param`` is ``auto``, else ``param``.
    """
    share = colour_share(features)
    inferred = "colour" if share > COLOUR_MAJORITY else "gray"
    modality = inferred if param == "auto" else param
    warnings = []
    if param != "auto" and param != inferred and len(features):
        warnings.append(
            f"data.modality is {param!r} but {share:.0%} of the {len(features)} readable images have real colour "
            f"(they look {inferred!r}); the {param!r} quality defaults are used as set"
        )
    how = "set by data.modality" if param != "auto" else "inferred (data.modality: auto)"
    log.info(
        "modality %s, %s: %.0f%% of %d readable images have real colour",
        modality,
        how,
        100 * share,
        len(features),
    )
    for w in warnings:
        log.warning("%s", w)
    return {
        "modality": modality,
        "param": param,
        "inferred": inferred,
        "colour_share": round(share, 4),
        "n_images": int(len(features)),
        "warnings": warnings,
    }


def domain_mismatch(domain: str, modality: str) -> str | None:
    """A warning when the ``augment.domain`` preset is written for another modality, else None.

    Args:
        domain: ``augment.domain``.
        modality: The data's modality (:func:`resolve_modality`, or ``colour`` / ``gray`` from the
            processed images' channels).
    """
    meant = DOMAIN_MODALITY.get(domain)
    if meant is None or meant == modality:
        return None
    fits = sorted(d for d, m in DOMAIN_MODALITY.items() if m == modality) + ["generic"]
    return (
        f"augment.domain is {domain!r}, a preset for {meant} images, but the data is {modality}: its "
        f"transforms and safety rules do not fit; set augment.domain to one of {fits} (README: a new modality)"
    )
