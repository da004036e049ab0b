"""Exact and near-duplicate detection: hash candidates, pixel-level confirmation, clusters.

Reads only per-image features computed once at ingest (``features.parquet``: ``pixel_sha256``,
imagededup hashes, a 32x32 intensity-normalized thumbnail), never the images.

1. **Exact** links: the same file bytes (manifest ``sha256``) or the same decoded pixels
   (``pixel_sha256``: a PNG re-saved with other metadata, a lossless format change).
2. **Near candidates**: pairs whose imagededup hash (``dedup.hash_method``) differs in at most
   ``dedup.max_distance`` bits, found with the multi-index hash of
   :mod:`pipeline.hamming_index` (exact, sub-quadratic; same pairs as imagededup's brute force).
3. **Confirmation**: radiographs of different patients hash alike, so a candidate joins a
   cluster only if its thumbnails, aligned, correlate at least ``dedup.confirm_similarity``
   (:func:`thumbnail_similarity`: the best Pearson correlation over small zooms and shifts, so
   a slightly cropped, shifted or resized copy still matches; correlation ignores brightness and
   contrast changes).
4. **Clusters**: connected components (union-find) of exact and confirmed near links. The
   representative is the best-quality member (fewest quality issues, then highest summed
   quality score), then the largest (``width * height``), then the smallest ``image_id``: never
   file-system order. A cluster is flagged when its members belong to more than one patient
   (``is_cross_patient``) or carry more than one label (``is_label_conflict``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from threadpoolctl import threadpool_limits

from pipeline.contract import STATUS_OK, flag_col, score_col
from pipeline.hamming_index import hex_to_uint64, search_pairs
from pipeline.params import QUALITY_ISSUES, DedupParams

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["image_id", "sha256", "width", "height", "patient_id", "label", "status"]
"""Manifest columns :func:`find_duplicates` reads."""
DUPLICATES_COLUMNS = [
    "image_id",
    "cluster_id",
    "kind",
    "is_representative",
    "distance",
    "similarity",
    "is_cross_patient",
    "is_label_conflict",
]
PAIRS_COLUMNS = [
    "image_id_a",
    "image_id_b",
    "link",
    "distance",
    "similarity",
    "is_confirmed",
    "patient_id_a",
    "patient_id_b",
    "label_a",
    "label_b",
]
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


@dataclass(frozen=True)
class DedupResult:
    """Output of :func:`find_duplicates`.

    Attributes:
        duplicates: One row per member of every cluster (``DUPLICATES_COLUMNS``).
        pairs: Every exact link and every near candidate, confirmed or not (``PAIRS_COLUMNS``).
        metrics: Counts for ``metrics/dedup.json``.
    """

    duplicates: pd.DataFrame
    pairs: pd.DataFrame
    metrics: dict


# --- thumbnail similarity ---------------------------------------------------------------------


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
    threshold: float,
) -> np.ndarray:
    """:func:`thumbnail_similarity` with the reference's confirmations and 4-decimal values.

    The fast path sums in float64, the reference (:func:`_reference_similarity`) in float32.
    Values within the reference's worst-case float32 error bound of ``threshold`` are recomputed
    with the reference, so ``similarity >= threshold`` is provably the reference's decision.
    Values within ``_ROUND_RECHECK`` of that bound of a 4-decimal rounding boundary are
    recomputed too, so ``similarity.round(4)`` matches the reference (verified on the demo and
    synthetic sets; ``tests/test_dedup.py``).
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


