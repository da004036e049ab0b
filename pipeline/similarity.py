"""Thumbnail similarity: the pixel-level confirmation of near-duplicate candidates.

Perceptual hashes of radiographs of different patients often differ by few bits, so a hash
candidate is confirmed on the 32x32 intensity-normalized thumbnails that ingest stores in
``features.parquet`` (``thumb``, ``thumb_size``): :func:`thumbnail_similarity` is the best Pearson
correlation of the two, aligned over small zooms and shifts, so a slightly cropped, shifted or
resized copy still matches; correlation ignores brightness and contrast changes; featureless
thumbnails score -1.

* :class:`Thumbnails` reads the thumbnails of the requested rows only (one parquet row group at
  a time), so memory grows with the number of candidates, not of images.
* :func:`thumbnail_similarity` shares the work per image (one matrix product per moving image);
  :func:`_reference_similarity` is the pair-at-a-time formulation it is tested against, and
  :func:`_confirm_similarity` recomputes with it the values too close to the threshold or to a
  4-decimal rounding boundary to trust, so decisions and rounded values are the reference's.
* :func:`pair_similarity` scores pairs of table rows in chunks of at most :data:`_CHUNK_IMAGES`
  images (bounded memory, same values).

Pure numpy/opencv and the ``dedup`` params section; no stage logic (``pipeline/dedup.py`` calls it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from pipeline.params import DedupParams

log = logging.getLogger(__name__)

_FLAT_STD = 1.0  # thumbnails with less spread (grey levels of 255) carry nothing to compare
_BATCH = 512  # pairs per vectorized reference step (~ _BATCH * 25 * 28**2 * 4 bytes)
_CHUNK_IMAGES = 2048  # images whose pairs are scored at once (~19 KB each: standardized centres)
_IMG_BLOCK = 64  # moving images whose windows are held at once (~ 64 * 25 * 28**2 * 8 bytes)
# Unit roundoff of float32 (the reference's dot products), times 1.001 for |centre| ~ 1.
_GAMMA_F32 = 2.0**-24 * 1.001
# The reference's float32 sums err by ~1e-7, far below their worst-case bound: values closer than
# this fraction of the bound to a 4-decimal rounding boundary are recomputed with the reference
# (measured max error: 0.9% of the bound on 45k random pairs).
_ROUND_RECHECK = 0.03


def _thumbs_from_bytes(thumbs: Sequence, sizes: Sequence, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``thumb`` bytes of features.parquet as uint8 (n, s, s) and a mask of the rows that have one
    (``rows``: their row numbers in the table, for error messages).

    Raises:
        ValueError: If the thumbnails do not all have one size, or a buffer has the wrong length.
    """
    present = np.array([t is not None and t == t for t in thumbs], bool)  # t == t: not NaN
    sizes_u = pd.unique(pd.Series(sizes)[present].astype(int))
    if len(sizes_u) > 1:
        raise ValueError(f"features.parquet: expected one thumb_size, got {sorted(sizes_u.tolist())}")
    s = int(sizes_u[0]) if len(sizes_u) else 32
    out = np.zeros((len(present), s, s), np.uint8)
    for k in np.flatnonzero(present):
        arr = np.frombuffer(thumbs[k], np.uint8)
        if arr.size != s * s:
            raise ValueError(f"features.parquet row {rows[k]}: thumb has {arr.size} bytes, expected {s * s}")
        out[k] = arr.reshape(s, s)
    return out, present


