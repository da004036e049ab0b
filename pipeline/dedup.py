"""Exact and near-duplicate detection: hash candidates, pixel-level confirmation, clusters.

Reads only per-image features computed once at ingest (``features.parquet``: ``pixel_sha256``,
imagededup hashes, a 32x32 intensity-normalized thumbnail), never the images.
:func:`find_duplicates` is a sequence of named steps:

1. **Exact** links (:func:`exact_links`): the same file bytes (manifest ``sha256``) or the same
   decoded pixels (``pixel_sha256``: a PNG re-saved with other metadata, a lossless format change).
2. **Near candidates** (:func:`near_candidates`): pairs whose imagededup hash
   (``dedup.hash_method``) differs in at most ``dedup.max_distance`` bits, found with the
   multi-index hash of :mod:`pipeline.hamming_index` (exact, sub-quadratic; same pairs as
   imagededup's brute force).
3. **Confirmation** (:func:`confirm`): radiographs of different patients hash alike, so a
   candidate joins a cluster only if its thumbnails, aligned, match far better than the two
   pictures match *themselves after a deliberate misalignment*, and, for colour images, their
   colours agree:

   * the similarity is :func:`pipeline.similarity.thumbnail_similarity` (the best Pearson
     correlation over small zooms and shifts, so a slightly cropped, shifted or resized copy
     still matches; correlation ignores brightness and contrast changes);
   * the null is :func:`pipeline.similarity.shift_residual`: ``1 - `` the correlation of each
     thumbnail with itself moved by one pixel (geometric mean of the two). No fixed correlation
     separates copies from look-alikes: smooth pictures (low-resolution radiographs, lesions on
     plain skin) correlate 0.96 with other pictures of the same layout, detailed ones do not.
     Measured against each pair's own null, the rule adapts to the data at hand: confirmed when
     ``1 - similarity <= dedup.confirm_residual_ratio * null``;
   * colour (:func:`pipeline.similarity.colour_difference`, both images colour): the RMS
     CIELAB chroma difference over a 4x4 grid is at most ``dedup.max_colour_difference``, so two
     lesions of one shape but another hue (a brown naevus, a magenta vascular lesion) are not
     copies. A pair with a gray image is judged on the gray thumbnails alone.
4. **Clusters** (:func:`cluster_members`): connected components (:mod:`pipeline.graph`) of exact
   and confirmed near links. The representative is the best-quality member (fewest quality
   issues, then highest summed quality score), then the largest (``width * height``), then the
   smallest ``image_id``: never file-system order.
5. **Tables**: :func:`duplicates_table` (one row per member; a cluster is flagged when its
   members belong to more than one patient, ``is_cross_patient``, or carry more than one label,
   ``is_label_conflict``) and :func:`pairs_table` (every exact link and near candidate).
6. **Metrics** (:func:`dedup_metrics`): counts for ``metrics/dedup.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from pipeline.contract import QUALITY_ISSUES, STATUS_OK, flag_col, require_columns, score_col
from pipeline.graph import components, links_sharing_key
from pipeline.hamming_index import hex_to_uint64, search_pairs
from pipeline.params import DedupParams
from pipeline.similarity import Thumbnails, colour_difference, pair_similarity

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
    "residual_ratio",
    "colour_difference",
    "is_confirmed",
    "patient_id_a",
    "patient_id_b",
    "label_a",
    "label_b",
]

Scorer = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Aligned thumbnail similarity (float32, -1 = none) and misalignment null (float64, NaN = none) of
row pairs ``(i, j)`` of the ok-image table (:func:`pipeline.similarity.pair_similarity`)."""


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


@dataclass(frozen=True)
class Candidates:
    """Near-duplicate candidates: row pairs of the ok-image table and what was decided about them.

    Attributes:
        i, j: int64 row positions of the two images, one entry per pair.
        distance: int64 Hamming distance of their hashes.
        similarity: float32 aligned thumbnail similarity in [-1, 1] (-1: no thumbnail or flat).
        residual_ratio: float64 ``(1 - similarity) / null`` (inf where the null is NaN or 0).
        colour_difference: float64 RMS CIELAB chroma difference (NaN unless both are colour).
        is_confirmed: ``residual_ratio <= dedup.confirm_residual_ratio`` (decided exactly on the
            similarity) and the colours agree.
    """

    i: np.ndarray
    j: np.ndarray
    distance: np.ndarray
    similarity: np.ndarray
    residual_ratio: np.ndarray
    colour_difference: np.ndarray
    is_confirmed: np.ndarray


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


