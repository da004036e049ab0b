"""Peak memory of the ``normalize`` stage for two dataset sizes (it should not grow with N).

Generates N small grayscale PNGs (128 px, smooth pattern + noise) plus manifest / curated /
splits tables in a temp folder, runs ``python -m stages.normalize`` in a subprocess (through a
small wrapper that reports ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the largest
resident set of the stage process and of its decode workers) and prints a table.

    .venv/bin/python bench/normalize_memory.py [--sizes 10000 40000] [--image-size 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rss import REPO, run_with_peak_rss  # noqa: E402


def make_dataset(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:128]
    templates = [
        (127 + 100 * np.sin(xx / (6 + k) + k) * np.cos(yy / (9 + k))).astype(np.float32) for k in range(16)
    ]
    rows = []
    for i in range(n):
        rel = f"images/p{i // 4:05d}/img{i:06d}.png"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = np.roll(templates[i % 16], int(rng.integers(0, 128)), axis=1) + rng.normal(0, 8, (128, 128))
        cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
        rows.append((rel, rel, f"c{(i // 4) % 3}", f"p{i // 4:05d}", 1, 8, "ok", ""))
    cols = ["image_id", "path", "label", "patient_id", "channels", "bit_depth", "status", "reason"]
    manifest = pd.DataFrame(rows, columns=cols)
    manifest.to_parquet(root / "manifest.parquet", index=False)
    pd.DataFrame(
        {"image_id": manifest["image_id"], "included": True, "reason": "", "group_id": manifest["patient_id"]}
    ).to_parquet(root / "curated.parquet", index=False)
    split = np.array(["train", "train", "train", "train", "train", "train", "train", "val", "test", "test"])
    pd.DataFrame({"image_id": manifest["image_id"], "split": split[(np.arange(n) // 4) % 10]}).to_parquet(
        root / "splits.parquet", index=False
    )


def run(root: Path, image_size: int, workers: int) -> tuple[float, float]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {"root": str(root), "labels": None, "truth": None}
    params["normalize"]["image_size"] = image_size
    params["executor"]["n_workers"] = workers
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [
        sys.executable, "-m", "stages.normalize", "--params", str(root / "params.yaml"),
        "--manifest", str(root / "manifest.parquet"), "--curated", str(root / "curated.parquet"),
        "--splits", str(root / "splits.parquet"), "--out", str(root / "processed"),
        "--metrics", str(root / "normalize.json"),
    ]  # fmt: skip
    peak_mib, wall = run_with_peak_rss(cmd, "normalize")
    json.loads((root / "normalize.json").read_text())
    return peak_mib, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    results = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="normalize_bench_") as tmp:
            root = Path(tmp)
            t0 = time.perf_counter()
            make_dataset(root, n)
            gen = time.perf_counter() - t0
            peak_mb, wall = run(root, args.image_size, args.workers)
            npy_mb = sum(f.stat().st_size for f in (root / "processed").glob("*.npy")) / 2**20
            results.append((n, peak_mb, wall, npy_mb, gen))
            print(f"done {n}: peak {peak_mb:.0f} MiB, {wall:.0f} s", file=sys.stderr)
    print(f"\n{'images':>8} {'peak RSS MiB':>13} {'normalize s':>12} {'arrays MiB':>11} {'generate s':>11}")
    for n, peak, wall, npy, gen in results:
        print(f"{n:>8} {peak:>13.0f} {wall:>12.1f} {npy:>11.1f} {gen:>11.1f}")
    print(
        f"(image_size {args.image_size}, {args.workers} workers; peak = max RSS of the stage and its workers)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
