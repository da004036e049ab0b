"""Augmentation throughput: images/s on one core per preset, and DataLoader images/s by workers.

Usage (from the repo root):
    .venv/bin/python bench/augment_throughput.py                  # 64 and 224 px, ~1 s per cell
    .venv/bin/python bench/augment_throughput.py --sizes 64 --seconds 0.5 --loader-images 512

Per-preset numbers run in this process with OpenCV and torch limited to one thread, so they are
images/s per core, including the per-sample reseeding that AugmentedDataset does. The DataLoader
table iterates AugmentedDataset once per worker count (worker start-up included) at the first
size; with n workers on a machine with >= n free cores expect roughly n times the 1-worker rate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from pipeline.augment import PRESETS, AugmentedDataset, augment_image, build_policy  # noqa: E402
from pipeline.params import AugmentParams  # noqa: E402


def per_core_rate(domain: str, channels: int, size: int, seconds: float) -> float:
    policy = build_policy(AugmentParams(domain=domain), channels=channels, image_shape=(size, size))
    pool = np.random.default_rng(0).integers(0, 256, (16, size, size, channels), dtype=np.uint8)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 20:
        augment_image(policy, pool[n % len(pool)], n)
        n += 1
    return n / elapsed


def loader_rate(domain: str, channels: int, size: int, n_images: int, num_workers: int) -> float:
    policy = build_policy(AugmentParams(domain=domain), channels=channels, image_shape=(size, size))
    images = np.random.default_rng(0).integers(0, 256, (n_images, size, size, channels), dtype=np.uint8)
    dataset = AugmentedDataset(images, np.zeros(n_images, np.int64), policy, seed=0)
    loader = DataLoader(
        dataset,
        batch_size=64,
        shuffle=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )
    start = time.perf_counter()
    seen = sum(len(y) for _, y in loader)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per preset/size cell")
    parser.add_argument("--loader-domain", default="chest_xray", choices=sorted(PRESETS))
    parser.add_argument("--loader-images", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    print(f"cpu cores visible: {os.cpu_count()}; albumentations per-core images/s (uint8)")
    header = "| preset | channels | " + " | ".join(f"{s} px" for s in args.sizes) + " |"
    print(header)
    print("|" + "---|" * (2 + len(args.sizes)))
    for domain in sorted(PRESETS):
        for channels in (1, 3):
            rates = [per_core_rate(domain, channels, size, args.seconds) for size in args.sizes]
            print(f"| {domain} | {channels} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |")

    size = args.sizes[0]
    channels = 1 if args.loader_domain == "chest_xray" else 3
    print(
        f"\nDataLoader({args.loader_domain}, {size} px, {channels} ch, batch 64, "
        f"{args.loader_images} images, start-up included)"
    )
    print("| num_workers | images/s |\n|---|---|")
    for n in args.workers:
        print(f"| {n} | {loader_rate(args.loader_domain, channels, size, args.loader_images, n):,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