def ok_images(manifest: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """The ``status == ok`` images with their features, sorted by ``image_id`` (row order free).

    Returns:
        One row per ok image: the manifest and features columns (no thumbnails) and ``_frow``, the
        image's row in ``features`` (NaN when it has none), which :class:`Thumbnails` reads by.
    """
    features = features.drop(columns=["thumb", "thumb_size"], errors="ignore")
    features = features.assign(_frow=np.arange(len(features), dtype=np.int64))
    ok = manifest[manifest["status"] == STATUS_OK]
    df = ok.merge(features, on="image_id", how="left", validate="one_to_one")
    return df.sort_values("image_id", ignore_index=True)


def _chroma_column(images: pd.DataFrame) -> np.ndarray:
    """The ``chroma`` bytes of every row (empty where the features table has none: gray, or a
    features table written before the column existed)."""
    if "chroma" not in images.columns:
        return np.full(len(images), b"", dtype=object)
    return np.array([c if isinstance(c, bytes | bytearray) else b"" for c in images["chroma"]], dtype=object)


def exact_links(images: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: links between rows with the same file bytes or the same decoded pixels.

    Returns:
        int64 ``(i, j)`` with ``i < j``, one link per pair (a pair with the same bytes also has
        the same pixels), sorted by ``(i, j)``.
    """
    n = len(images)
    ea, eb = zip(links_sharing_key(images["sha256"]), links_sharing_key(images["pixel_sha256"]), strict=True)
    ex_i, ex_j = np.concatenate(ea), np.concatenate(eb)
    if ex_i.size:
        lo, hi = np.minimum(ex_i, ex_j), np.maximum(ex_i, ex_j)
        _, first = np.unique(lo * n + hi, return_index=True)
        ex_i, ex_j = lo[first], hi[first]
    return ex_i, ex_j


def hash_codes(images: pd.DataFrame, hash_method: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows that have a ``hash_method`` hash, and the uint64 code of every row (0 where none)."""
    has_hash = images[hash_method].fillna("").astype(str) != ""
    rows = np.flatnonzero(has_hash.to_numpy())
    codes = np.zeros(len(images), np.uint64)
    codes[rows] = hex_to_uint64(images.loc[rows, hash_method])
    return rows, codes


def near_candidates(
    rows: np.ndarray, codes: np.ndarray, exact_group: np.ndarray, params: DedupParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 2: pairs of ``rows`` whose hashes differ in at most ``max_distance`` bits.

    Pairs that are already exact copies (same ``exact_group``) need no confirmation and are left out.

    Returns:
        int64 ``(i, j, distance)``, one entry per candidate pair.
    """
    ci, cj, cdist = search_pairs(codes[rows], params.max_distance)
    ci, cj = rows[ci], rows[cj]
    new = exact_group[ci] != exact_group[cj]
    ci, cj, cdist = ci[new], cj[new], cdist[new]
    log.info(
        "%d near-duplicate candidates within %d bits (%s)", ci.size, params.max_distance, params.hash_method
    )
    return ci, cj, cdist


def confirm(
    ci: np.ndarray, cj: np.ndarray, cdist: np.ndarray, score: Scorer, chroma: np.ndarray, params: DedupParams
) -> Candidates:
    """Step 3: score every candidate on its aligned thumbnails against its misalignment null, and
    on its colours (see the module docstring).

    Args:
        ci, cj, cdist: The candidates (:func:`near_candidates`).
        score: Similarity and null of row pairs.
        chroma: ``chroma`` bytes of every row of the ok-image table (empty for gray images).
        params: ``confirm_residual_ratio``, ``max_colour_difference``.
    """
    sim, null = score(ci, cj)
    threshold = 1.0 - params.confirm_residual_ratio * np.nan_to_num(null, nan=0.0)
    is_similar = (sim >= threshold) & (sim > -1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isfinite(null) & (null > 0), (1.0 - sim.astype(np.float64)) / null, np.inf)
    colour = colour_difference(chroma[ci], chroma[cj]) if ci.size else np.zeros(0)
    colour_differs = colour > params.max_colour_difference  # NaN (a gray image) never differs
    confirmed = is_similar & ~colour_differs
    log.info(
        "confirmed %d, rejected %d candidates (1 - similarity <= %g x misalignment null; %d of the "
        "similar ones rejected for a colour difference > %g)",
        confirmed.sum(),
        (~confirmed).sum(),
        params.confirm_residual_ratio,
        int((is_similar & colour_differs).sum()),
        params.max_colour_difference,
    )
    return Candidates(
        i=ci, j=cj, distance=cdist, similarity=sim, residual_ratio=ratio, colour_difference=colour,
        is_confirmed=confirmed,
    )  # fmt: skip


def cluster_members(images: pd.DataFrame, cluster: np.ndarray, quality: pd.DataFrame) -> pd.DataFrame:
    """Step 4: the rows of ``images`` in a cluster of two or more, with their representative.

    Args:
        images: The ok-image table (:func:`ok_images`).
        cluster: Component label of every row (exact and confirmed near links).
        quality: quality.parquet, to rank the members.

    Returns:
        The member rows (index = row in ``images``) with ``_cluster`` (component label),
        ``is_representative`` (one per cluster: fewest issues, best total score, largest, smallest
        ``image_id``) and ``cluster_id`` (``dupNNNNN``, numbered in the order of the
        representatives' ``image_id``: deterministic).
    """
    sizes = np.bincount(cluster, minlength=len(images))
    members = images[sizes[cluster] > 1].copy()
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
    name_of = pd.Series(
        [f"dup{k:05d}" for k in range(len(reps))], index=reps.sort_values("image_id")["_cluster"].to_numpy()
    )
    members["cluster_id"] = members["_cluster"].map(name_of)
    return members


def duplicates_table(
    members: pd.DataFrame, exact_group: np.ndarray, codes: np.ndarray, score: Scorer
) -> pd.DataFrame:
    """Step 5a: duplicates.parquet: each member's kind, distance and similarity to its representative.

    ``kind`` is ``exact`` when the member is pixel-identical to another member (whichever copy is
    kept), else ``near``; exact copies of the representative have distance 0 and similarity 1.

    Args:
        members: :func:`cluster_members`.
        exact_group: Exact-copy component of every row of the ok-image table.
        codes: Hash code of every row (:func:`hash_codes`).
        score: Thumbnail similarity of row pairs.

    Returns:
        ``DUPLICATES_COLUMNS``, sorted by cluster, representative first, then ``image_id``.
    """
    reps = members.loc[members["is_representative"]]
    rep_of = pd.Series(reps.index.to_numpy(), index=reps["_cluster"].to_numpy())  # cluster -> row
    rep_row = members["_cluster"].map(rep_of).to_numpy(np.int64)
    member_row = members.index.to_numpy()
    same_exact = exact_group[member_row] == exact_group[rep_row]
    exact_sizes = np.bincount(exact_group, minlength=len(exact_group))
    members = members.assign(kind=np.where(exact_sizes[exact_group[member_row]] > 1, "exact", "near"))
    members["distance"] = np.where(
        same_exact, 0, np.bitwise_count(codes[member_row] ^ codes[rep_row]).astype(np.int64)
    )
    to_rep = np.where(same_exact, 1.0, -1.0).astype(np.float32)
    to_rep[~same_exact] = score(member_row[~same_exact], rep_row[~same_exact])[0]
    members["similarity"] = to_rep.round(4)
    per_cluster = members.groupby("_cluster")
    members["is_cross_patient"] = members["_cluster"].map(per_cluster["patient_id"].agg(_distinct) > 1)
    members["is_label_conflict"] = members["_cluster"].map(per_cluster["label"].agg(_distinct) > 1)
    return (
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


def pairs_table(images: pd.DataFrame, ex_i: np.ndarray, ex_j: np.ndarray, near: Candidates) -> pd.DataFrame:
    """Step 5b: reports/dedup/pairs.csv: every exact link and every near candidate, by ``image_id``."""
    pi = np.concatenate([ex_i, near.i])
    pj = np.concatenate([ex_j, near.j])
    n_exact = ex_i.size
    return pd.DataFrame(
        {
            "image_id_a": images["image_id"].to_numpy()[pi],
            "image_id_b": images["image_id"].to_numpy()[pj],
            "link": ["exact"] * n_exact + ["near"] * near.i.size,
            "distance": np.concatenate([np.zeros(n_exact, np.int64), near.distance]),
            "similarity": np.concatenate([np.ones(n_exact, np.float32), near.similarity]).round(4),
            "residual_ratio": np.concatenate([np.zeros(n_exact), near.residual_ratio]).round(4),
            "colour_difference": np.concatenate([np.full(n_exact, np.nan), near.colour_difference]).round(2),
            "is_confirmed": np.concatenate([np.ones(n_exact, bool), near.is_confirmed]),
            "patient_id_a": images["patient_id"].to_numpy()[pi],
            "patient_id_b": images["patient_id"].to_numpy()[pj],
            "label_a": images["label"].to_numpy()[pi],
            "label_b": images["label"].to_numpy()[pj],
        },
        columns=PAIRS_COLUMNS,
    ).sort_values(["image_id_a", "image_id_b"], ignore_index=True)


def dedup_metrics(duplicates: pd.DataFrame, n_images: int, near: Candidates, params: DedupParams) -> dict:
    """Step 6: the counts of ``metrics/dedup.json``."""
    clusters = duplicates.drop_duplicates("cluster_id")
    non_rep = duplicates[~duplicates["is_representative"]]
    return {
        "n_images": n_images,
        "n_exact": int((non_rep["kind"] == "exact").sum()),
        "n_near": int((non_rep["kind"] == "near").sum()),
        "n_clusters": len(clusters),
        "n_images_in_clusters": len(duplicates),
        "n_cross_patient_clusters": int(clusters["is_cross_patient"].sum()),
        "n_label_conflict_clusters": int(clusters["is_label_conflict"].sum()),
        "n_candidates": int(near.i.size),
        "n_candidates_confirmed": int(near.is_confirmed.sum()),
        "n_candidates_rejected": int((~near.is_confirmed).sum()),
        "n_candidates_rejected_for_colour": int(
            (~near.is_confirmed & (near.colour_difference > params.max_colour_difference)).sum()
        ),
        "hash_method": params.hash_method,
        "max_distance": params.max_distance,
        "confirm_residual_ratio": params.confirm_residual_ratio,
        "max_colour_difference": params.max_colour_difference,
    }


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
        InputError: If a required column is missing (names the table and column).
    """
    require_columns(manifest, MANIFEST_COLUMNS, "manifest")
    thumb_columns = ["thumb", "thumb_size"] if thumbnails is None else []
    require_columns(
        features,
        ["image_id", "pixel_sha256", params.hash_method, *thumb_columns],
        "features",
        hint=f"dedup.hash_method={params.hash_method!r}",
    )
    if thumbnails is None:
        thumbnails = Thumbnails.from_frame(features)
    images = ok_images(manifest, features)
    n = len(images)
    frow = images["_frow"].fillna(-1).to_numpy(np.int64)  # features-table row of each row
    score = partial(pair_similarity, thumbnails, frow, params=params)

    # 1. exact links, and the groups of exact copies they make
    ex_i, ex_j = exact_links(images)
    exact_group = components(n, ex_i, ex_j)
    # 2. near candidates from the hash index (rows without a hash take no part), 3. confirmed
    rows, codes = hash_codes(images, params.hash_method)
    chroma = _chroma_column(images)
    near = confirm(*near_candidates(rows, codes, exact_group, params), score, chroma, params)
    # 4. clusters of exact and confirmed near links, 5. tables, 6. metrics
    confirmed = near.is_confirmed
    cluster = components(
        n, np.concatenate([ex_i, near.i[confirmed]]), np.concatenate([ex_j, near.j[confirmed]])
    )
    duplicates = duplicates_table(cluster_members(images, cluster, quality), exact_group, codes, score)
    return DedupResult(
        duplicates=duplicates,
        pairs=pairs_table(images, ex_i, ex_j, near),
        metrics=dedup_metrics(duplicates, n, near, params),
    )


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
