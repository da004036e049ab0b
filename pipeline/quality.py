"""Low-quality image detection from the per-image features (``pipeline.features``).

Every issue is one function in :data:`CHECKS` that maps the feature table to a score per image
in [0, 1], lower is worse; ``is_<issue>_issue = score < <issue>_threshold`` (params ``quality``).
The issue names and their order are :data:`pipeline.contract.QUALITY_ISSUES`: adding a check is one
function, one ``CHECKS`` line, one name there and one ``<issue>_threshold`` in ``QualityParams``
(``tests/test_quality.py`` fails until all four agree).

How scores are built (and why they differ from CleanVision's):

* **Relative to the dataset.** A measure ``m`` (log scale where it is a ratio) is turned into a
  one-sided robust z-score ``z = (m - median) / (1.4826 * MAD)`` over the images of this dataset,
  and ``score = 0.1 ** (max(0, -z) / robust_z)``: an image ``robust_z`` robust standard deviations on
  the bad side of the median scores exactly 0.1 (the default threshold), the median image scores 1.
  So radiographs, which are dark, or pathology slides, which are bright, are not flagged wholesale:
  only images unusual *for this dataset* are. The MAD has a floor per measure, so a dataset of
  nearly identical images does not turn tiny differences into outliers.
* **Absolute extremes are caught regardless** (near-black, burnt-out white, constant images),
  with a score that is 0.1 at the cutoff, so a dataset cannot hide them by being full of them.
* **True bit depth.** Intensities are fractions of the full scale; a dataset whose 16-bit files hold
  10/12/14-bit data is re-normalized to its stored range (``_renormalize``), so 16-bit images are
  neither all "light" (CleanVision) nor all "dark".
* **Blur at one scale.** Sharpness is compared at the pyramid level that matches the dataset's
  typical image size (64, 128 or 256 px): large images are neither reduced to 64 px, where strong
  blur vanishes (CleanVision misses it), nor compared at a finer scale than small ones.
* **Sizes with a tolerance.** Odd size / aspect ratio are distances (log ratio) from the typical
  value, normalized by ``max(log(1 + size_tolerance), robust_z * robust SD)``: a 1 px difference is
  never flagged, and a dataset with many sizes widens its own tolerance.
* **Dark is not low contrast, blur is not low information.** Contrast is a symmetric Michelson
  contrast (unchanged by scaling down or offsetting up), low information needs both a low entropy
  and little structure above noise, blur is normalized by contrast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from pipeline.contract import flag_col, require_columns, score_col
from pipeline.errors import InputError
from pipeline.params import QualityParams

log = logging.getLogger(__name__)

SCORE_AT_CUTOFF = 0.1
"""Score of an image exactly at a cutoff (robust_z SDs out, or at an absolute extreme)."""

# Absolute extremes, as fractions of the (re-normalized) full scale.
NEAR_BLACK_P99 = 0.05  # 99 % of the pixels below 5 % of full scale
NEAR_WHITE_P01 = 0.95  # 99 % of the pixels above 95 % of full scale
CONSTANT_RANGE = 2.5 / 255  # p99 - p01 below ~2.5 grey levels of 8 bit
EPS = 1e-3
# Floor of the robust SD of log-ratio measures (exposure, headroom, contrast): with robust_z = 4 an
# image must be at least exp(4 * 0.23) = 2.5x darker / less contrasted than typical to be flagged,
# even in a dataset of near-identical images.
MIN_LOG_SCALE = 0.23

# Columns of features.parquet that quality reads (memory: nothing else is loaded).
FEATURE_COLUMNS = [
    "image_id", "median", "p01", "p05", "p95", "p99", "max", "full_scale", "michelson", "entropy",
    "structure_snr", "sharpness_256", "sharpness_128", "sharpness_64", "n_channels",
    "is_gray_rgb", "channel_diff",
]  # fmt: skip
MANIFEST_COLUMNS = ["image_id", "width", "height", "channels", "bit_depth", "status"]

# Raw measures written next to the scores (for the report and for tuning thresholds).
RAW_COLUMNS = ["median", "p95", "michelson", "entropy", "structure_snr", "sharpness", "width", "height"]


def robust_z(values: pd.Series | np.ndarray, min_scale: float) -> np.ndarray:
    """``(x - median) / max(1.4826 * MAD, min_scale)``, ignoring NaN for the statistics."""
    x = np.asarray(values, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.zeros_like(x)
    med = np.median(finite)
    mad = np.median(np.abs(finite - med)) * 1.4826
    return (x - med) / max(mad, min_scale)


def z_to_score(z_low: np.ndarray, robust_z_cut: float) -> np.ndarray:
    """Score from a z-score where negative is bad: 1 at or above 0, SCORE_AT_CUTOFF at -robust_z_cut."""
    bad = np.clip(-np.nan_to_num(z_low, nan=0.0), 0.0, None)
    return SCORE_AT_CUTOFF ** (bad / robust_z_cut)


def cutoff_score(value: np.ndarray, cutoff: float) -> np.ndarray:
    """Absolute score for a measure where low is bad: SCORE_AT_CUTOFF at ``cutoff``, 1 at 10x it."""
    return np.clip(SCORE_AT_CUTOFF * np.asarray(value, np.float64) / cutoff, 0.0, 1.0)


def _renormalize(df: pd.DataFrame) -> pd.DataFrame:
    """Re-scale intensity columns of 16-bit images to the dataset's stored range (10/12/14/16 bit).

    The stored range is the smallest ``2**b - 1`` holding the 99.5th percentile of the images' raw
    maxima: one choice per dataset, so a really dark 12-bit-in-16 image stays dark.
    """
    sixteen = df["full_scale"].to_numpy() > 255
    if not sixteen.any():
        return df
    raw_max = (df.loc[sixteen, "max"] * df.loc[sixteen, "full_scale"]).quantile(0.995)
    stored = next(2**b - 1 for b in (10, 12, 14, 16) if raw_max <= 2**b - 1)
    factor = df.loc[sixteen, "full_scale"] / stored
    df = df.copy()
    for col in ("median", "p01", "p05", "p95", "p99", "max"):
        df.loc[sixteen, col] = np.minimum(df.loc[sixteen, col] * factor, 1.0)
    log.info("16-bit images re-normalized to a stored range of %d (%d images)", stored, int(sixteen.sum()))
    return df


def _blur_level(manifest: pd.DataFrame) -> int:
    """The sharpness pyramid level (64/128/256) matching the dataset's typical longest side."""
    side = float(np.median(np.maximum(manifest["width"], manifest["height"])))
    return next((lvl for lvl in (64, 128) if side <= lvl * 1.25), 256)


