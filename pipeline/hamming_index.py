"""All pairs of 64-bit hashes within a Hamming distance, without comparing every pair.

Brute force compares n^2 / 2 pairs: fine for 10k hashes, hopeless for 1M. This module uses
**multi-index hashing** (Norouzi et al., "Fast search in Hamming space with multi-index
hashing", CVPR 2012) with the *generalized pigeonhole principle* (Qin et al., "GPH", ICDE 2018):

* The 64 bits are cut into ``m`` contiguous chunks, chunk ``t`` gets a radius ``r_t`` with
  ``sum(r_t + 1) == max_distance + 1``. If two hashes are within ``max_distance``, then in at
  least one chunk they differ in at most ``r_t`` bits (otherwise they would differ in at least
  ``sum(r_t + 1) > max_distance`` bits). So searching every chunk for keys within its radius
  finds **every** pair brute force finds: the index is exact, not approximate.
* Each chunk is a sorted table (CSR offsets over the chunk's key space). For every bit mask of
  weight <= ``r_t`` all hashes look up ``key ^ mask`` at once (numpy, no Python loop per hash).
* Each candidate is verified with a popcount of the full 64-bit XOR, and kept only in the first
  chunk that could have found it, so no pair is reported twice.

The number of chunks is chosen by a small cost model (table look-ups + candidates to verify),
which depends on ``n`` and ``max_distance``. Cost grows quickly with the radius: at ``n = 1M``
random hashes, ``max_distance = 8`` costs a few hundred million candidate checks, ``10`` a few
billion (see ``bench/dedup_scaling.py``).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

N_BITS = 64
# Chunks up to this many bits get a dense offsets table (2**bits + 1 int64); longer ones use
# binary search on the sorted keys.
_MAX_DENSE_BITS = 24
# Cost of one binary-search look-up relative to one dense look-up (log2 n gathers).
_SEARCHSORTED_COST = 8.0
# Cap on bit masks enumerated per chunk; plans beyond it are not considered.
_MAX_MASKS = 200_000


@dataclass(frozen=True)
class Chunk:
    """One index table: bits ``[shift, shift + n_bits)`` of the hash, searched within ``radius``."""

    shift: int
    n_bits: int
    radius: int


def hex_to_uint64(hashes: Iterable[str]) -> np.ndarray:
    """Parse hexadecimal hash strings (imagededup's 16-character format) to uint64.

    Args:
        hashes: Hex strings of at most 16 digits.

    Returns:
        uint64 array, one value per hash.

    Raises:
        ValueError: If a hash is not a hex string of at most 64 bits (names its position).
    """
    out = []
    for pos, h in enumerate(hashes):
        try:
            value = int(str(h), 16)
        except ValueError as err:
            raise ValueError(f"hash #{pos}: expected a hexadecimal string, got {h!r}") from err
        if value >> N_BITS:
            raise ValueError(f"hash #{pos}: expected at most 64 bits (16 hex digits), got {h!r}")
        out.append(value)
    return np.array(out, dtype=np.uint64)


def _ball_size(n_bits: int, radius: int) -> int:
    """Number of bit masks of weight <= radius over n_bits bits."""
    return sum(math.comb(n_bits, k) for k in range(radius + 1))


def _split_bits(n_chunks: int) -> list[tuple[int, int]]:
    """(shift, n_bits) of ``n_chunks`` contiguous chunks covering 64 bits, sizes differ by <= 1."""
    base, extra = divmod(N_BITS, n_chunks)
    out, shift = [], 0
    for t in range(n_chunks):
        bits = base + (1 if t < extra else 0)
        out.append((shift, bits))
        shift += bits
    return out


def plan_chunks(n: int, max_distance: int, n_chunks: int | None = None) -> list[Chunk]:
    """Choose the chunks and their radii for ``n`` hashes searched within ``max_distance``.

    Args:
        n: Number of hashes.
        max_distance: Hamming radius, 0..64.
        n_chunks: Force the number of chunks (1..max_distance + 1); ``None`` = cost model.

    Returns:
        The chunks; their radii satisfy ``sum(radius + 1) == max_distance + 1``.

    Raises:
        ValueError: If ``max_distance`` or ``n_chunks`` is out of range.
    """
    if not 0 <= max_distance <= N_BITS:
        raise ValueError(f"max_distance must be in [0, 64], got {max_distance}")

    def chunks_for(m: int) -> list[Chunk]:
        base, extra = divmod(max_distance + 1, m)
        # Longer chunks (the first ones) take the larger radii: their tables are sparser.
        return [
            Chunk(shift, bits, base - 1 + (1 if t < extra else 0))
            for t, (shift, bits) in enumerate(_split_bits(m))
        ]

    def cost(chunks: list[Chunk]) -> float:
        # Per mask: look up half the distinct keys, verify the candidates, plus a fixed
        # numpy-call overhead (~ the cost of a few thousand element operations).
        total = 0.0
        for c in chunks:
            space = 2.0**c.n_bits
            distinct = space * -math.expm1(-n / space)
            lookup = _SEARCHSORTED_COST if c.n_bits > _MAX_DENSE_BITS else 1.0
            per_mask = distinct / 2 * lookup + n * n / space / 2 + 5000
            total += _ball_size(c.n_bits, c.radius) * per_mask
        return total

    upper = min(max_distance + 1, N_BITS)
    if n_chunks is not None:
        if not 1 <= n_chunks <= upper:
            raise ValueError(
                f"n_chunks must be in [1, {upper}] for max_distance={max_distance}, got {n_chunks}"
            )
        return chunks_for(n_chunks)
    plans = [chunks_for(m) for m in range(1, upper + 1)]
    plans = [p for p in plans if max(_ball_size(c.n_bits, c.radius) for c in p) <= _MAX_MASKS] or plans[-1:]
    return min(plans, key=cost)


def _masks(n_bits: int, radius: int) -> np.ndarray:
    """All masks of weight <= radius over n_bits bits, as uint64, weight 0 first."""
    masks = [0]
    for k in range(1, radius + 1):
        for bits in itertools.combinations(range(n_bits), k):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, dtype=np.uint64)


def _chunk_keys(codes: np.ndarray, chunk: Chunk) -> np.ndarray:
    keys = (codes >> np.uint64(chunk.shift)) & np.uint64((1 << chunk.n_bits) - 1)
    return keys.astype(np.uint32) if chunk.n_bits <= 32 else keys


def _empty_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)


def _sort_pairs(i: np.ndarray, j: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((j, i))
    return i[order], j[order], dist[order]


class _Table:
    """One chunk's table: the distinct keys (sorted) and the run of items holding each key."""

    def __init__(self, codes: np.ndarray, chunk: Chunk) -> None:
        keys = _chunk_keys(codes, chunk)
        self.order = np.argsort(keys, kind="stable")
        sorted_keys = keys[self.order]
        edge = np.flatnonzero(np.diff(sorted_keys)) + 1
        self.start = np.concatenate(([0], edge)).astype(np.int64)
        self.count = np.diff(np.append(self.start, keys.size))
        self.uniq = sorted_keys[self.start]
        self.dense = chunk.n_bits <= _MAX_DENSE_BITS
        if self.dense:
            # slot[key] = index of key in uniq, or -1: one small gather per look-up.
            self.slot = np.full(1 << chunk.n_bits, -1, np.int32)
            self.slot[self.uniq] = np.arange(self.uniq.size, dtype=np.int32)
        # For a mask whose highest bit is p, pair (a, a ^ mask) is visited once, from the key
        # whose bit p is 0.
        self.by_top_bit = [
            np.flatnonzero(((self.uniq >> self.uniq.dtype.type(p)) & 1) == 0) for p in range(chunk.n_bits)
        ]

    def lookup(self, query: np.ndarray) -> np.ndarray:
        """Index into ``uniq`` of each query key, -1 where absent."""
        if self.dense:
            return self.slot[query]
        pos = np.searchsorted(self.uniq, query)
        pos[pos == self.uniq.size] = 0
        return np.where(self.uniq[pos] == query, pos, -1)

    def pairs_within_runs(self) -> tuple[np.ndarray, np.ndarray]:
        """All item pairs sharing a key (mask 0)."""
        runs = np.flatnonzero(self.count > 1)
        c = self.count[runs]
        total = c * c
        k = np.arange(int(total.sum())) - np.repeat(np.cumsum(total) - total, total)
        c_rep = np.repeat(c, total)
        x, y = k // c_rep, k % c_rep
        keep = x < y
        base = np.repeat(self.start[runs], total)[keep]
        return self.order[base + x[keep]], self.order[base + y[keep]]

    def pairs_between_runs(self, ua: np.ndarray, ub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All item pairs with one item in run ``ua[k]`` and the other in run ``ub[k]``."""
        ca, cb = self.count[ua], self.count[ub]
        if (ca == 1).all() and (cb == 1).all():
            return self.order[self.start[ua]], self.order[self.start[ub]]
        total = ca * cb
        k = np.arange(int(total.sum())) - np.repeat(np.cumsum(total) - total, total)
        cb_rep = np.repeat(cb, total)
        a = self.order[np.repeat(self.start[ua], total) + k // cb_rep]
        b = self.order[np.repeat(self.start[ub], total) + k % cb_rep]
        return a, b


def _search_chunk(
    codes: np.ndarray, max_distance: int, chunk: Chunk, earlier: list[Chunk], table: _Table, masks: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Pairs found through ``masks`` of one chunk that no earlier chunk reports."""
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_d: list[np.ndarray] = []

    def verify(a: np.ndarray, b: np.ndarray) -> None:
        """Keep candidates within max_distance that no earlier chunk reported."""
        xor = codes[a] ^ codes[b]
        dist = np.bitwise_count(xor)
        keep = dist <= max_distance
        for prev in earlier:  # the pair belongs to the first chunk whose radius it meets
            part = (xor >> np.uint64(prev.shift)) & np.uint64((1 << prev.n_bits) - 1)
            keep &= np.bitwise_count(part) > prev.radius
        if keep.any():
            a, b = a[keep], b[keep]
            found_i.append(np.minimum(a, b).astype(np.int64))
            found_j.append(np.maximum(a, b).astype(np.int64))
            found_d.append(dist[keep].astype(np.int64))

    for mask in masks:
        if mask == 0:
            verify(*table.pairs_within_runs())
            continue
        top = int(mask).bit_length() - 1
        ua = table.by_top_bit[top]
        ub = table.lookup(table.uniq[ua] ^ table.uniq.dtype.type(mask))
        hit = ub >= 0
        if hit.any():
            verify(*table.pairs_between_runs(ua[hit], ub[hit].astype(np.int64)))
    return found_i, found_j, found_d


def search_pairs(
    codes: np.ndarray, max_distance: int, n_chunks: int | None = None, n_threads: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of hashes within ``max_distance`` bits, by multi-index hashing.

    Exact: returns the same pairs as :func:`bruteforce_pairs`. Memory: one chunk table per
    thread (a few arrays of length n, plus ``4 * 2**bits`` bytes for chunks up to 24 bits) and
    the pairs found.

    Args:
        codes: uint64 array of shape (n,).
        max_distance: Hamming radius (inclusive), 0..64.
        n_chunks: Force the number of index chunks; ``None`` = chosen by :func:`plan_chunks`.
        n_threads: Chunks searched at once (numpy releases the GIL in its array loops).

    Returns:
        ``(i, j, distance)``: int64 arrays, ``i < j``, sorted by ``(i, j)``; the same whatever
        ``n_threads``.

    Raises:
        ValueError: If ``codes`` is not a 1-D uint64 array or ``max_distance`` is out of range.
    """
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.dtype != np.uint64:
        raise ValueError(f"codes: expected a 1-D uint64 array, got {codes.dtype} of shape {codes.shape}")
    n = codes.size
    chunks = plan_chunks(n, max_distance, n_chunks)
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if n < 2:
        return _empty_pairs()
    log.debug("hamming index: n=%d max_distance=%d chunks=%s", n, max_distance, chunks)
    # Jobs = (chunk, every n_threads-th mask), so threads get similar work whatever the chunks.
    jobs = []
    for t, chunk in enumerate(chunks):
        table, masks = _Table(codes, chunk), _masks(chunk.n_bits, chunk.radius)
        jobs += [
            (codes, max_distance, chunk, chunks[:t], table, masks[k::n_threads]) for k in range(n_threads)
        ]
    if n_threads > 1:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            parts = list(pool.map(lambda job: _search_chunk(*job), jobs))
    else:
        parts = [_search_chunk(*job) for job in jobs]
    found_i = [x for p in parts for x in p[0]]
    if not found_i:
        return _empty_pairs()
    found_j = [x for p in parts for x in p[1]]
    found_d = [x for p in parts for x in p[2]]
    return _sort_pairs(np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d))


def bruteforce_pairs(
    codes: np.ndarray, max_distance: int, queries: Sequence[int] | np.ndarray | None = None, block: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference search: compare hashes one block of rows at a time (O(n^2)).

    Args:
        codes: uint64 array of shape (n,).
        max_distance: Hamming radius (inclusive).
        queries: Only pairs involving these indices (a sample, for checking large sets);
            ``None`` = all pairs.
        block: Rows compared per step (memory ~ block * n * 8 bytes).

    Returns:
        ``(i, j, distance)`` with ``i < j``, sorted by ``(i, j)``.
    """
    codes = np.asarray(codes, dtype=np.uint64)
    n = codes.size
    rows = np.arange(n) if queries is None else np.unique(np.asarray(queries, dtype=np.int64))
    found_i, found_j, found_d = [], [], []
    for start in range(0, rows.size, block):
        q = rows[start : start + block]
        dist = np.bitwise_count(codes[q, None] ^ codes[None, :])
        qi, cj = np.nonzero(dist <= max_distance)
        a, b = q[qi], cj
        keep = b > a if queries is None else a != b
        a, b, d = a[keep], b[keep], dist[qi[keep], cj[keep]].astype(np.int64)
        found_i.append(np.minimum(a, b))
        found_j.append(np.maximum(a, b))
        found_d.append(d)
    if not found_i:
        return _empty_pairs()
    i, j, d = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)
    if queries is not None:  # a pair of two sampled rows is seen from both ends
        code = np.unique(i * n + j, return_index=True)[1]
        i, j, d = i[code], j[code], d[code]
    return _sort_pairs(i, j, d)
