"""Peak memory of the ingest, quality and dedup stages at two dataset sizes (issue 9 item 3).

Ingest streams the feature table to disk and quality and dedup read only that table, so their
peak memory should hardly grow with the number of images; this measures it. For each size N the script
generates N grayscale PNGs in a class-per-folder tree (``--image-size`` px random smooth fields
plus noise, all different; every 25th image a noisy near copy of the one before it, every 40th a
byte copy, every 50th blurred, so dedup and quality have real work), runs the three stages as DVC
would (``python -m stages.<name>`` with a params.yaml pointing at the folder) and reports each
stage's peak RSS: the largest resident set of the stage process or any of its workers
(``bench/_rss.py``).

    .venv/bin/python bench/quality_dedup_memory.py [--sizes 10000 50000] [--image-size 96] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _rss import REPO, run_with_peak_rss  # noqa: E402

from pipeline.parallel import map_images  # noqa: E402
from pipeline.params import ExecutorParams  # noqa: E402


def _field(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.resize(
        rng.random((8, 8), dtype=np.float32) * 170 + 40, (size, size), interpolation=cv2.INTER_CUBIC
    )
    return base + rng.normal(0, 5, (size, size)).astype(np.float32)


def _make(args: tuple[str, int, int]) -> None:
    path, i, size = args
    if i % 40 == 39:  # a byte copy of the image before it
        shutil.copyfile(path.replace(f"img{i:06d}", f"img{i - 1:06d}"), path)
        return
    img = _field(i - 1 if i % 25 == 24 else i, size)
    if i % 25 == 24:  # a near copy: the field of the image before, different noise
        img += np.random.default_rng(10**9 + i).normal(0, 3, img.shape).astype(np.float32)
    if i % 50 == 0:
        img = cv2.GaussianBlur(img, (0, 0), 3.0)
    cv2.imwrite(path, np.clip(img, 0, 255).astype(np.uint8))


def make_dataset(root: Path, n: int, size: int, executor: ExecutorParams) -> None:
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    # class (i // 100) % 3: a copy (i = 24, 39, 49, ... mod 100) sits in its original's folder
    items = [(str(root / f"c{(i // 100) % 3}" / f"img{i:06d}.png"), i, size) for i in range(n)]
    # byte copies need their original on disk first: make everything else, then the copies
    map_images(_make, [t for t in items if t[1] % 40 != 39], executor, desc=f"generate {n}")
    for t in items:
        if t[1] % 40 == 39:
            _make(t)


def run_stages(work: Path, workers: int) -> dict[str, tuple[float, float]]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {"root": str(work / "images"), "labels": None, "truth": None}
    params["executor"]["n_workers"] = workers
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    p = ["--params", str(work / "params.yaml")]
    io = {
        "manifest": str(work / "manifest.parquet"),
        "features": str(work / "features.parquet"),
        "quality": str(work / "quality.parquet"),
    }
    cmds = {
        "ingest": ["--manifest", io["manifest"], "--features", io["features"],
                   "--rejected", str(work / "rejected.csv"), "--metrics", str(work / "ingest.json")],
        "quality": ["--manifest", io["manifest"], "--features", io["features"], "--out", io["quality"],
                    "--sheets", str(work / "quality_sheets"), "--metrics", str(work / "quality.json")],
        "dedup": ["--manifest", io["manifest"], "--features", io["features"], "--quality", io["quality"],
                  "--out", str(work / "duplicates.parquet"), "--pairs-dir", str(work / "dedup"),
                  "--metrics", str(work / "dedup.json")],
    }  # fmt: skip
    return {
        stage: run_with_peak_rss([sys.executable, "-m", f"stages.{stage}", *p, *args], stage)
        for stage, args in cmds.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    executor = ExecutorParams(n_workers=args.workers)
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="quality_dedup_memory_") as tmp:
            work = Path(tmp)
            t0 = time.perf_counter()
            make_dataset(work / "images", n, args.image_size, executor)
            gen = time.perf_counter() - t0
            res = run_stages(work, args.workers)
            dedup = json.loads((work / "dedup.json").read_text())
            quality = json.loads((work / "quality.json").read_text())
            feats_mib = (work / "features.parquet").stat().st_size / 2**20
            rows.append((n, res, feats_mib, quality, dedup, gen))
            print(
                f"done {n}: " + ", ".join(f"{k} {v[0]:.0f} MiB {v[1]:.0f} s" for k, v in res.items()),
                file=sys.stderr,
            )
    print(f"\npeak RSS (MiB) and wall time (s) per stage; {args.image_size} px PNGs, {args.workers} workers")
    print(
        f"{'images':>8} | {'ingest MiB':>10} {'s':>6} | {'quality MiB':>11} {'s':>6} | {'dedup MiB':>9} {'s':>6} | "
        f"{'features MiB':>12} | {'flagged':>7} | {'exact/near dups':>15} | {'candidates':>10}"
    )
    for n, res, feats, quality, dedup, _gen in rows:
        flagged = sum(quality.get("flagged", {}).values())
        dups = f"{dedup['n_exact']}/{dedup['n_near']}"
        print(
            f"{n:>8} | {res['ingest'][0]:>10.0f} {res['ingest'][1]:>6.1f} | {res['quality'][0]:>11.0f} "
            f"{res['quality'][1]:>6.1f} | {res['dedup'][0]:>9.0f} {res['dedup'][1]:>6.1f} | {feats:>12.1f} | "
            f"{flagged:>7} | {dups:>15} | {dedup['n_candidates']:>10}"
        )
    if len(rows) >= 2:
        (n0, r0, *_), (n1, r1, *_) = rows[0], rows[-1]
        growth = ", ".join(f"{k} x{r1[k][0] / r0[k][0]:.2f}" for k in ("ingest", "quality", "dedup"))
        print(f"images x{n1 / n0:.1f}: peak RSS {growth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