# --- checks: (table of features + manifest columns, params) -> score per row -------------------


def check_dark(df: pd.DataFrame, p: QualityParams) -> np.ndarray:
    """Bright end (p95) far below the dataset's; or near-black (p99 < 5 % of full scale)."""
    rel = z_to_score(robust_z(np.log(df["p95"] + EPS), MIN_LOG_SCALE), p.robust_z)
    return np.minimum(rel, cutoff_score(df["p99"], NEAR_BLACK_P99))


def check_overexposed(df: pd.DataFrame, p: QualityParams) -> np.ndarray:
    """Headroom below white (1 - median) far below the dataset's; or burnt out (p01 > 95 %)."""
    rel = z_to_score(robust_z(np.log(1.0 - df["median"] + 0.02), MIN_LOG_SCALE), p.robust_z)
    return np.minimum(rel, cutoff_score(1.0 - df["p01"], 1.0 - NEAR_WHITE_P01))


def check_blurry(df: pd.DataFrame, p: QualityParams) -> np.ndarray:
    """Contrast-normalized Laplacian energy at the dataset's scale far below the dataset's.

    Blank images (no contrast) are not scored here: blur is undefined for them (low_information).
    """
    z = robust_z(np.log(df["sharpness"] + EPS), 0.1)
    score = z_to_score(z, p.robust_z)
    return np.where(df["p99"] - df["p01"] < CONSTANT_RANGE, 1.0, score)


