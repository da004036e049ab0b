"""Per-image features, computed once per image in the ingest decode pass (issue 9: one decode per run).

:func:`compute_features` turns decoded pixels into one flat dict of scalars, strings and bytes.
Ingest writes one row per ``status == "ok"`` image to ``data/interim/features.parquet`` (keyed by
``image_id``); ``quality`` and ``dedup`` read only that table, never the images.

How it stays fast: the only full-resolution work is the pixel hash and one ``cv2.resize``
(``INTER_AREA``) to a working copy whose longest side is at most :data:`WORK_PX` (never upscaled).
Every other measure runs on that copy, which also makes the blur measures comparable across image
sizes (CleanVision's blur score depends on resolution, so strong blur on large images is missed).

Intensities are measured at the true bit depth: a ``bit_depth``-bit image is divided by its full
scale ``2**bit_depth - 1``, so 16-bit images do not all look "light" (they do in CleanVision,
which squeezes them through PIL's 8-bit conversion). ``max`` and ``stored_bits`` let a caller
re-normalize a whole dataset whose 16-bit files hold 10/12/14-bit data (all statistics below marked
*linear* scale exactly with that).

Fields (the contract with ``quality`` and ``dedup``; column names of features.parquet)
------------------------------------------------------------------------------------
Intensity (gray = ITU-R 601 luma for RGB; values in [0, 1] of the full scale; *linear*):
    ``mean``, ``median``, ``min``, ``max``, ``p01``, ``p05``, ``p95``, ``p99``, ``std`` (= RMS contrast).
Derived / scale-free:
    ``contrast`` (p95 - p05, *linear*), ``michelson`` (symmetric Michelson contrast
    ``(p95 - p05) / min(p95 + p05, 2 - p95 - p05)``: unchanged when an image is made darker by
    scaling or brighter by an offset, so a dark image is not also "low contrast"),
    ``entropy`` (Shannon entropy in bits / 8, in [0, 1], 256-bin histogram over ``[0, 2**stored_bits)``),
    ``structure_snr`` (std of a Gaussian-smoothed copy (sigma 2 px on the working copy) over the std
    of the residual plus the quantization floor: near 1 for blank/noise-only images, high for real
    content; unchanged by exposure scaling), ``flat_fraction`` (fraction of pixels within 2 % of the stored range of the median: near 1 for
    blank images), ``stored_bits`` (int: the smallest of 8/10/12/14/16 whose range holds the image's
    max; 8 for 8-bit images), ``full_scale`` (float: ``2**bit_depth - 1``).
Blur (on the working copy, contrast-normalized so a dim image is not "blurry"):
    ``laplacian_var`` (variance of the Laplacian of the [0, 1] gray image),
    ``sharpness_256``, ``sharpness_128``, ``sharpness_64`` (``var(Laplacian) / var(gray)``: edge
    energy per unit contrast, on copies whose longest side is at most 256 / 128 / 64; a smaller
    image is measured at its own size), so images of different sizes can be compared at one scale,
    ``hf_ratio`` (share of non-DC spectral energy above half the Nyquist frequency).
Colour:
    ``n_channels`` (1 or 3, as decoded), ``is_gray_rgb`` (bool: 3 channels that are (nearly) equal,
    i.e. a grayscale image stored as RGB), ``channel_diff`` (mean over pixels of max - min across
    channels, [0, 1]; 0 for 1-channel images), ``colorfulness`` (Hasler & Suesstrunk, [0, ~1]).
For ``dedup``:
    ``pixel_sha256`` (hex str): sha256 of ``shape`` + ``dtype`` + the C-ordered decoded pixel buffer.
        Equal for files whose bytes differ but whose decoded pixels are the same (re-saved PNG,
        different metadata); a gray image and the same image stored as RGB differ.
    ``phash``, ``dhash``, ``ahash`` (and ``whash`` only when asked for via ``hashes=``) (str, 16 hex
        chars): imagededup's hashes
        (``PHash().encode_image(image_array=...)`` etc.), usable as imagededup ``encoding_map`` values.
        They are computed on the uint8 gray working copy: for 8-bit images that is the image itself
        (imagededup would cast uint16 to uint8 with wrap-around, so 16-bit images are first stretched
        from their 0.5th to 99.5th percentile). Versus hashing the full-resolution file with
        imagededup, the pre-resize changes a hash by at most a few bits (see tests/bench).
    ``thumb`` (bytes, ``thumb_size**2`` uint8 values) and ``thumb_size`` (int, default 32): an
        intensity-normalized gray thumbnail (stretched from its own 1st to 99th percentile to 0..255,
        resized to ``thumb_size x thumb_size`` ignoring aspect ratio). Decode with
        ``np.frombuffer(row.thumb, np.uint8).reshape(row.thumb_size, row.thumb_size)``.
"""

from __future__ import annotations

