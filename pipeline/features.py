"""Per-image features, computed once per image in the ingest decode pass (issue 9: one decode per run).

:func:`compute_features` turns decoded pixels into one flat dict of scalars, strings and bytes.
Ingest writes one row per ``status == "ok"`` image to ``data/interim/features.parquet`` (keyed by
``image_id``); ``quality`` and ``dedup`` read only that table, never the images.

How it stays fast (``bench/scan.py``): the only full-resolution work is the pixel hash and one
``cv2.resize`` (``INTER_AREA``) to a working copy whose longest side is at most :data:`WORK_PX`
(never upscaled). Every other measure runs on that copy, which also makes the blur measures
comparable across image sizes (CleanVision's blur score depends on resolution, so strong blur on
large images is missed). On the copy: one histogram of the integer gray values gives every
percentile, the mean, the std, the entropy and the flatness; stretches to 8 bit are lookup tables; sums of squares use
OpenCV's double-accumulating reductions on 64-byte-aligned copies (their summation order depends
on the buffer's address, see :func:`_mean_std`); the noise measure runs on the 128 px level of the blur
pyramid (a quarter of the pixels); only the perceptual hash(es) that dedup uses are computed, by
one exact re-implementation of imagededup (see :func:`perceptual_hashes`), so neither imagededup
nor torch (which ``import imagededup`` pulls in) is imported here.

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
    ``structure_snr`` (std of a Gaussian-smoothed copy (sigma 1 px on the copy whose longest side is
    at most 128 px; a smaller image at its own size) over the std of the residual plus the
    quantization floor: near 1 for blank/noise-only images, high for real content; unchanged by
    exposure scaling), ``flat_fraction`` (fraction of pixels within 2 % of the stored range of the median: near 1 for
    blank images), ``stored_bits`` (int: the smallest of 8/10/12/14/16 whose range holds the image's
    max; 8 for 8-bit images), ``full_scale`` (float: ``2**bit_depth - 1``).
Blur (on the working copy, contrast-normalized so a dim image is not "blurry"):
    ``laplacian_var`` (variance of the Laplacian of the [0, 1] gray image),
    ``sharpness_256``, ``sharpness_128``, ``sharpness_64`` (``var(Laplacian) / var(gray)``: edge
    energy per unit contrast, on copies whose longest side is at most 256 / 128 / 64; a smaller
    image is measured at its own size), so images of different sizes can be compared at one scale.
Colour:
    ``n_channels`` (1 or 3, as decoded), ``is_gray_rgb`` (bool: 3 channels that are (nearly) equal,
    i.e. a grayscale image stored as RGB), ``channel_diff`` (mean over pixels of max - min across
    channels, [0, 1]; 0 for 1-channel images), ``colorfulness`` (Hasler & Suesstrunk, [0, ~1]).
For ``dedup``:
    ``pixel_sha256`` (hex str): sha256 of ``shape`` + ``dtype`` + the C-ordered decoded pixel buffer.
        Equal for files whose bytes differ but whose decoded pixels are the same (re-saved PNG,
        different metadata); a gray image and the same image stored as RGB differ.
    ``phash``, ``dhash``, ``ahash`` (and ``whash`` only when asked for via ``hashes=``) (str, 16 hex
        chars): imagededup's hashes, usable as imagededup ``encoding_map`` values. They are
        bit-identical to ``PHash().encode_image(image_array=gray8)`` (etc.) of the uint8 gray working
        copy ``gray8`` (tests/test_features.py checks this on many sizes and shapes): for an 8-bit gray
        image of at most :data:`WORK_PX` px that is imagededup on the image itself. Larger images are
        pre-reduced (``INTER_AREA``), RGB images are converted to gray before (imagededup: after)
        resizing, and 16-bit images are stretched from their 0.5th to 99.5th percentile to 8 bit
        (imagededup would cast uint16 to uint8 with wrap-around). Versus imagededup on the
        full-resolution array that changes a hash by 0 bits for most images and 1-4 bits for some
        (tests/test_features.py); a PHash of a very smooth image, whose DCT coefficients sit close to
        their median, can move by up to ~12 bits (measured on synthetic 257-2000 px images).
    ``thumb`` (bytes, ``thumb_size**2`` uint8 values) and ``thumb_size`` (int, default 32): an
        intensity-normalized gray thumbnail (stretched from its own 1st to 99th percentile to 0..255,
        resized to ``thumb_size x thumb_size`` ignoring aspect ratio). Decode with
        ``np.frombuffer(row.thumb, np.uint8).reshape(row.thumb_size, row.thumb_size)``.
    ``thumb_large`` (bytes, ``LARGE_THUMB**2`` = 64 x 64 uint8 values): the same thumbnail at
        :data:`LARGE_THUMB` px, for the outliers stage's mirror model, which needs the few pixels
        where a film's left and right differ (:mod:`pipeline.mirror`); 4 KB an image.
    ``chroma`` (bytes): colour images only (empty for gray and gray-as-RGB ones): the mean CIELAB
        a*, b* of each cell of a 4 x 4 grid (:func:`chroma_grid`), int8, so dedup can tell apart
        two images whose gray thumbnails match but whose colours differ.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, lru_cache
from pathlib import Path

import cv2
import numpy as np
from scipy.fftpack import dct  # the DCT imagededup's PHash uses (same results bit for bit)

from pipeline.errors import InputError

WORK_PX = 256
"""Longest side of the working copy on which all but the pixel hash are measured."""
BLUR_LEVELS = (WORK_PX, 128, 64)
"""Longest sides at which ``sharpness_<side>`` is measured (downscale only, never upscaled)."""
LARGE_THUMB = 64
"""Side of the ``thumb_large`` thumbnail (the mirror model's input)."""
_NOISE_PX = 128  # the pyramid level on which structure_snr is measured

_GRAY_RGB_TOL = 0.01  # mean channel spread (fraction of full scale) below which RGB counts as gray
_FLAT_TOL = 0.02  # "near-constant" = within 2 % of the stored range of the median
ALL_HASHES = ("phash", "dhash", "ahash", "whash")
DEFAULT_HASHES = ("phash", "dhash", "ahash")


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


def _stretch_lut(gray_raw: np.ndarray, lo: float, hi: float, raw_max: int) -> np.ndarray:
    """:func:`_stretch_uint8` of an integer image through a lookup table (same values, one pass)."""
    if gray_raw.dtype == np.uint8:
        return cv2.LUT(gray_raw, _stretch_uint8(np.arange(256, dtype=np.uint8), lo, hi))
    return _stretch_uint8(np.arange(raw_max + 1, dtype=np.uint16), lo, hi)[gray_raw]


def _hist_percentiles(cdf: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Percentiles (0-100) of integer values from their cumulative histogram ('lower' rule)."""
    n = cdf[-1]
    ranks = np.maximum(np.ceil(np.asarray(qs, np.float64) / 100.0 * n), 1)
    return np.searchsorted(cdf, ranks, side="left").astype(np.float64)


def _entropy(hist: np.ndarray) -> float:
    hist = np.asarray(hist, np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # no -0.0


_ALIGN = 64  # bytes; the buffer alignment that OpenCV's (IPP's) reductions depend on


def _aligned(x: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``x`` that starts at a multiple of :data:`_ALIGN` bytes."""
    buf = np.empty(x.nbytes + _ALIGN, np.uint8)
    start = -buf.ctypes.data % _ALIGN
    out = buf[start : start + x.nbytes].view(x.dtype).reshape(x.shape)
    np.copyto(out, x)
    return out


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and (population) std of a float32 (or int16) image, one pass each, accumulated in double.

    OpenCV's ``sumElems`` / ``norm`` (Intel IPP inside) add the values in an order that depends on
    where the buffer starts in memory (its address modulo 64): the same pixels gave a
    ``structure_snr`` an ulp apart from one run to the next, so features.parquet was not
    byte-identical across clean runs. The values are therefore copied to a 64-byte-aligned buffer
    first (a memcpy; numpy's own float64 sums cost 6-50x more here).
    """
    x = _aligned(x)
    n = x.size
    mean = cv2.sumElems(x)[0] / n
    var = cv2.norm(x, cv2.NORM_L2SQR) / n - mean * mean
    if var < 1e-8 * mean * mean:  # (nearly) constant: E[x^2] - mean^2 cancels; two-pass instead
        var = float(np.var(x, dtype=np.float64))
    return mean, math.sqrt(var) if var > 0 else 0.0


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
            (whash resamples to 256 x 256 and costs about as much as the other three together,
            so it is opt-in).

    Returns:
        A flat dict of float / int / bool / str / bytes values, the columns of features.parquet.

    Raises:
        ValueError: For an unsupported dtype, bit depth or shape (the message says what was got).
    """
    pixels = _check(np.asarray(pixels), bit_depth)
    unknown = sorted(set(hashes) - set(ALL_HASHES))
    if unknown:
        raise InputError(f"compute_features: unknown hash(es) {unknown}; expected some of {list(ALL_HASHES)}")
    full_scale = float(2**bit_depth - 1)
    out: dict = {"pixel_sha256": pixel_sha256(pixels)}

    small = _downscale(pixels, WORK_PX)  # the only other full-resolution operation
    n_channels, channel_diff, colorfulness, gray_raw = _colour(small, full_scale)
    gray = np.divide(gray_raw, np.float32(full_scale), dtype=np.float32)
    hist_stats, cdf, q_raw = _intensity(gray_raw, full_scale, bit_depth)
    blur = _blur(gray, gray_raw, hist_stats["std"], full_scale)
    # column order of features.parquet: intensity, structure_snr, storage, blur, colour
    storage = {k: hist_stats.pop(k) for k in ("stored_bits", "full_scale")}
    out.update(
        **hist_stats,
        structure_snr=blur.pop("structure_snr"),
        **storage,
        **blur,
        n_channels=n_channels,
        is_gray_rgb=bool(n_channels == 3 and channel_diff < _GRAY_RGB_TOL),
        channel_diff=channel_diff,
        colorfulness=colorfulness,
    )

    # dedup: imagededup hashes on a uint8 gray image, and a normalized thumbnail
    if gray_raw.dtype == np.uint8:
        gray8 = gray_raw
    else:
        gray8 = _stretch_lut(gray_raw, *_hist_percentiles(cdf, (0.5, 99.5)), int(q_raw[6]))
    out.update(perceptual_hashes(gray8, hashes))
    stretched = _stretch_lut(gray_raw, q_raw[1], q_raw[5], int(q_raw[6]))  # 1st to 99th percentile
    thumb = cv2.resize(stretched, (thumb_size, thumb_size), interpolation=cv2.INTER_AREA)
    out["thumb"] = thumb.tobytes()
    out["thumb_size"] = int(thumb_size)
    large = cv2.resize(stretched, (LARGE_THUMB, LARGE_THUMB), interpolation=cv2.INTER_AREA)
    out["thumb_large"] = large.tobytes()
    out["chroma"] = b"" if n_channels == 1 or out["is_gray_rgb"] else chroma_grid(small, full_scale).tobytes()
    return out


CHROMA_GRID = 4
"""Side of the grid of mean CIELAB chroma (a*, b*) stored per colour image (``chroma``)."""


def chroma_grid(rgb: np.ndarray, full_scale: float) -> np.ndarray:
    """Mean CIELAB chroma of each cell of a :data:`CHROMA_GRID` x :data:`CHROMA_GRID` grid.

    Args:
        rgb: HxWx3 RGB image (uint8 or uint16).
        full_scale: ``2**bit_depth - 1``.

    Returns:
        int8 (grid, grid, 2): a* and b* (CIELAB units, D65, rounded; about -128..127).
    """
    lab = cv2.cvtColor(rgb.astype(np.float32) / np.float32(full_scale), cv2.COLOR_RGB2Lab)
    cells = cv2.resize(lab[:, :, 1:], (CHROMA_GRID, CHROMA_GRID), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(cells), -128, 127).astype(np.int8)


def _colour(small: np.ndarray, full_scale: float) -> tuple[int, float, float, np.ndarray]:
    """``(n_channels, channel_diff, colorfulness, gray_raw)`` of the working copy.

    channel_diff: mean max-min spread of the three channels (0 for gray); colorfulness: Hasler and
    Suesstrunk's measure on [0, 1] intensities; gray_raw: the integer gray image (ITU-R 601 luma).
    """
    if small.ndim != 3:
        return 1, 0.0, 0.0, np.ascontiguousarray(small)
    # per-channel planes (numpy reductions over a length-3 last axis are slow)
    r, g, b = (c.astype(np.float32) / full_scale for c in cv2.split(small))
    spread = cv2.max(cv2.max(r, g), b) - cv2.min(cv2.min(r, g), b)
    channel_diff = float(spread.mean())
    rg, yb = r - g, 0.5 * (r + g) - b
    (m_rg, s_rg), (m_yb, s_yb) = _mean_std(rg), _mean_std(yb)  # (aligned: see _mean_std)
    colorfulness = float(np.hypot(s_rg, s_yb) + 0.3 * np.hypot(m_rg, m_yb))
    return 3, channel_diff, colorfulness, cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)


def _intensity(
    gray_raw: np.ndarray, full_scale: float, bit_depth: int
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Intensity statistics from one histogram of the integer gray values.

    The histogram gives every percentile, the mean and std, the entropy and the flatness (exact
    sums, no pass over the pixels).

    Returns:
        ``(stats, cdf, q_raw)``: the feature columns, the cumulative histogram and the raw
        0/1/5/50/95/99/100th percentiles (for the hashes' and thumbnail's stretch).
    """
    n_levels = 256 if gray_raw.dtype == np.uint8 else 65536
    hist = cv2.calcHist([gray_raw], [0], None, [n_levels], [0, n_levels]).ravel().astype(np.int64)
    cdf = np.cumsum(hist)
    n_px = int(cdf[-1])
    q_raw = _hist_percentiles(cdf, (0, 1, 5, 50, 95, 99, 100))
    q = q_raw / full_scale
    p05, p95 = float(q[2]), float(q[4])
    raw_min, raw_max = int(q_raw[0]), int(q_raw[6])
    used = hist[raw_min : raw_max + 1].astype(np.float64)
    values = np.arange(raw_min, raw_max + 1, dtype=np.float64)
    mean_raw = float((used * values).sum()) / n_px  # (not BLAS dot: threaded above 10k levels)
    std = math.sqrt(float((used * np.square(values - mean_raw)).sum()) / n_px) / full_scale
    denom = min(p95 + p05, 2.0 - p95 - p05)
    stored_bits = 8 if bit_depth == 8 else next(b for b in (8, 10, 12, 14, 16) if raw_max < 2**b)
    # 256 bins over the stored range: entropy / flatness do not depend on 12-in-16-bit storage
    shift = stored_bits - 8
    binned = np.bincount(np.arange(n_levels) >> shift, weights=hist, minlength=256)[:256] if shift else hist
    flat_tol = int(_FLAT_TOL * (2**stored_bits - 1))
    med = int(q_raw[3])
    flat_fraction = float(
        (cdf[min(med + flat_tol, n_levels - 1)] - (cdf[med - flat_tol - 1] if med - flat_tol > 0 else 0))
        / n_px
    )
    stats = dict(
        mean=mean_raw / full_scale,
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
        stored_bits=stored_bits,
        full_scale=full_scale,
    )
    return stats, cdf, q_raw


def _blur(gray: np.ndarray, gray_raw: np.ndarray, std: float, full_scale: float) -> dict[str, float]:
    """Blur at three scales (so quality can compare images at the dataset's typical size), the
    Laplacian variance of the working copy, and the structure-to-noise ratio."""
    sharp: dict[str, float] = {}
    laplacian_var = 0.0
    level, lvl_std = gray, std  # the working copy is the first level
    quant = 1.0 / full_scale / np.sqrt(12.0)  # std of rounding to integer levels
    structure_snr = 0.0
    for side in BLUR_LEVELS:
        if max(level.shape) > side:
            level = _downscale(level, side)
            lvl_std = _mean_std(level)[1]
        if level is gray:  # the integer levels give exact Laplacian sums, faster than float32
            depth = cv2.CV_16S if gray_raw.dtype == np.uint8 else cv2.CV_32F  # |values| < 2**19
            lap_var = (_mean_std(cv2.Laplacian(gray_raw, depth, ksize=3))[1] / full_scale) ** 2
        else:
            lap_var = _mean_std(cv2.Laplacian(level, cv2.CV_32F, ksize=3))[1] ** 2
        sharp[f"sharpness_{side}"] = lap_var / lvl_std**2 if lvl_std > 1e-6 else 0.0
        if side == WORK_PX:
            laplacian_var = lap_var
        elif side == _NOISE_PX:
            # structure vs noise: std of a smoothed copy over std of what the smoothing removed
            # (plus the quantization floor). Scale-free, so a dark or dim image keeps its value;
            # near 1 for blank images.
            smooth = cv2.GaussianBlur(level, (0, 0), 1.0)
            residual = _mean_std(cv2.subtract(level, smooth))[1]
            structure_snr = float(_mean_std(smooth)[1] / np.hypot(residual, quant))
    return {"structure_snr": structure_snr, "laplacian_var": laplacian_var, **sharp}


def decode_thumb(thumb: bytes, thumb_size: int) -> np.ndarray:
    """The ``thumb`` field back as a (thumb_size, thumb_size) uint8 array."""
    return np.frombuffer(thumb, np.uint8).reshape(thumb_size, thumb_size)


# --------------------------------------------------------------------------- perceptual hashes
#
# imagededup 0.3 hashes an array ``a`` as follows (imagededup/methods/hashing.py and
# utils/image_utils.py): ``PIL.Image.fromarray(a.astype("uint8")).resize(size, Image.LANCZOS)``,
# ``.convert("L")``, then
#   PHash  size (32, 32): 2-D DCT-II (scipy.fftpack, unnormalized), top-left 8 x 8 block, bit =
#          coefficient >= median of the 63 coefficients after the DC term;
#   DHash  size (9, 8) (width x height): bit = pixel > its left neighbour (8 x 8 bits);
#   AHash  size (8, 8): bit = pixel >= mean;
#   WHash  size (256, 256): pixels / 255, 5-level Haar wavedec2 (pywt), bit = LL >= median of LL;
# bits packed row-major, most significant first, as 16 hex digits.
# Below, Pillow's 8-bit LANCZOS resampling is reproduced exactly (Pillow src/libImaging/Resample.c):
# per output pixel float64 coefficients normalized to sum 1, converted to int32 fixed point with
# 22 fractional bits, integer accumulation starting at 2**21, then >> 22 and clamp to 0..255,
# separately per pass with the intermediate image stored as uint8. The integer sums (< 2**31)
# are exact in float64, so one BLAS matrix product per pass gives Pillow's result bit for bit.

_HASH_SIZES = {"phash": (32, 32), "dhash": (9, 8), "ahash": (8, 8), "whash": (256, 256)}  # (w, h)
_PRECISION_BITS = 22  # 32 - 8 - 2, Pillow's fixed point for 8-bit images
_ONE = float(1 << _PRECISION_BITS)
_HALF = float(1 << (_PRECISION_BITS - 1))


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


@lru_cache(maxsize=1024)
def _pil_lanczos(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix of Pillow's fixed-point LANCZOS weights (as float64 integers)."""
    m = np.zeros((out_size, in_size), np.float64)
    if in_size == out_size:  # Pillow skips this pass; 1.0 in fixed point leaves the pixels as they are
        np.fill_diagonal(m, _ONE)
        m.setflags(write=False)
        return m
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for w in weights:  # summed in order, like the C loop
            ww += w
        for x, w in enumerate(weights):
            w = w / ww if ww != 0.0 else w
            m[xx, xmin + x] = float(int(w * _ONE - 0.5) if w < 0 else int(w * _ONE + 0.5))
    m.setflags(write=False)
    return m


def _fixed_to_levels(acc: np.ndarray) -> np.ndarray:
    """Pillow's ``clip8`` in place: (2**21 + sum) >> 22, clamped to 0..255 (in float64, exact)."""
    np.add(acc, _HALF, out=acc)
    np.multiply(acc, 1.0 / _ONE, out=acc)
    np.floor(acc, out=acc)
    return np.clip(acc, 0.0, 255.0, out=acc)


@cache
def _numpy_blas() -> list:
    """threadpoolctl controllers of the BLAS numpy's ``@`` uses (OpenCV and scipy bring their own)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover  (a scikit-learn dependency, normally present)
        return []
    libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    own = [lib for lib in libs if Path(lib.filepath).parent.name.startswith("numpy")]  # numpy.libs/
    return own or libs


@contextmanager
def _single_threaded_blas(work: int) -> Iterator[None]:
    """One BLAS thread for the matrix products here (``work`` multiply-adds): with pool workers
    already on every core, OpenBLAS's own threads only contend (20-50x slower measured on 2 shared
    cores). OpenBLAS stays on one thread below 2**18 multiply-adds anyway, so that is left alone."""
    changed = []
    if work > 2**18:
        for lib in _numpy_blas():
            n = lib.get_num_threads()
            if n != 1:
                lib.set_num_threads(1)
                changed.append((lib, n))
    try:
        yield
    finally:
        for lib, n in changed:
            lib.set_num_threads(n)


def _vertical_first(rule: str, in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    # Newer Pillow (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks
    # much more than the width; this rule was found by comparing with Pillow 13.0 on ~3000 random
    # shapes and is re-checked on the installed version by _pillow_pass_order.
    return rule == "vertical_first_when_taller" and out_h < in_h and in_h - out_h > 2 * (in_w - out_w)


_Bands = list[tuple[int, int, int, int, np.ndarray]]
_BAND = 8  # outputs per block of a banded product


def _bands(weights: np.ndarray) -> _Bands | None:
    """Blocks ``(out0, out1, in0, in1, weights[out0:out1, in0:in1])`` of ``_BAND`` outputs that cover
    every non-zero weight of an (outputs x inputs) matrix, or None when they would save < 30 % of the
    dense product. A Lanczos kernel spans 6 output pixels, so shrinking 256 -> 32 touches ~1/5 of
    the matrix. Skipping zero weights keeps the sums exact (integers < 2**31 in float64)."""
    bands, area = [], 0
    for o0 in range(0, weights.shape[0], _BAND):
        o1 = min(o0 + _BAND, weights.shape[0])
        nz = np.flatnonzero(weights[o0:o1].any(axis=0))
        i0, i1 = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
        bands.append((o0, o1, i0, i1, np.ascontiguousarray(weights[o0:o1, i0:i1])))
        area += (o1 - o0) * (i1 - i0)
    return bands if area < 0.7 * weights.size else None


def _first_pass(a: np.ndarray, weights: np.ndarray, bands: _Bands | None, vertical: bool) -> np.ndarray:
    """``weights @ a`` (vertical) or ``a @ weights.T`` (horizontal), block by block when banded."""
    if bands is None:
        return weights @ a if vertical else a @ weights.T
    if vertical:
        out = np.empty((weights.shape[0], a.shape[1]))
        for o0, o1, i0, i1, w in bands:
            np.matmul(w, a[i0:i1], out=out[o0:o1])
    else:
        out = np.empty((a.shape[0], weights.shape[0]))
        for o0, o1, i0, i1, w in bands:
            np.matmul(a[:, i0:i1], w.T, out=out[:, o0:o1])
    return out


@lru_cache(maxsize=256)
def _resize_plan(
    in_h: int, in_w: int, sizes: tuple[tuple[int, int], ...], rule: str
) -> list[tuple[bool, np.ndarray, np.ndarray, _Bands | None, list[tuple[int, slice, slice]]]]:
    """Sizes grouped by pass order; per group the stacked weights of both passes, so a group is
    two matrix products (the off-diagonal blocks of the second one are computed and ignored), and
    the bands of the first pass (the big one: it runs over the whole image)."""
    groups: dict[bool, list[int]] = {}
    for i, (w, h) in enumerate(sizes):
        groups.setdefault(_vertical_first(rule, in_w, in_h, w, h), []).append(i)
    plan = []
    for vfirst, idx in groups.items():
        widths, heights = [sizes[i][0] for i in idx], [sizes[i][1] for i in idx]
        wx = np.concatenate([_pil_lanczos(in_w, w) for w in widths])  # (outputs, in_w)
        ky = np.concatenate([_pil_lanczos(in_h, h) for h in heights])  # (outputs, in_h)
        bands = _bands(ky if vfirst else wx)
        cols, rows = np.cumsum([0, *widths]), np.cumsum([0, *heights])
        where = [(i, slice(rows[j], rows[j + 1]), slice(cols[j], cols[j + 1])) for j, i in enumerate(idx)]
        plan.append((vfirst, np.ascontiguousarray(wx.T), ky, bands, where))
    return plan


def _lanczos_resize_many(
    gray8: np.ndarray, sizes: list[tuple[int, int]], rule: str | None = None
) -> list[np.ndarray]:
    """``Image.fromarray(gray8).resize((w, h), Image.LANCZOS)`` for each (w, h), as float64 arrays."""
    rule = rule or _pillow_pass_order()
    if rule == "pillow":  # an unknown Pillow: let it resize (exact by definition, slower)
        from PIL import Image

        im = Image.fromarray(gray8)
        return [np.asarray(im.resize(size, Image.Resampling.LANCZOS), np.float64) for size in sizes]
    a = gray8.astype(np.float64)
    out: list = [None] * len(sizes)
    plan = _resize_plan(*a.shape, tuple(sizes), rule)
    with _single_threaded_blas(a.size * max(max(kx.shape[1], ky.shape[0]) for _, kx, ky, _, _ in plan)):
        for vfirst, kx, ky, bands, where in plan:
            if vfirst:
                res = _fixed_to_levels(_fixed_to_levels(_first_pass(a, ky, bands, True)) @ kx)
            else:
                res = _fixed_to_levels(ky @ _fixed_to_levels(_first_pass(a, kx.T, bands, False)))
            for i, rows, cols in where:
                out[i] = res[rows, cols]
    return out


@cache
def _pillow_pass_order() -> str:
    """Which pass order reproduces the installed Pillow's LANCZOS resize on probe images.

    ``horizontal_first`` (Pillow before python-pillow/Pillow#9549), ``vertical_first_when_taller``
    (after it; Pillow 13.0 here), or ``pillow`` when neither does (then Pillow itself resizes:
    still exact, about 3x slower). Decided once per process (a few ms; before the pool forks).
    """
    from PIL import Image

    rng = np.random.default_rng(20240611)
    probes = [(256, 256, 32, 32), (256, 256, 9, 8), (256, 100, 32, 32), (216, 29, 32, 32),
              (300, 20, 9, 8), (9, 8, 9, 8), (100, 256, 8, 8), (20, 31, 32, 32), (53, 16, 40, 58)]  # fmt: skip
    images = [(rng.integers(0, 256, (h, w), dtype=np.uint8), (ow, oh)) for h, w, ow, oh in probes]
    for rule in ("vertical_first_when_taller", "horizontal_first"):
        if all(
            np.array_equal(
                np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS)),
                _lanczos_resize_many(img, [size], rule)[0],
            )
            for img, size in images
        ):
            return rule
    return "pillow"


def _bits_to_hex(bits: np.ndarray) -> str:
    return np.packbits(bits).tobytes().hex()


def perceptual_hashes(gray8: np.ndarray, hashes: tuple[str, ...] = DEFAULT_HASHES) -> dict[str, str]:
    """imagededup's perceptual hashes of a 2-D uint8 image, without importing imagededup.

    Bit-identical to ``PHash().encode_image(image_array=gray8)`` (and DHash, AHash, WHash) of
    imagededup 0.3 with the installed Pillow (checked in tests/test_features.py), about 3x faster
    than imagededup for the default three (0.4 vs 1.25 ms at 256 x 256: the three resizes share
    two matrix products, no PIL images) and without imagededup's torch import.

    Args:
        gray8: HxW uint8 array.
        hashes: Some of ``phash, dhash, ahash, whash``.

    Returns:
        ``{name: 16 hex digits}`` for each requested hash.

    Raises:
        ValueError: For an array that is not 2-D uint8, or an unknown hash name.
    """
    if gray8.dtype != np.uint8 or gray8.ndim != 2:
        raise ValueError(f"perceptual_hashes: expected a 2-D uint8 array, got {gray8.dtype} {gray8.shape}")
    unknown = sorted(set(hashes) - set(ALL_HASHES))
    if unknown:
        raise ValueError(
            f"perceptual_hashes: unknown hash(es) {unknown}; expected some of {list(ALL_HASHES)}"
        )
    # whash (256 x 256) alone: stacked with the small sizes, its off-diagonal blocks would cost more
    groups = [[h for h in hashes if h != "whash"], [h for h in hashes if h == "whash"]]
    resized = {}
    for names in filter(None, groups):
        resized.update(zip(names, _lanczos_resize_many(gray8, [_HASH_SIZES[h] for h in names]), strict=True))
    out = {}
    for name in hashes:
        img = resized[name]  # float64 holding uint8 values: numpy/scipy/pywt compute as on imagededup's uint8
        if name == "phash":
            coef = dct(dct(img, axis=0)[:8], axis=1)[:, :8]  # DCT rows are independent: same values
            rest = coef.ravel()[1:]  # 63 values: np.median is the middle one, found by partition
            bits = coef >= np.partition(rest, 31)[31]
        elif name == "dhash":
            bits = img[:, 1:] > img[:, :-1]
        elif name == "ahash":
            bits = img >= np.mean(img)
        else:
            import pywt

            ll = pywt.wavedec2(data=img / 255, wavelet="haar", level=5)[0]
            bits = ll >= np.median(ll.ravel())
        out[name] = _bits_to_hex(bits)
    return out
