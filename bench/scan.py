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
  measures, imagededup hashes, thumbnail, pixel hash), manifest and features tables built;
* **CleanVision**: ``Imagelab(...).find_issues(n_jobs=workers)`` with its default issue types, on
  the first ``--cleanvision-n`` images (it is slow; images/s is computed on that subset);
* **imagededup**: ``PHash().encode_images(image_dir, num_enc_workers=workers)`` (hashing only).

One-time imports and pool warm-up are excluded for everyone (each is run once on a few images
first). The last line reads ``scan_vs_decode=<ratio> scan_vs_cleanvision=<ratio>`` with rates
over all sizes together (total images / total seconds); ``nan`` when CleanVision is missing.
"""

from __future__ import annotations

import argparse
import logging
import math
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


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_cleanvision(paths: list[str], workers: int) -> float | None:
    try:
        from cleanvision import Imagelab
    except ImportError:
        return None

    def go() -> None:
        lab = Imagelab(filepaths=paths, verbose=False)
        lab.find_issues(n_jobs=workers, verbose=False)

    return timed(go)


def run_imagededup(folder: Path, workers: int) -> float:
    from imagededup.methods import PHash

    return timed(lambda: PHash(verbose=False).encode_images(image_dir=str(folder), num_enc_workers=workers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images per size")
    parser.add_argument("--size", type=int, nargs="+", default=[256, 1024], help="image sides in px")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--cleanvision-n", type=int, default=1000, help="images CleanVision runs on")
    parser.add_argument("--keep", type=Path, default=None, help="generate into (and keep) this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # no decoder chatter in the table

    executor = ExecutorParams(n_workers=args.workers, chunk_size=args.chunk_size)
    workers = n_workers(executor)
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_scan_"))
    rows, totals = [], {"decode": [0, 0.0], "scan": [0, 0.0], "cleanvision": [0, 0.0], "imagededup": [0, 0.0]}
    try:
        # warm-up: imports (imagededup pulls in torch) and the feature code, once, untimed
        warm = base / "warm"
        generate(warm, 8, 64, ExecutorParams(n_workers=1))
        ingest(warm, None, IngestParams(), None)
        run_imagededup(warm / "c", 1)
        run_cleanvision([str(p) for p in sorted((warm / "c").iterdir())], 1)

        for size in args.size:
            folder = base / f"px{size}"
            paths = generate(folder, args.n, size, executor)
            t_decode = timed(lambda paths=paths: map_images(_decode_only, paths, executor, desc="decode"))
            t_scan = timed(lambda folder=folder: ingest(folder, None, IngestParams(), executor))
            n_cv = min(args.cleanvision_n, args.n)
            t_cv = run_cleanvision(paths[:n_cv], workers)
            t_dedup = run_imagededup(folder / "c", workers)
            rate = {
                "decode": args.n / t_decode,
                "scan": args.n / t_scan,
                "cleanvision": n_cv / t_cv if t_cv else math.nan,
                "imagededup": args.n / t_dedup,
            }
            for key, n_img, secs in (
                ("decode", args.n, t_decode),
                ("scan", args.n, t_scan),
                ("cleanvision", n_cv, t_cv),
                ("imagededup", args.n, t_dedup),
            ):
                if secs:
                    totals[key][0] += n_img
                    totals[key][1] += secs
            rows.append((size, rate))
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)

    print(f"\nimages/s, {args.n} grayscale 8-bit PNGs per size, {workers} worker process(es)")
    print(
        f"{'size':>6} | {'decode-only':>11} | {'our scan':>9} | {'cleanvision':>11} | {'imagededup':>10} | scan/decode"
    )
    for size, r in rows:
        print(
            f"{size:>6} | {r['decode']:>11.1f} | {r['scan']:>9.1f} | {r['cleanvision']:>11.1f} | "
            f"{r['imagededup']:>10.1f} | {r['scan'] / r['decode']:.2f}"
        )
    total_rate = {k: (n / s if s else math.nan) for k, (n, s) in totals.items()}
    print(
        f"scan_vs_decode={total_rate['scan'] / total_rate['decode']:.2f} "
        f"scan_vs_cleanvision={total_rate['scan'] / total_rate['cleanvision']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