import hashlib
from functools import cache

import cv2
import numpy as np

WORK_PX = 256
"""Longest side of the working copy on which all but the pixel hash are measured."""
BLUR_LEVELS = (WORK_PX, 128, 64)
"""Longest sides at which ``sharpness_<side>`` is measured (downscale only, never upscaled)."""

_GRAY_RGB_TOL = 0.01  # mean channel spread (fraction of full scale) below which RGB counts as gray
_FLAT_TOL = 0.02  # "near-constant" = within 2 % of the stored range of the median
ALL_HASHES = ("phash", "dhash", "ahash", "whash")
DEFAULT_HASHES = ("phash", "dhash", "ahash")


@cache
def _hashers() -> dict:
    from imagededup.methods import AHash, DHash, PHash, WHash

    return {
        "phash": PHash(verbose=False),
        "dhash": DHash(verbose=False),
        "ahash": AHash(verbose=False),
        "whash": WHash(verbose=False),
    }


def _check(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"compute_features: expected uint8 or uint16 pixels, got dtype {pixels.dtype}")
    if bit_depth not in (8, 16):
        raise ValueError(f"compute_features: expected bit_depth 8 or 16, got {bit_depth}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 3 and pixels.shape[2] == 4:  # tolerate RGBA: drop alpha
        pixels = pixels[:, :, :3]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)) or min(pixels.shape[:2]) < 1:
        raise ValueError(f"compute_features: expected an HxW or HxWx3 array, got shape {pixels.shape}")
    return pixels


def pixel_sha256(pixels: np.ndarray) -> str:
    """sha256 of the decoded pixels, their shape and dtype (hex)."""
    h = hashlib.sha256(f"{pixels.shape}|{pixels.dtype.str}|".encode())
    h.update(np.ascontiguousarray(pixels).data)
    return h.hexdigest()