def _pair_similarity(
    thumbnails: Thumbnails, frow: np.ndarray, i: np.ndarray, j: np.ndarray, params: DedupParams
) -> np.ndarray:
    """:func:`_confirm_similarity` of row pairs ``(i, j)``, loading only the thumbnails of those rows
    (``frow``: features-table row of each row, -1 for none); -1 where either has no thumbnail.

    Memory is bounded whatever the number of candidates: thumbnails are held as uint8 (1 KB
    each) and pairs are scored in chunks that involve at most :data:`_CHUNK_IMAGES` images (pairs
    sorted, so an image's pairs mostly share a chunk and its work is shared); a pair's score
    depends only on its two thumbnails, so chunking changes no value.
    """
    sim = np.full(i.size, -1.0, np.float32)
    both = (frow[i] >= 0) & (frow[j] >= 0)
    if not both.any():
        return sim
    rows = np.unique(np.concatenate([frow[i[both]], frow[j[both]]]))
    thumbs, present = thumbnails.get(rows)
    a, b = np.searchsorted(rows, frow[i[both]]), np.searchsorted(rows, frow[j[both]])
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
            params.confirm_similarity,
        )
    sim[both] = scored
    return sim


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


# --- clustering -------------------------------------------------------------------------------


def _exact_links(keys: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Links (index pairs) chaining the rows that share a non-empty key."""
    k = keys.fillna("").astype(str).to_numpy()
    idx = np.flatnonzero(k != "")
    if idx.size < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = idx[np.argsort(k[idx], kind="stable")]
    same = k[order[1:]] == k[order[:-1]]
    return order[:-1][same].astype(np.int64), order[1:][same].astype(np.int64)


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n nodes given undirected edges (union-find)."""
    graph = coo_matrix((np.ones(i.size, np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def quality_rank(table: pd.DataFrame, quality: pd.DataFrame) -> pd.DataFrame:
    """Columns ``n_issues`` and ``quality_total`` for each image (missing quality = worst).

    Args:
        table: Rows with ``image_id``.
        quality: quality.parquet (``<issue>_score``, ``is_<issue>_issue``).
    """
    q = quality.set_index("image_id") if len(quality) else pd.DataFrame(index=pd.Index([], name="image_id"))
    flags = [flag_col(x) for x in QUALITY_ISSUES if flag_col(x) in q.columns]
    scores = [score_col(x) for x in QUALITY_ISSUES if score_col(x) in q.columns]
    n_issues = q[flags].astype(bool).sum(axis=1) if flags else pd.Series(0, index=q.index)
    total = q[scores].astype(float).sum(axis=1) if scores else pd.Series(0.0, index=q.index)
    ids = table["image_id"]
    return pd.DataFrame(
        {
            "n_issues": ids.map(n_issues).fillna(len(QUALITY_ISSUES)).astype(int).to_numpy(),
            "quality_total": ids.map(total).fillna(-1.0).astype(float).to_numpy(),
        },
        index=table.index,
    )


def _distinct(values: pd.Series) -> int:
    v = values.fillna("").astype(str)
    return int(v[v != ""].nunique())


def find_duplicates(
    manifest: pd.DataFrame,
    features: pd.DataFrame,
    quality: pd.DataFrame,
    params: DedupParams,
    thumbnails: Thumbnails | None = None,
) -> DedupResult:
    """Find exact and near-duplicate clusters among the ``status == ok`` images.

    Args:
        manifest: manifest.parquet (``image_id, sha256, width, height, patient_id, label, status``).
        features: features.parquet (``image_id, pixel_sha256, <hash_method>``, and ``thumb,
            thumb_size`` unless ``thumbnails`` is given).
        quality: quality.parquet, used to choose the representative.
        params: The ``dedup`` params section.
        thumbnails: Where the thumbnails of ``features``' rows are read from (the stage passes
            :meth:`Thumbnails.from_parquet` of the same file, so the column is never loaded whole);
            None = the ``thumb`` column of ``features``.

    Returns:
        The :class:`DedupResult`.

    Raises:
        ValueError: If a required column is missing (names the table and column).
    """
    for name, table, cols in (
        ("manifest", manifest, MANIFEST_COLUMNS),
        ("features", features, ["image_id", "pixel_sha256", params.hash_method]
         + (["thumb", "thumb_size"] if thumbnails is None else [])),
    ):  # fmt: skip
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise ValueError(
                f"{name}: missing column(s) {missing} (dedup.hash_method={params.hash_method!r})"
            )
    if thumbnails is None:
        thumbnails = Thumbnails.from_frame(features)
    features = features.drop(columns=["thumb", "thumb_size"], errors="ignore")
    features = features.assign(_frow=np.arange(len(features), dtype=np.int64))
    ok = manifest[manifest["status"] == STATUS_OK]
    df = ok.merge(features, on="image_id", how="left", validate="one_to_one")
    df = df.sort_values("image_id", ignore_index=True)
    n = len(df)
    frow = df["_frow"].fillna(-1).to_numpy(np.int64)  # features-table row of each df row

    # 1. exact links
    ea, eb = zip(_exact_links(df["sha256"]), _exact_links(df["pixel_sha256"]), strict=True)
    ex_i, ex_j = np.concatenate(ea), np.concatenate(eb)
    if ex_i.size:  # a pair with the same bytes also has the same pixels: keep one link
        lo, hi = np.minimum(ex_i, ex_j), np.maximum(ex_i, ex_j)
        _, first = np.unique(lo * n + hi, return_index=True)
        ex_i, ex_j = lo[first], hi[first]
    exact_group = _components(n, ex_i, ex_j)

    # 2. near candidates from the hash index (rows without a hash take no part)
    has_hash = df[params.hash_method].fillna("").astype(str) != ""
    rows = np.flatnonzero(has_hash.to_numpy())
    codes = hex_to_uint64(df.loc[rows, params.hash_method])
    ci, cj, cdist = search_pairs(codes, params.max_distance)
    ci, cj = rows[ci], rows[cj]
    new = exact_group[ci] != exact_group[cj]  # already exact copies: no need to confirm
    ci, cj, cdist = ci[new], cj[new], cdist[new]
    log.info(
        "%d near-duplicate candidates within %d bits (%s)", ci.size, params.max_distance, params.hash_method
    )

    # 3. confirmation on thumbnails
    sim = _pair_similarity(thumbnails, frow, ci, cj, params)
    confirmed = sim >= params.confirm_similarity
    log.info(
        "confirmed %d, rejected %d candidates (similarity >= %g)",
        confirmed.sum(),
        (~confirmed).sum(),
        params.confirm_similarity,
    )

    # 4. clusters
    cluster = _components(n, np.concatenate([ex_i, ci[confirmed]]), np.concatenate([ex_j, cj[confirmed]]))
    sizes = np.bincount(cluster, minlength=n)
    members = df[sizes[cluster] > 1].copy()
    members["_cluster"] = cluster[sizes[cluster] > 1]
    members = pd.concat([members, quality_rank(members, quality)], axis=1)
    members["_area"] = members["width"].astype("Int64").fillna(0).astype(np.int64) * members["height"].astype(
        "Int64"
    ).fillna(0).astype(np.int64)
    members = members.sort_values(
        ["_cluster", "n_issues", "quality_total", "_area", "image_id"],
        ascending=[True, True, False, False, True],
    )
    members["is_representative"] = ~members["_cluster"].duplicated()
    reps = members.loc[members["is_representative"]]
    rep_of = pd.Series(reps.index.to_numpy(), index=reps["_cluster"].to_numpy())  # cluster -> df row
    # cluster ids numbered in the order of the representatives' image_ids: deterministic
    name_of = pd.Series(
        [f"dup{k:05d}" for k in range(len(reps))], index=reps.sort_values("image_id")["_cluster"].to_numpy()
    )
    members["cluster_id"] = members["_cluster"].map(name_of)
    rep_row = members["_cluster"].map(rep_of).to_numpy(np.int64)
    member_row = members.index.to_numpy()
    same_exact = exact_group[member_row] == exact_group[rep_row]
    # exact = pixel-identical to another member (whichever copy is kept); near = only similar
    exact_sizes = np.bincount(exact_group, minlength=n)
    members["kind"] = np.where(exact_sizes[exact_group[member_row]] > 1, "exact", "near")
    # distance and similarity to the representative
    all_codes = np.zeros(n, np.uint64)
    all_codes[rows] = codes
    members["distance"] = np.where(
        same_exact, 0, np.bitwise_count(all_codes[member_row] ^ all_codes[rep_row]).astype(np.int64)
    )
    to_rep = np.where(same_exact, 1.0, -1.0).astype(np.float32)
    to_rep[~same_exact] = _pair_similarity(
        thumbnails, frow, member_row[~same_exact], rep_row[~same_exact], params
    )
    members["similarity"] = to_rep.round(4)
    per_cluster = members.groupby("_cluster")
    members["is_cross_patient"] = members["_cluster"].map(per_cluster["patient_id"].agg(_distinct) > 1)
    members["is_label_conflict"] = members["_cluster"].map(per_cluster["label"].agg(_distinct) > 1)
    duplicates = (
        members.sort_values(["cluster_id", "is_representative", "image_id"], ascending=[True, False, True])[
            DUPLICATES_COLUMNS
        ]
        .astype(
            {
                "distance": np.int64,
                "is_representative": bool,
                "is_cross_patient": bool,
                "is_label_conflict": bool,
            }
        )
        .reset_index(drop=True)
    )

    # pairs table: exact links and every near candidate
    pi = np.concatenate([ex_i, ci])
    pj = np.concatenate([ex_j, cj])
    pairs = pd.DataFrame(
        {
            "image_id_a": df["image_id"].to_numpy()[pi],
            "image_id_b": df["image_id"].to_numpy()[pj],
            "link": ["exact"] * ex_i.size + ["near"] * ci.size,
            "distance": np.concatenate([np.zeros(ex_i.size, np.int64), cdist]),
            "similarity": np.concatenate([np.ones(ex_i.size, np.float32), sim]).round(4),
            "is_confirmed": np.concatenate([np.ones(ex_i.size, bool), confirmed]),
            "patient_id_a": df["patient_id"].to_numpy()[pi],
            "patient_id_b": df["patient_id"].to_numpy()[pj],
            "label_a": df["label"].to_numpy()[pi],
            "label_b": df["label"].to_numpy()[pj],
        },
        columns=PAIRS_COLUMNS,
    ).sort_values(["image_id_a", "image_id_b"], ignore_index=True)

    clusters = duplicates.drop_duplicates("cluster_id")
    non_rep = duplicates[~duplicates["is_representative"]]
    metrics = {
        "n_images": n,
        "n_exact": int((non_rep["kind"] == "exact").sum()),
        "n_near": int((non_rep["kind"] == "near").sum()),
        "n_clusters": len(clusters),
        "n_images_in_clusters": len(duplicates),
        "n_cross_patient_clusters": int(clusters["is_cross_patient"].sum()),
        "n_label_conflict_clusters": int(clusters["is_label_conflict"].sum()),
        "n_candidates": int(ci.size),
        "n_candidates_confirmed": int(confirmed.sum()),
        "n_candidates_rejected": int((~confirmed).sum()),
        "hash_method": params.hash_method,
        "max_distance": params.max_distance,
        "confirm_similarity": params.confirm_similarity,
    }
    return DedupResult(duplicates=duplicates, pairs=pairs, metrics=metrics)


def pairs_for_sheet(pairs: pd.DataFrame, n: int) -> pd.DataFrame:
    """The pairs worth a human look, most useful first.

    Confirmed pairs across patients, then confirmed near pairs with the lowest similarity (the
    borderline ones), then rejected candidates with the highest similarity (what the threshold
    turned away). At most ``n`` pairs.
    """
    near = pairs[pairs["link"] == "near"]
    conf = near[near["is_confirmed"]]
    cross = conf[conf["patient_id_a"] != conf["patient_id_b"]].sort_values("similarity")
    rest = conf.drop(cross.index).sort_values("similarity")
    rejected = near[~near["is_confirmed"]].sort_values("similarity", ascending=False)
    k_rej = min(len(rejected), max(n // 4, n - len(cross) - len(rest)))
    chosen = pd.concat([cross, rest]).head(n - k_rej)
    return pd.concat([chosen, rejected.head(k_rej)]).head(n)
