"""All pairs of 64-bit hashes within a Hamming distance, without comparing every pair.

Brute force compares n^2 / 2 pairs: fine for 10k hashes, hopeless for 1M. This module uses
**multi-index hashing** (Norouzi et al., "Fast search in Hamming space with multi-index
hashing", CVPR 2012) with the *generalized pigeonhole principle* (Qin et al., "GPH", ICDE 2018):

* The 64 bits are cut into ``m`` contiguous chunks, chunk ``t`` gets a radius ``r_t`` with
  ``sum(r_t + 1) == max_distance + 1``. If two hashes are within ``max_distance``, then in at
  least one chunk they differ in at most ``r_t`` bits (otherwise they would differ in at least
  ``sum(r_t + 1) > max_distance`` bits). So searching every chunk for keys within its radius
  finds **every** pair brute force finds: the index is exact, not approximate.
* Each chunk is a sorted table (CSR offsets over the chunk's key space, plus a 1-byte
  occupancy table). For every bit mask of weight <= ``r_t`` all hashes look up ``key ^ mask``
  at once (numpy, no Python loop per hash). Hashes are held in key order, so these look-ups and
  the verification reads walk memory nearly in order (sorted keys XOR a constant), not at random.
* Each candidate is verified with a popcount of the full 64-bit XOR, and kept only in the first
  chunk that could have found it, so no pair is reported twice.

The number of chunks is chosen by a small cost model (table look-ups + candidates to verify),
which depends on ``n`` and ``max_distance``. Cost grows quickly with the radius: at ``n = 1M``
random hashes, ``max_distance = 10`` means ~3,600 masks and ~4e8 candidate checks: ~26 s on 2
shared cores (see ``bench/dedup_scaling.py``).
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
    """One chunk's table: items sorted by key, with CSR offsets (or binary search) per key.

    Everything a look-up touches is kept in key order (``keys``, ``codes``), so the queries of
    one mask (sorted keys XOR a constant) walk the offsets table and the codes nearly in order:
    cache-friendly gathers instead of random ones. Items are mapped back to input positions
    (``order``) only for the few pairs that survive verification.
    """

    def __init__(self, codes: np.ndarray, chunk: Chunk) -> None:
        keys = _chunk_keys(codes, chunk)
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]
        self.codes = codes[self.order]
        self.n_bits = chunk.n_bits
        edge = np.flatnonzero(np.diff(self.keys)) + 1
        self.start = np.concatenate(([0], edge)).astype(np.int64)
        self.count = np.diff(np.append(self.start, keys.size))
        self.dense = chunk.n_bits <= _MAX_DENSE_BITS
        if self.dense:
            # offsets[key] .. offsets[key + 1]: the items holding key (int32: n < 2**31).
            counts = np.bincount(keys, minlength=1 << chunk.n_bits)
            self.offsets = np.zeros(counts.size + 1, np.int32)
            np.cumsum(counts, out=self.offsets[1:])
            # 1 byte per key (a quarter of the offsets table): the first, most selective
            # look-up of every query stays in cache; offsets are read only for the hits.
            self.occupied = counts > 0
        self._by_top_bit: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def by_top_bit(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions (in key order) and keys of the items whose key has bit ``p`` clear.

        For a mask whose highest bit is ``p``, the pair of keys ``(a, a ^ mask)`` is visited once,
        from the key with bit ``p`` clear. Cached (the masks of one chunk share 1..n_bits values).
        """
        if p not in self._by_top_bit:
            pos = np.flatnonzero(((self.keys >> self.keys.dtype.type(p)) & 1) == 0).astype(np.int32)
            self._by_top_bit[p] = (pos, self.keys[pos])
        return self._by_top_bit[p]

    def lookup(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The queries whose key is present: their indices, first position and number of items."""
        if self.dense:
            hit = np.flatnonzero(self.occupied[query])
            q = query[hit]
            lo = self.offsets[q]
            return hit, lo, self.offsets[q + 1] - lo
        lo = np.searchsorted(self.keys, query, side="left")
        cnt = np.searchsorted(self.keys, query, side="right") - lo
        hit = np.flatnonzero(cnt)
        return hit, lo[hit], cnt[hit]

    def pairs_within_runs(self) -> tuple[np.ndarray, np.ndarray]:
        """All pairs of positions (key order) sharing a key (mask 0)."""
        runs = np.flatnonzero(self.count > 1)
        c = self.count[runs]
        total = c * c
        k = np.arange(int(total.sum())) - np.repeat(np.cumsum(total) - total, total)
        c_rep = np.repeat(c, total)
        x, y = k // c_rep, k % c_rep
        keep = x < y
        base = np.repeat(self.start[runs], total)[keep]
        return base + x[keep], base + y[keep]


def _search_chunk(
    max_distance: int, earlier: list[Chunk], table: _Table, masks: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Pairs found through ``masks`` of one chunk that no earlier chunk reports."""
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_d: list[np.ndarray] = []
    codes = table.codes

    def verify(a: np.ndarray, b: np.ndarray) -> None:
        """Keep candidates (key-order positions) within max_distance not reported earlier."""
        xor = codes[a] ^ codes[b]
        dist = np.bitwise_count(xor)
        keep = np.flatnonzero(dist <= max_distance)
        if keep.size == 0:
            return
        xor, dist, a, b = xor[keep], dist[keep], a[keep], b[keep]
        if earlier:  # the pair belongs to the first chunk whose radius it meets
            new = np.ones(keep.size, bool)
            for prev in earlier:
                part = (xor >> np.uint64(prev.shift)) & np.uint64((1 << prev.n_bits) - 1)
                new &= np.bitwise_count(part) > prev.radius
            xor, dist, a, b = xor[new], dist[new], a[new], b[new]
        if a.size:
            a, b = table.order[a], table.order[b]
            found_i.append(np.minimum(a, b).astype(np.int64))
            found_j.append(np.maximum(a, b).astype(np.int64))
            found_d.append(dist.astype(np.int64))

    kdt = table.keys.dtype.type
    for mask in masks:
        if mask == 0:
            verify(*table.pairs_within_runs())
            continue
        pos, keys = table.by_top_bit(int(mask).bit_length() - 1)
        hit, b, cnt = table.lookup(keys ^ kdt(mask))
        a = pos[hit]
        r = 0
        while a.size:  # the r-th item of each partner run (most runs hold one item)
            verify(a, b + r)
            r += 1
            more = np.flatnonzero(cnt > r)
            a, b, cnt = a[more], b[more], cnt[more]
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
    # One chunk at a time (its table and caches freed before the next); its masks are dealt
    # round-robin to the threads, so they get similar work.
    parts = []
    pool = ThreadPoolExecutor(max_workers=n_threads) if n_threads > 1 else None
    try:
        for t, chunk in enumerate(chunks):
            table, masks = _Table(codes, chunk), _masks(chunk.n_bits, chunk.radius)
            jobs = [(max_distance, chunks[:t], table, masks[k::n_threads]) for k in range(n_threads)]
            if pool is not None:
                parts += list(pool.map(lambda job: _search_chunk(*job), jobs))
            else:
                parts += [_search_chunk(*job) for job in jobs]
            del table
    finally:
        if pool is not None:
            pool.shutdown()
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