def _downscale(pixels: np.ndarray, max_side: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return pixels
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def _stretch_uint8(gray: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly to 0..255 (clipped); a constant image becomes mid-gray."""
    if hi <= lo:  # constant image: mid-gray, so it hashes like any other flat image
        return np.full(gray.shape, 128, np.uint8)
    out = (gray.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0, 255).round().astype(np.uint8)


def _hist_percentiles(cdf: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Percentiles (0-100) of integer values from their cumulative histogram ('lower' rule)."""
    n = cdf[-1]
    ranks = np.maximum(np.ceil(np.asarray(qs, np.float64) / 100.0 * n), 1)
    return np.searchsorted(cdf, ranks, side="left").astype(np.float64)


def _entropy(hist: np.ndarray) -> float:
    hist = np.asarray(hist, np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # no -0.0


def _hf_ratio(gray: np.ndarray) -> float:
    """Share of non-DC spectral energy above half the Nyquist frequency (0 for constant images)."""
    g = gray - gray.mean()
    spec = np.abs(np.fft.rfft2(g)) ** 2
    fy = np.fft.fftfreq(g.shape[0])[:, None]
    fx = np.fft.rfftfreq(g.shape[1])[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    total = spec.sum()
    if total <= 0:
        return 0.0
    return float(spec[radius > 0.25].sum() / total)


def compute_features(
    pixels: np.ndarray, bit_depth: int, thumb_size: int = 32, hashes: tuple[str, ...] = DEFAULT_HASHES
) -> dict:
    """Everything ``quality`` and ``dedup`` need from one decoded image (see the module docstring).

    Args:
        pixels: HxW or HxWx3 (RGB) array, uint8 or uint16 at the true bit depth (HxWx1 and
            HxWx4 are accepted: the channel axis is dropped / alpha is ignored).
        bit_depth: 8 or 16; intensities are divided by ``2**bit_depth - 1``.
        thumb_size: Side of the dedup thumbnail.
        hashes: Which imagededup hashes to compute, some of ``phash, dhash, ahash, whash``
            (whash costs about as much as the other three together, so it is opt-in).

    Returns:
        A flat dict of float / int / bool / str / bytes values, the columns of features.parquet.

    Raises:
        ValueError: For an unsupported dtype, bit depth or shape (the message says what was got).
    """
    pixels = _check(np.asarray(pixels), bit_depth)
    unknown = sorted(set(hashes) - set(ALL_HASHES))
    if unknown:
        raise ValueError(f"compute_features: unknown hash(es) {unknown}; expected some of {list(ALL_HASHES)}")
    full_scale = float(2**bit_depth - 1)
    out: dict = {"pixel_sha256": pixel_sha256(pixels)}

    small = _downscale(pixels, WORK_PX)  # the only other full-resolution operation
    n_channels = 3 if small.ndim == 3 else 1
    if n_channels == 3:
        # per-channel planes (numpy reductions over a length-3 last axis are slow)
        r, g, b = (c.astype(np.float32) / full_scale for c in cv2.split(small))
        spread = cv2.max(cv2.max(r, g), b) - cv2.min(cv2.min(r, g), b)
        channel_diff = float(spread.mean())
        rg, yb = r - g, 0.5 * (r + g) - b
        (m_rg,), (s_rg,) = cv2.meanStdDev(rg)
        (m_yb,), (s_yb,) = cv2.meanStdDev(yb)
        colorfulness = float(np.hypot(s_rg[0], s_yb[0]) + 0.3 * np.hypot(m_rg[0], m_yb[0]))
        gray_raw = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    else:
        channel_diff, colorfulness = 0.0, 0.0
        gray_raw = small
    gray = gray_raw.astype(np.float32) / full_scale

    # one histogram of the integer gray values gives every percentile, entropy and flatness
    n_levels = 256 if gray_raw.dtype == np.uint8 else 65536
    hist = np.bincount(gray_raw.ravel(), minlength=n_levels)
    cdf = np.cumsum(hist)
    q_raw = _hist_percentiles(cdf, (0, 1, 5, 50, 95, 99, 100))
    q = q_raw / full_scale
    p05, p95 = float(q[2]), float(q[4])
    std = float(gray.std())
    denom = min(p95 + p05, 2.0 - p95 - p05)
    raw_max = int(q_raw[6])
    stored_bits = 8 if bit_depth == 8 else next(b for b in (8, 10, 12, 14, 16) if raw_max < 2**b)
    # 256 bins over the stored range: entropy / flatness do not depend on 12-in-16-bit storage
    shift = stored_bits - 8
    binned = np.bincount(np.arange(n_levels) >> shift, weights=hist, minlength=256)[:256] if shift else hist
    flat_tol = int(_FLAT_TOL * (2**stored_bits - 1))
    med = int(q_raw[3])
    flat_fraction = float(
        (cdf[min(med + flat_tol, n_levels - 1)] - (cdf[med - flat_tol - 1] if med - flat_tol > 0 else 0))
        / cdf[-1]
    )
    # structure vs noise: std of a smoothed copy over std of what the smoothing removed (plus the
    # quantization floor). Scale-free, so a dark or dim image keeps its value; near 1 for blank.
    smooth = cv2.GaussianBlur(gray, (0, 0), 2.0)
    quant = 1.0 / full_scale / np.sqrt(12.0)  # std of rounding to integer levels
    structure_snr = float(smooth.std() / np.hypot(float((gray - smooth).std()), quant))
    # blur at three scales, so quality can compare images at the dataset's typical size
    sharp: dict[str, float] = {}
    laplacian_var = 0.0
    level = gray
    for side in BLUR_LEVELS:
        level = _downscale(level, side)
        lap_var = float(cv2.Laplacian(level, cv2.CV_32F, ksize=3).var())
        lvl_std = float(level.std())
        sharp[f"sharpness_{side}"] = lap_var / lvl_std**2 if lvl_std > 1e-6 else 0.0
        if side == WORK_PX:
            laplacian_var = lap_var

    out.update(
        mean=float(gray.mean()),
        median=float(q[3]),
        min=float(q[0]),
        max=float(q[6]),
        p01=float(q[1]),
        p05=p05,
        p95=p95,
        p99=float(q[5]),
        std=std,
        contrast=p95 - p05,
        michelson=float((p95 - p05) / denom) if denom > 0 else 0.0,
        entropy=_entropy(binned) / 8.0,
        flat_fraction=flat_fraction,
        structure_snr=structure_snr,
        stored_bits=stored_bits,
        full_scale=full_scale,
        laplacian_var=laplacian_var,
        **sharp,
        hf_ratio=_hf_ratio(gray),
        n_channels=n_channels,
        is_gray_rgb=bool(n_channels == 3 and channel_diff < _GRAY_RGB_TOL),
        channel_diff=channel_diff,
        colorfulness=colorfulness,
    )

    # dedup: imagededup hashes on a uint8 gray image, and a normalized thumbnail
    if gray_raw.dtype == np.uint8:
        gray8 = gray_raw
    else:
        gray8 = _stretch_uint8(gray_raw, *_hist_percentiles(cdf, (0.5, 99.5)))
    for name in hashes:
        out[name] = _hashers()[name].encode_image(image_array=gray8)
    lo, hi = _hist_percentiles(cdf, (1, 99))
    thumb = cv2.resize(
        _stretch_uint8(gray_raw, lo, hi), (thumb_size, thumb_size), interpolation=cv2.INTER_AREA
    )
    out["thumb"] = thumb.tobytes()
    out["thumb_size"] = int(thumb_size)
    return out


def decode_thumb(thumb: bytes, thumb_size: int) -> np.ndarray:
    """The ``thumb`` field back as a (thumb_size, thumb_size) uint8 array."""
    return np.frombuffer(thumb, np.uint8).reshape(thumb_size, thumb_size)