def check_low_information(df: pd.DataFrame, p: QualityParams) -> np.ndarray:
    """Both a low entropy and little structure above noise; or constant (p99 - p01 < 2.5/255).

    Entropy alone also drops for dark or burnt-out images, structure alone for tiny noisy images;
    a blank frame is low on both. Images flagged dark or overexposed are only flagged here when
    they are constant.
    """
    z_entropy = robust_z(df["entropy"], 0.02)
    z_structure = robust_z(np.log(df["structure_snr"] + EPS), 0.1)
    rel = z_to_score(np.maximum(z_entropy, z_structure), p.robust_z)
    # A burnt-out or black frame loses information because of its exposure: that is reported as
    # dark / overexposed, not twice. Constant images are still caught below.
    exposure_bad = (check_dark(df, p) < p.dark_threshold) | (
        check_overexposed(df, p) < p.overexposed_threshold
    )
    rel = np.where(exposure_bad, 1.0, rel)
    return np.minimum(rel, cutoff_score(df["p99"] - df["p01"], CONSTANT_RANGE))


def check_low_contrast(df: pd.DataFrame, p: QualityParams) -> np.ndarray:
    """Symmetric Michelson contrast far below the dataset's; or constant."""
    rel = z_to_score(robust_z(np.log(df["michelson"] + EPS), MIN_LOG_SCALE), p.robust_z)
    return np.minimum(rel, cutoff_score(df["p99"] - df["p01"], CONSTANT_RANGE))


def _distance_score(log_values: np.ndarray, tolerance: float, p: QualityParams) -> np.ndarray:
    """Two-sided: |log x - median| over max(log(1 + tolerance), robust_z * robust SD)."""
    med = np.median(log_values)
    spread = 1.4826 * np.median(np.abs(log_values - med)) * p.robust_z
    allowed = max(np.log1p(tolerance), spread)
    return SCORE_AT_CUTOFF ** (np.abs(log_values - med) / allowed)


def check_odd_size(df: pd.DataFrame, p: QualityParams) -> np.ndarray:
    """Image size sqrt(w * h) far from the typical size (beyond ``size_tolerance``)."""
    area = df["width"].to_numpy(np.float64) * df["height"].to_numpy(np.float64)
    return _distance_score(0.5 * np.log(np.maximum(area, 1.0)), p.size_tolerance, p)


def check_odd_aspect_ratio(df: pd.DataFrame, p: QualityParams) -> np.ndarray:
    """Aspect ratio w / h far from the typical one (beyond ``aspect_tolerance``)."""
    ratio = df["width"].to_numpy(np.float64) / np.maximum(df["height"].to_numpy(np.float64), 1.0)
    return _distance_score(np.log(np.maximum(ratio, 1e-6)), p.aspect_tolerance, p)


def check_channel_mismatch(df: pd.DataFrame, p: QualityParams) -> np.ndarray:
    """Share of the image's channel mode relative to the dataset's most common mode.

    Modes: ``gray`` (1 channel), ``gray_as_rgb`` (3 equal channels), ``rgb``. In a grayscale
    dataset an RGB image or a grayscale image stored as RGB scores its (small) share; in an RGB
    dataset a grayscale one does. A dataset evenly mixed has no mismatch.
    """
    n_ch = df["n_channels"].to_numpy()
    gray_rgb = df["is_gray_rgb"].to_numpy(bool)
    mode = np.where(n_ch == 1, "gray", np.where(gray_rgb, "gray_as_rgb", "rgb"))
    counts = pd.Series(mode).value_counts()
    share = pd.Series(mode).map(counts).to_numpy(np.float64) / counts.max()
    return np.clip(share, 0.0, 1.0)


# Clipping: the gray (luma) 99th percentile at the top of the scale (250 of 255 levels).
CLIPPED_P99 = 250 / 255


def check_overexposed_photograph(df: pd.DataFrame, p: QualityParams) -> np.ndarray:
    """Colour photographs: brighter than the dataset counts only when the image clips (p99 at the
    top of the scale); burnt out (p01 > 95 %) regardless.

    A radiograph brighter than the rest has lost contrast in the lungs; a photograph of a lighter
    skin or a paler lesion has not, unless its highlights are clipped (issue 17: six unclipped
    dermoscopy images, four of them melanomas, were excluded by the radiograph rule).
    """
    clipped = df["p99"].to_numpy() >= CLIPPED_P99
    return np.where(clipped, check_overexposed(df, p), cutoff_score(1.0 - df["p01"], 1.0 - NEAR_WHITE_P01))