class Thumbnails:
    """The ``thumb`` column of features.parquet, read only for the rows that are asked for.

    Confirmation needs the thumbnails of the candidate pairs only, so the stage does not load the
    column (1 KB per image, several times that while parquet decodes it): :meth:`from_parquet`
    reads it one row group at a time (``pipeline.io.ROW_GROUP_ROWS`` rows) and keeps the requested
    rows, so memory grows with the number of candidates, not of images. :meth:`from_frame` serves
    an in-memory ``thumb`` column.
    """

    def __init__(self, thumbs: pd.Series | None = None, sizes: pd.Series | None = None, path=None):
        self._thumbs, self._sizes, self._path = thumbs, sizes, path

    @classmethod
    def from_frame(cls, features: pd.DataFrame) -> Thumbnails:
        return cls(features["thumb"].reset_index(drop=True), features["thumb_size"].reset_index(drop=True))

    @classmethod
    def from_parquet(cls, path) -> Thumbnails:
        return cls(path=path)

    def get(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (len(rows), s, s), mask of rows that have a thumbnail) for sorted unique ``rows``
        (row numbers of the features table)."""
        rows = np.asarray(rows, np.int64)
        if self._path is None:
            return _thumbs_from_bytes(self._thumbs.iloc[rows].tolist(), self._sizes.iloc[rows].tolist(), rows)
        import pyarrow as pa
        import pyarrow.parquet as pq

        thumbs, sizes, start = [], [], 0
        with pq.ParquetFile(self._path) as pf:
            # one row group at a time, on this thread: memory is one group's column, not the file's
            for group in range(pf.metadata.num_row_groups):
                end = start + pf.metadata.row_group(group).num_rows
                lo, hi = np.searchsorted(rows, [start, end])
                if hi > lo:
                    table = pf.read_row_group(group, columns=["thumb", "thumb_size"], use_threads=False)
                    take = rows[lo:hi] - start
                    thumbs += table.column("thumb").take(take).to_pylist()
                    sizes += table.column("thumb_size").take(take).to_pylist()
                    del table
                start = end
        pa.default_memory_pool().release_unused()  # give the decode buffers back to the system
        if rows.size and rows[-1] >= start:
            raise ValueError(f"{self._path}: {start} rows, asked for row {rows[-1]}")
        return _thumbs_from_bytes(thumbs, sizes, rows)


def _zoom(thumbs: np.ndarray, factor: float) -> np.ndarray:
    """Magnify each thumbnail about its centre by ``factor`` (>= 1), keeping the size."""
    if factor == 1.0:
        return thumbs
    s = thumbs.shape[1]
    mat = cv2.getRotationMatrix2D(((s - 1) / 2, (s - 1) / 2), 0.0, factor)
    return np.stack(
        [
            cv2.warpAffine(t, mat, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            for t in thumbs
        ]
    )


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean, unit-norm over the last two axes; also returns the std (to spot flat ones)."""
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    norm = np.sqrt((x * x).sum(axis=(-2, -1), keepdims=True))
    std = norm[..., 0, 0] / np.sqrt(x.shape[-1] * x.shape[-2])
    return x / np.maximum(norm, 1e-6), std


