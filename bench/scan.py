"""Full-scan speed vs the decode limit, CleanVision and imagededup (issue 9 item 1).

Usage (from the repo root):
    .venv/bin/python bench/scan.py                                # 10000 images at 256 and 1024 px
    .venv/bin/python bench/scan.py --n 500 --size 256 --workers 2 --cleanvision-n 200

For each size it generates ``--n`` grayscale 8-bit PNGs (radiograph-like: smooth structure plus
noise, so they compress like real images) into a temporary folder, then times on those same
files, with the same number of worker processes:

* **decode-only**: read the bytes and ``cv2.imdecode(IMREAD_UNCHANGED)``, nothing else (the limit);
* **our full scan**: :func:`pipeline.ingest.ingest` in class-per-folder mode: scan, validation,
  sha256, header checks, one decode, and :func:`pipeline.features.compute_features` (quality
  measures, the imagededup-identical phash/dhash/ahash, thumbnail, pixel hash), manifest and
  features tables built;
* **CleanVision**: ``Imagelab(...).find_issues(n_jobs=workers)`` with its default issue types, on
  the first ``--cleanvision-n`` images (it is slow; its images/s is measured on that subset and
  stands for the whole set);
* **imagededup**: ``PHash().encode_images(image_dir, num_enc_workers=workers)`` (hashing only), on
  the first ``--imagededup-n`` images (default: all).

Each is timed by wall clock (images/s, the table) and by CPU time of this process plus its
worker processes (ms per image): on a shared machine other jobs slow the wall clock of whatever
runs at the time, while CPU time per image hardly moves, so the CPU ratio is the steadier one.
``--repeat R`` times decode-only and our scan R times each, alternating, and keeps the best.

One-time imports and pool warm-up are excluded for everyone (each is run once on a few images
first). The last line reads ``scan_vs_decode=<ratio> scan_vs_cleanvision=<ratio>`` with
wall-clock rates over all sizes together (total images / total seconds); ``nan`` when CleanVision
is missing.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.ingest import ingest  # noqa: E402
from pipeline.parallel import map_images, n_workers  # noqa: E402
from pipeline.params import ExecutorParams, IngestParams  # noqa: E402


def _make_image(args: tuple[str, int, int]) -> None:
    path, size, seed = args
    rng = np.random.default_rng(seed)
    base = cv2.resize(
        rng.random((12, 12), dtype=np.float32) * 160 + 40, (size, size), interpolation=cv2.INTER_CUBIC
    )
    img = np.clip(base + rng.normal(0, 6, (size, size)), 0, 255).astype(np.uint8)
    cv2.imwrite(path, img)


def _decode_only(path: str) -> tuple[int, int]:
    with open(path, "rb") as fh:
        arr = cv2.imdecode(np.frombuffer(fh.read(), np.uint8), cv2.IMREAD_UNCHANGED)
    return arr.shape[:2]


def generate(folder: Path, n: int, size: int, executor: ExecutorParams) -> list[str]:
    (folder / "c").mkdir(parents=True, exist_ok=True)
    paths = [str(folder / "c" / f"img_{i:06d}.png") for i in range(n)]
    map_images(_make_image, [(p, size, i) for i, p in enumerate(paths)], executor, desc=f"generate {size}px")
    return paths


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and of the worker processes it waited for)."""
    t0, c0 = time.perf_counter(), os.times()
    fn()
    t1, c1 = time.perf_counter(), os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    cpu += (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    return t1 - t0, cpu


def run_cleanvision(paths: list[str], workers: int) -> tuple[float, float] | None:
    try:
        from cleanvision import Imagelab
    except ImportError:
        return None

    def go() -> None:
        lab = Imagelab(filepaths=paths, verbose=False)
        lab.find_issues(n_jobs=workers, verbose=False)

    return timed(go)


def run_imagededup(paths: list[str], workers: int, subset_dir: Path) -> tuple[float, float]:
    from imagededup.methods import PHash

    folder = Path(paths[0]).parent
    if len(paths) < len(list(folder.iterdir())):  # a subset: hard-link it into a folder of its own
        folder = subset_dir
        folder.mkdir(parents=True, exist_ok=True)
        for p in paths:
            if not (folder / Path(p).name).exists():
                os.link(p, folder / Path(p).name)
    return timed(lambda: PHash(verbose=False).encode_images(image_dir=str(folder), num_enc_workers=workers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images per size")
    parser.add_argument("--size", type=int, nargs="+", default=[256, 1024], help="image sides in px")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--cleanvision-n", type=int, default=1000, help="images CleanVision runs on")
    parser.add_argument("--imagededup-n", type=int, default=None, help="images imagededup runs on (all)")
    parser.add_argument("--repeat", type=int, default=1, help="time decode-only and our scan this often")
    parser.add_argument("--keep", type=Path, default=None, help="generate into (and keep) this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # no decoder chatter in the table

    executor = ExecutorParams(n_workers=args.workers, chunk_size=args.chunk_size)
    workers = n_workers(executor)
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_scan_"))
    keys = ("decode", "scan", "cleanvision", "imagededup")
    rows = []
    totals = {k: [0, 0.0, 0.0] for k in keys}  # images, wall s, cpu s
    try:
        # warm-up: imports (imagededup and CleanVision pull in torch) and the feature code, untimed
        warm = base / "warm"
        generate(warm, 8, 64, ExecutorParams(n_workers=1))
        ingest(warm, None, IngestParams(), None)
        warm_paths = [str(p) for p in sorted((warm / "c").iterdir())]
        run_imagededup(warm_paths, 1, base / "warm_subset")
        run_cleanvision(warm_paths, 1)

        for size in args.size:
            folder = base / f"px{size}"
            paths = generate(folder, args.n, size, executor)
            best = {"decode": (math.inf, math.inf), "scan": (math.inf, math.inf)}
            for _ in range(max(1, args.repeat)):
                t = timed(lambda paths=paths: map_images(_decode_only, paths, executor, desc="decode"))
                best["decode"] = min(best["decode"], t)
                t = timed(lambda folder=folder: ingest(folder, None, IngestParams(), executor))
                best["scan"] = min(best["scan"], t)
            n_cv = min(args.cleanvision_n, args.n)
            n_dd = min(args.imagededup_n or args.n, args.n)
            measured = {
                "decode": (args.n, *best["decode"]),
                "scan": (args.n, *best["scan"]),
                "cleanvision": (n_cv, *(run_cleanvision(paths[:n_cv], workers) or (math.nan, math.nan))),
                "imagededup": (n_dd, *run_imagededup(paths[:n_dd], workers, base / f"imagededup_{size}px")),
            }
            for key, (n_img, wall, cpu) in measured.items():
                if not math.isnan(wall):
                    totals[key][0] += n_img
                    totals[key][1] += wall
                    totals[key][2] += cpu
            rows.append((size, n_cv, n_dd, measured))
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)

    def rate(n_img: int, wall: float) -> float:
        return n_img / wall if wall else math.nan

    def ms(n_img: int, cpu: float) -> float:
        return 1e3 * cpu / n_img if n_img else math.nan

    print(f"\nimages/s (wall clock), {args.n} grayscale 8-bit PNGs per size, {workers} worker process(es)")
    print(
        f"{'size':>6} | {'decode-only':>11} | {'our scan':>9} | {'cleanvision':>11} | {'imagededup':>10} | "
        "scan/decode | scan/cleanvision"
    )
    for size, _n_cv, _n_dd, m in rows:
        r = {k: rate(m[k][0], m[k][1]) for k in keys}
        print(
            f"{size:>6} | {r['decode']:>11.1f} | {r['scan']:>9.1f} | {r['cleanvision']:>11.1f} | "
            f"{r['imagededup']:>10.1f} | {r['scan'] / r['decode']:>11.2f} | {r['scan'] / r['cleanvision']:>16.2f}"
        )
    print("\nCPU ms per image (this process + its workers)")
    print(
        f"{'size':>6} | {'decode-only':>11} | {'our scan':>9} | {'cleanvision':>11} | {'imagededup':>10} | scan/decode"
    )
    for size, _n_cv, _n_dd, m in rows:
        c = {k: ms(m[k][0], m[k][2]) for k in keys}
        print(
            f"{size:>6} | {c['decode']:>11.2f} | {c['scan']:>9.2f} | {c['cleanvision']:>11.2f} | "
            f"{c['imagededup']:>10.2f} | {c['decode'] / c['scan']:.2f}"
        )
    subsets = [f"{size}px: CleanVision on {n_cv}, imagededup on {n_dd}" for size, n_cv, n_dd, _ in rows]
    print("subsets (their images/s stand for the whole set): " + "; ".join(subsets))
    total_rate = {k: rate(n, wall) for k, (n, wall, _cpu) in totals.items()}
    total_ms = {k: ms(n, cpu) for k, (n, _wall, cpu) in totals.items()}
    print(
        f"cpu_scan_vs_decode={total_ms['decode'] / total_ms['scan']:.2f} "
        f"cpu_scan_vs_cleanvision={total_ms['cleanvision'] / total_ms['scan']:.2f}"
    )
    print(
        f"scan_vs_decode={total_rate['scan'] / total_rate['decode']:.2f} "
        f"scan_vs_cleanvision={total_rate['scan'] / total_rate['cleanvision']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