MODALITY_CHECKS: dict[str, dict[str, Callable[[pd.DataFrame, QualityParams], np.ndarray]]] = {
    "gray": {},
    "colour": {"overexposed": check_overexposed_photograph},
}
"""Per ``data.modality`` (:mod:`pipeline.modality`): the checks that replace those of :data:`CHECKS`."""

# Keys: exactly pipeline.contract.QUALITY_ISSUES, in that order (tests/test_quality.py).
CHECKS: dict[str, Callable[[pd.DataFrame, QualityParams], np.ndarray]] = {
    "dark": check_dark,
    "overexposed": check_overexposed,
    "blurry": check_blurry,
    "low_information": check_low_information,
    "low_contrast": check_low_contrast,
    "odd_size": check_odd_size,
    "odd_aspect_ratio": check_odd_aspect_ratio,
    "channel_mismatch": check_channel_mismatch,
}


def threshold(params: QualityParams, issue: str) -> float:
    """The params threshold of ``issue`` (``<issue>_threshold``)."""
    return float(getattr(params, f"{issue}_threshold"))


def find_low_quality(
    features: pd.DataFrame, manifest: pd.DataFrame, params: QualityParams, modality: str = "gray"
) -> pd.DataFrame:
    """Score every ok image for every issue in :data:`CHECKS` (or its :data:`MODALITY_CHECKS` version).

    Args:
        features: features.parquet rows (at least :data:`FEATURE_COLUMNS`), one per ok image.
        manifest: The manifest (at least ``image_id, width, height``; rows whose ``status`` is not
            ``ok`` are ignored when the column exists).
        params: The ``quality`` params section.
        modality: ``gray`` or ``colour`` (:func:`pipeline.modality.resolve_modality`).

    Returns:
        One row per image of ``features`` (same order): ``image_id``, ``<issue>_score`` (float in
        [0, 1], lower is worse) and ``is_<issue>_issue`` (bool) for every issue, then the raw
        measures in :data:`RAW_COLUMNS`.

    Raises:
        InputError: If a needed column is missing.
        ValueError: If an image of ``features`` has no ok manifest row.
    """
    require_columns(features, FEATURE_COLUMNS, "features table")
    require_columns(manifest, ["image_id", "width", "height"], "manifest")
    if "status" in manifest.columns:
        manifest = manifest[manifest["status"] == "ok"]
    sizes = manifest.set_index("image_id")[["width", "height"]]
    lost = features.loc[~features["image_id"].isin(sizes.index), "image_id"]
    if len(lost):
        raise InputError(
            f"features table: {len(lost)} image_id(s) have no ok manifest row, e.g. {lost.iloc[0]!r}"
        )
    df = features.reset_index(drop=True).join(sizes, on="image_id")
    if df.empty:
        return pd.DataFrame(
            {"image_id": pd.Series(dtype="string")}
            | {c: pd.Series(dtype=float) for i in CHECKS for c in (score_col(i),)}
            | {flag_col(i): pd.Series(dtype=bool) for i in CHECKS}
            | {c: pd.Series(dtype=float) for c in RAW_COLUMNS}
        )
    df = _renormalize(df)
    level = _blur_level(df)
    df["sharpness"] = df[f"sharpness_{level}"]
    log.info("blur compared at %d px (typical longest side of %d images)", level, len(df))

    out = pd.DataFrame({"image_id": df["image_id"]})
    for issue, check in (CHECKS | MODALITY_CHECKS[modality]).items():
        score = np.clip(np.asarray(check(df, params), dtype=np.float64), 0.0, 1.0)
        out[score_col(issue)] = score
        out[flag_col(issue)] = score < threshold(params, issue)
    for col in RAW_COLUMNS:
        out[col] = df[col].to_numpy()
    return out


def summarize(quality: pd.DataFrame) -> dict:
    """``{"n_images", "flagged": {issue: count}}`` for metrics/quality.json."""
    return {
        "n_images": int(len(quality)),
        "flagged": {issue: int(quality[flag_col(issue)].sum()) for issue in CHECKS},
    }


def worst_flagged(quality: pd.DataFrame, issue: str, n: int) -> pd.DataFrame:
    """The ``n`` flagged rows with the lowest ``issue`` score (ties by image_id), for contact sheets."""
    flagged = quality[quality[flag_col(issue)]]
    return flagged.sort_values([score_col(issue), "image_id"]).head(n)