def _window_sums(moving: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred and raw sums of squares of every ``w`` x ``w`` window of each image.

    Computed from integral images (float64), so no window is copied.

    Args:
        moving: (p, s, s) thumbnails.
        w: Window side, at most s.

    Returns:
        Two (p, s - w + 1, s - w + 1) float64 arrays: centred (clipped at 0) and raw sums of squares.
    """
    p, s = moving.shape[0], moving.shape[1]
    m = moving.astype(np.float64)
    ii = np.zeros((p, s + 1, s + 1))
    ii2 = np.zeros((p, s + 1, s + 1))
    ii[:, 1:, 1:] = m.cumsum(1).cumsum(2)
    ii2[:, 1:, 1:] = (m * m).cumsum(1).cumsum(2)

    def box(t: np.ndarray) -> np.ndarray:
        return t[:, w:, w:] - t[:, :-w, w:] - t[:, w:, :-w] + t[:, :-w, :-w]

    raw = box(ii2)
    return np.maximum(raw - box(ii) ** 2 / (w * w), 0.0), raw


def _shifted_correlation(fixed: np.ndarray, moving: np.ndarray, max_shift: int) -> np.ndarray:
    """Best correlation of the centre of ``fixed`` with ``moving`` over integer shifts.

    The centre window is standardized once; each shifted window of ``moving`` is normalized
    through its sum and sum of squares from integral images, so no window is copied.

    Args:
        fixed, moving: (p, s, s) float32.
        max_shift: Shifts in [-max_shift, max_shift] on both axes.

    Returns:
        (p,) best Pearson correlation; -1 where a window is flat.
    """
    k = max_shift
    p, s = fixed.shape[0], fixed.shape[1]
    w = s - 2 * k
    centre, c_std = _standardize(fixed[:, k : k + w, k : k + w])
    windows = np.lib.stride_tricks.sliding_window_view(moving, (w, w), axis=(1, 2))  # (p, 2k+1, 2k+1, w, w)
    dot = np.einsum("pxyij,pij->pxy", windows, centre, optimize=True)
    centred_ss, _ = _window_sums(moving, w)
    w_std = np.sqrt(centred_ss / (w * w))
    corr = dot / np.sqrt(np.maximum(centred_ss, 1e-6))
    corr = np.where(w_std < _FLAT_STD, -1.0, corr)
    corr = np.where((c_std < _FLAT_STD)[:, None, None], -1.0, corr)
    return corr.reshape(p, -1).max(axis=1)


def _reference_similarity(
    thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, max_shift: int, zooms: tuple[float, ...]
) -> np.ndarray:
    """The pair-at-a-time formulation of :func:`thumbnail_similarity` (float32 dot products).

    Kept as the reference that :func:`_confirm_similarity` falls back to for values too close
    to the threshold or to a 4-decimal rounding boundary to trust the fast path's last digits.
    """
    best = np.full(i.size, -1.0, np.float32)
    if i.size == 0:
        return best
    used = np.unique(np.concatenate([i, j]))
    pos = np.searchsorted(used, np.concatenate([i, j]))
    pi, pj = pos[: i.size], pos[i.size :]
    base = thumbs[used]
    for factor in zooms:
        zoomed = _zoom(base, factor)
        directions = [(pi, pj)] if factor == 1.0 else [(pi, pj), (pj, pi)]
        for a, b in directions:
            for start in range(0, i.size, _BATCH):
                sl = slice(start, start + _BATCH)
                corr = _shifted_correlation(zoomed[a[sl]], base[b[sl]], max_shift)
                best[sl] = np.maximum(best[sl], corr)
    return best


def _window_stats(moving: np.ndarray, max_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image and shift: ``sqrt(centred sum of squares)`` of the window and whether it is flat.

    Same integral-image arithmetic as :func:`_shifted_correlation` (so the same windows count as
    flat). Returns two (p, (2k+1)**2) arrays and, per image, the largest ratio of a non-flat
    window's raw norm to its centred norm (scales the reference's rounding error).
    """
    k = max_shift
    p, s = moving.shape[0], moving.shape[1]
    w = s - 2 * k
    centred_ss, raw_ss = _window_sums(moving, w)
    flat = np.sqrt(centred_ss / (w * w)) < _FLAT_STD
    norm = np.sqrt(np.maximum(centred_ss, 1e-6))
    # |float32 dot - exact dot| <= gamma * sum|x c| <= gamma * |window| * |centre|, |centre| ~ 1
    ratio = np.sqrt(np.maximum(raw_ss, 0.0)) / norm
    ratio = np.where(flat, 0.0, ratio).reshape(p, -1).max(axis=1)
    return norm.reshape(p, -1), flat.reshape(p, -1), ratio


def thumbnail_similarity(
    thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, max_shift: int, zooms: tuple[float, ...]
) -> np.ndarray:
    """Aligned similarity of thumbnail pairs: max correlation over zooms, shifts and both directions.

    Each direction zooms one thumbnail by each factor in ``zooms`` (a crop of the other image is
    a magnification of it) and slides the centre of it over the other by up to ``max_shift``
    pixels. Flat (featureless) thumbnails get -1: a blank image is not a near duplicate of
    anything; the quality stage flags it.

    Work is shared per image, not repeated per pair: every zoomed, standardized centre and
    every window norm is computed once per image; then, for each image as the *moving* one,
    one matrix product (its windows x the centres of all its partners, float64) scores all
    its pairs at every shift.

    Args:
        thumbs: (n, s, s) float32 thumbnails.
        i, j: Index arrays of the pairs, same length.
        max_shift: Largest shift in thumbnail pixels.
        zooms: Magnifications to try, each >= 1 (1.0 = none).

    Returns:
        (len(i),) float32 similarities in [-1, 1].
    """
    return _fast_similarity(thumbs, i, j, max_shift, zooms)[0]


def _fast_similarity(
    thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, max_shift: int, zooms: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`thumbnail_similarity` and, per pair, a bound on ``|reference - exact|``."""
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    n_pairs = i.size
    if n_pairs == 0:
        return np.full(0, -1.0, np.float32), np.zeros(0)
    used = np.unique(np.concatenate([i, j]))
    pos = np.searchsorted(used, np.concatenate([i, j]))
    pi, pj = pos[:n_pairs], pos[n_pairs:]
    base = thumbs[used]
    n_used, s = base.shape[0], base.shape[1]
    k = max_shift
    w = s - 2 * k
    # Centres: one row per (zoom, image), standardized exactly as the reference does (float32).
    centres = np.empty((len(zooms) * n_used, w * w), np.float64)
    centre_flat = np.empty(len(zooms) * n_used, bool)
    fixed_rows, moving, pair_of = [], [], []
    arange = np.arange(n_pairs)
    for z, factor in enumerate(zooms):
        c, c_std = _standardize(_zoom(base, factor)[:, k : k + w, k : k + w])
        centres[z * n_used : (z + 1) * n_used] = c.reshape(n_used, -1)
        centre_flat[z * n_used : (z + 1) * n_used] = c_std < _FLAT_STD
        directions = [(pi, pj)] if factor == 1.0 else [(pi, pj), (pj, pi)]
        for a, b in directions:
            fixed_rows.append(z * n_used + a)
            moving.append(b)
            pair_of.append(arange)
    fixed_row = np.concatenate(fixed_rows)
    moving_img = np.concatenate(moving)
    pair_idx = np.concatenate(pair_of)
    order = np.argsort(moving_img, kind="stable")
    fixed_row, moving_img, pair_idx = fixed_row[order], moving_img[order], pair_idx[order]
    bounds = np.searchsorted(moving_img, np.arange(n_used + 1))
    scores = np.full(fixed_row.size, -1.0, np.float64)
    err = np.zeros(fixed_row.size)
    gamma = _GAMMA_F32 * (w * w + 1)
    with threadpool_limits(limits=1, user_api="blas"):  # tiny products: BLAS threads only contend
        _score_by_moving(base, k, bounds, fixed_row, centres, centre_flat, scores, err)
    best = np.full(n_pairs, -1.0, np.float64)
    np.maximum.at(best, pair_idx, scores)
    bound = np.zeros(n_pairs)
    np.maximum.at(bound, pair_idx, err * gamma)
    return best.astype(np.float32), bound


def _score_by_moving(
    base: np.ndarray,
    k: int,
    bounds: np.ndarray,
    fixed_row: np.ndarray,
    centres: np.ndarray,
    centre_flat: np.ndarray,
    scores: np.ndarray,
    err: np.ndarray,
) -> None:
    """Fill ``scores[bounds[b]:bounds[b+1]]`` (best over shifts) for each moving image ``b``."""
    n_used, s = base.shape[0], base.shape[1]
    w = s - 2 * k
    for start in range(0, n_used, _IMG_BLOCK):
        block = base[start : start + _IMG_BLOCK]
        norm, flat, ratio = _window_stats(block, k)
        windows = np.lib.stride_tricks.sliding_window_view(block, (w, w), axis=(1, 2))
        windows = windows.reshape(block.shape[0], -1, w * w).astype(np.float64)
        for b in range(block.shape[0]):
            lo, hi = bounds[start + b], bounds[start + b + 1]
            if lo == hi:
                continue
            rows = fixed_row[lo:hi]
            corr = (centres[rows] @ windows[b].T) / norm[b]  # (partners, shifts)
            corr[:, flat[b]] = -1.0
            corr[centre_flat[rows]] = -1.0
            scores[lo:hi] = corr.max(axis=1)
            err[lo:hi] = ratio[b]


def _confirm_similarity(
    thumbs: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    max_shift: int,
    zooms: tuple[float, ...],
    threshold: float | np.ndarray,
) -> np.ndarray:
    """:func:`thumbnail_similarity` with the reference's confirmations and 4-decimal values.

    ``threshold``: one value, or one per pair (the per-pair threshold of :func:`pair_similarity`).

    The fast path sums in float64, the reference (:func:`_reference_similarity`) in float32.
    Values within the reference's worst-case float32 error bound of ``threshold`` are recomputed
    with the reference, so ``similarity >= threshold`` is provably the reference's decision.
    Values within ``_ROUND_RECHECK`` of that bound of a 4-decimal rounding boundary are
    recomputed too, so ``similarity.round(4)`` matches the reference (verified on the demo and
    synthetic sets; ``tests/test_similarity.py``).
    """
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    sim, bound = _fast_similarity(thumbs, i, j, max_shift, zooms)
    v = sim.astype(np.float64)
    bound = bound + 2.0**-23  # both sides rounded to float32
    frac = np.abs(v * 1e4 - np.floor(v * 1e4) - 0.5) * 1e-4
    risky = (np.abs(v - threshold) <= bound) | (frac <= _ROUND_RECHECK * bound)
    if risky.any():
        sim[risky] = _reference_similarity(thumbs, i[risky], j[risky], max_shift, zooms)
    log.info("similarity: %d of %d pairs rechecked with the reference", int(risky.sum()), sim.size)
    return sim


def shift_residual(thumbs: np.ndarray) -> np.ndarray:
    """The misalignment null of each thumbnail: how much it differs from itself moved by one pixel.

    ``1 - r``, with ``r`` the Pearson correlation of the thumbnail with itself shifted by one pixel,
    averaged over the horizontal and the vertical shift (on the inner window, no padding). A
    smooth picture (a low-resolution radiograph, a lesion on plain skin) barely changes when
    moved, so any other smooth picture of the same layout correlates highly with it: its null is
    small, and a candidate must match it far more closely than the plain correlation says. A
    detailed picture has a large null. Flat thumbnails get NaN (they are never confirmed).

    Args:
        thumbs: (n, s, s) thumbnails (any numeric dtype), s >= 3.

    Returns:
        (n,) float64 residuals in [0, 2] (NaN for a flat thumbnail).
    """
    t = np.asarray(thumbs, np.float64)
    centre = t[:, 1:-1, 1:-1]
    out = np.zeros(t.shape[0])
    flat = np.zeros(t.shape[0], bool)
    for moved in (t[:, 1:-1, 2:], t[:, 2:, 1:-1]):
        x = centre - centre.mean(axis=(1, 2), keepdims=True)
        y = moved - moved.mean(axis=(1, 2), keepdims=True)
        den = np.sqrt((x * x).sum(axis=(1, 2)) * (y * y).sum(axis=(1, 2)))
        flat |= den < 1e-9
        out += 0.5 * (1.0 - (x * y).sum(axis=(1, 2)) / np.maximum(den, 1e-9))
    out[flat] = np.nan
    return np.clip(out, 0.0, 2.0)


def pair_similarity(
    thumbnails: Thumbnails, frow: np.ndarray, i: np.ndarray, j: np.ndarray, params: DedupParams
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_confirm_similarity` of row pairs ``(i, j)`` and their misalignment null, loading only
    the thumbnails of those rows (``frow``: features-table row of each row, -1 for none).

    The null of a pair is the geometric mean of its two images' :func:`shift_residual`; a pair is
    confirmed when ``1 - similarity <= dedup.confirm_residual_ratio * null``, i.e. its similarity
    reaches ``1 - confirm_residual_ratio * null``: that per-pair threshold is the one whose side
    :func:`_confirm_similarity` makes exact. ``params``: ``align_max_shift`` and ``align_zooms``
    align.

    Memory is bounded whatever the number of candidates: thumbnails are held as uint8 (1 KB
    each) and pairs are scored in chunks that involve at most :data:`_CHUNK_IMAGES` images (pairs
    sorted, so an image's pairs mostly share a chunk and its work is shared); a pair's score
    depends only on its two thumbnails, so chunking changes no value.

    Returns:
        ``(similarity, null)``: float32 similarity in [-1, 1] (-1 where either has no thumbnail)
        and float64 null (NaN where either has no thumbnail or is flat).
    """
    sim = np.full(i.size, -1.0, np.float32)
    null = np.full(i.size, np.nan)
    both = (frow[i] >= 0) & (frow[j] >= 0)
    if not both.any():
        return sim, null
    rows = np.unique(np.concatenate([frow[i[both]], frow[j[both]]]))
    thumbs, present = thumbnails.get(rows)
    residual = np.where(present, shift_residual(thumbs), np.nan)
    a, b = np.searchsorted(rows, frow[i[both]]), np.searchsorted(rows, frow[j[both]])
    pair_null = np.sqrt(residual[a] * residual[b])
    threshold = 1.0 - params.confirm_residual_ratio * np.nan_to_num(pair_null, nan=0.0)
    ok = np.flatnonzero(present[a] & present[b])
    scored = np.full(a.size, -1.0, np.float32)
    for sel in _pair_chunks(a, b, ok, _CHUNK_IMAGES):
        used, pos = np.unique(np.concatenate([a[sel], b[sel]]), return_inverse=True)
        scored[sel] = _confirm_similarity(
            thumbs[used].astype(np.float32),
            pos[: sel.size],
            pos[sel.size :],
            params.align_max_shift,
            tuple(params.align_zooms),
            threshold[sel],
        )
    sim[both] = scored
    null[both] = pair_null
    return sim, null


def colour_difference(chroma_a: Sequence, chroma_b: Sequence) -> np.ndarray:
    """RMS CIELAB chroma difference (delta a*, b*) over the cells of two images' ``chroma`` grids.

    Args:
        chroma_a, chroma_b: ``chroma`` values of features.parquet (bytes; empty for a gray image).

    Returns:
        float64 per pair, in CIELAB units (a just-noticeable difference is about 2.3); NaN where
        either image is gray: colour cannot tell such a pair apart (a gray copy of a colour
        image is still a copy).
    """
    out = np.full(len(chroma_a), np.nan)
    for k, (x, y) in enumerate(zip(chroma_a, chroma_b, strict=True)):
        if isinstance(x, bytes | bytearray) and isinstance(y, bytes | bytearray) and x and len(x) == len(y):
            d = np.frombuffer(x, np.int8).astype(np.float64) - np.frombuffer(y, np.int8).astype(np.float64)
            out[k] = float(np.sqrt((d.reshape(-1, 2) ** 2).sum(axis=1).mean()))
    return out


def _pair_chunks(a: np.ndarray, b: np.ndarray, pairs: np.ndarray, max_images: int) -> Iterator[np.ndarray]:
    """Split ``pairs`` (indices into ``a``, ``b``), sorted by (a, b), into consecutive chunks that
    each involve at most ``max_images`` distinct images (a single pair always fits)."""
    order = pairs[np.lexsort((b[pairs], a[pairs]))]
    start = 0
    while start < order.size:
        rest = order[start:]
        seq = np.stack([a[rest], b[rest]], axis=1).ravel()
        _, first = np.unique(seq, return_index=True)
        is_new = np.zeros(seq.size, np.int64)
        is_new[first] = 1
        distinct = np.cumsum(is_new)[1::2]  # distinct images up to and including each pair
        n = max(1, int(np.searchsorted(distinct, max_images, side="right")))
        yield rest[:n]
        start += n
