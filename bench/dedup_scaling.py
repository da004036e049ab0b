"""Near-duplicate search at scale: multi-index hashing vs brute force vs imagededup (issue 9 item 2).

For each n: n random 64-bit hashes with n/10 planted near pairs (0..max_distance+2 flipped
bits), searched within ``--max-distance``. Prints wall time, peak traced memory (tracemalloc:
numpy allocations included) and recall against brute force (all pairs up to 20k hashes,
otherwise every pair of a random sample of ``--sample`` query hashes). imagededup's own search
(``find_duplicates(encoding_map=...)``, brute force, quadratic) is the baseline up to
``--imagededup-max`` hashes.

    python bench/dedup_scaling.py                  # 10k, 100k, 1M
    python bench/dedup_scaling.py --n 1000000      # last line: n=... seconds=... recall_vs_bruteforce=...
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.hamming_index import bruteforce_pairs, plan_chunks, search_pairs  # noqa: E402
from pipeline.params import DedupParams  # noqa: E402


def planted_hashes(n: int, max_distance: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    pairs = rng.integers(0, n, size=(n // 10, 2))
    flips = rng.integers(0, max_distance + 3, size=len(pairs))
    bits = np.argsort(rng.random((len(pairs), 64)), axis=1)  # random bit order per pair
    weights = np.uint64(1) << bits.astype(np.uint64)
    masks = np.where(np.arange(64) < flips[:, None], weights, np.uint64(0)).sum(axis=1, dtype=np.uint64)
    codes[pairs[:, 1]] = codes[pairs[:, 0]] ^ masks
    return codes


def recall(codes: np.ndarray, found: tuple, max_distance: int, sample: int, seed: int) -> tuple[float, int]:
    n = codes.size
    key = found[0] * n + found[1]
    if n <= 20_000:
        ref = bruteforce_pairs(codes, max_distance)
    else:
        queries = np.random.default_rng(seed + 1).choice(n, size=sample, replace=False)
        ref = bruteforce_pairs(codes, max_distance, queries=queries)
    ref_key = ref[0] * n + ref[1]
    if ref_key.size == 0:
        return 1.0, 0
    return float(np.isin(ref_key, key).mean()), int(ref_key.size)


def imagededup_seconds(codes: np.ndarray, max_distance: int) -> tuple[float, int]:
    from imagededup.methods import PHash

    encoding_map = {f"{k}": f"{int(c):016x}" for k, c in enumerate(codes)}
    start = time.perf_counter()
    result = PHash(verbose=False).find_duplicates(
        encoding_map=encoding_map, max_distance_threshold=max_distance
    )
    return time.perf_counter() - start, sum(len(v) for v in result.values()) // 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--max-distance", type=int, default=DedupParams().max_distance)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--sample", type=int, default=1000, help="brute-force query sample above 20k hashes")
    ap.add_argument("--imagededup-max", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    header = f"{'n':>9} {'chunks':>22} {'seconds':>8} {'peak_MiB':>9} {'pairs':>9} {'recall':>7} {'ref_pairs':>9} {'imagededup_s':>12}"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"max_distance={args.max_distance} threads={args.threads} cpus={os.cpu_count()} loadavg={load}")
    print(header)
    last = ""
    for n in args.n:
        codes = planted_hashes(n, args.max_distance, args.seed)
        chunks = "+".join(f"{c.n_bits}b/r{c.radius}" for c in plan_chunks(n, args.max_distance))
        tracemalloc.start()
        start = time.perf_counter()
        found = search_pairs(codes, args.max_distance, n_threads=args.threads)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        rec, n_ref = recall(codes, found, args.max_distance, args.sample, args.seed)
        base = "-"
        if n <= args.imagededup_max:
            s, n_theirs = imagededup_seconds(codes, args.max_distance)
            base = f"{s:.2f}" + ("" if n_theirs == found[0].size else f" ({n_theirs} pairs!)")
        print(
            f"{n:>9} {chunks:>22} {seconds:>8.2f} {peak:>9.1f} {found[0].size:>9} {rec:>7.4f} {n_ref:>9} {base:>12}",
            flush=True,
        )
        last = f"n={n} seconds={seconds:.2f} recall_vs_bruteforce={rec:.4f}"
    print(last)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
