"""CPU training under contention: does a busy machine cost about its fair share?

Runs the real CPU training path (``pipeline.train.fit_model`` on a small_cnn with the chest_xray
augmentation policy, synthetic 64 px images, the label-issue auditor's batch size) in a child
process, alone and next to ``k`` competing CPU-bound processes, for a few ways of running torch's
threads. For each it prints wall seconds, the child's CPU seconds (user + system: spin-waiting
threads burn CPU without progress), the slowdown against running alone, and the *fair-share*
slowdown: with ``C`` cores, ``T`` training threads and ``k`` busy single-threaded competitors the
scheduler owes the training ``C*T/(T+k)`` cores when ``T+k > C``, so a fair slowdown is
``max(1, (T+k)/C)``. ``excess = slowdown / fair`` near 1 is fair; well above 1 means the threads
waste their share (spinning at barriers, oversubscription).

Variants (``--variants``):

* ``default``   torch as the stages ran it before (``torch.get_num_threads()`` threads, OpenMP
  threads spin-wait before sleeping);
* ``passive``   ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep at once);
* ``stage``     what a stage process now does (``stages/__init__.py``: passive waits unless the
  environment says otherwise).
* ``one``       a single intra-op thread (no barriers to wait at).

    python bench/cpu_contention.py                     # k = 0 and k = cores/2 .. cores
    python bench/cpu_contention.py --epochs 2 --competitors 0 1 2 --variants default pipeline

Run it on an otherwise quiet machine: the machine's load average is printed with each row, and
other jobs count as extra competitors.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "stage": {"MEDCURATE_BENCH_AS_STAGE": "1"},
    "one": {"OMP_NUM_THREADS": "1"},
}


def _busy(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def worker(epochs: int, n_images: int, size: int) -> dict[str, float]:
    """Train once in this process; return wall and CPU seconds (called in a fresh child)."""
    if os.environ.get("MEDCURATE_BENCH_AS_STAGE"):
        import stages  # noqa: F401  (what `python -m stages.x` runs before torch is imported)
    import numpy as np
    import torch

    from pipeline.augment import AugmentedDataset, build_policy
    from pipeline.models import build_model
    from pipeline.normalize import fit_normalizer
    from pipeline.params import AugmentParams
    from pipeline.train import TrainConfig, fit_model

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, size, size, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, n_images)
    normalizer = fit_normalizer([images[:64]], mode="standardize", max_value=255, channels=1)
    policy = build_policy(AugmentParams(domain="chest_xray"), channels=1, image_shape=(size, size))
    dataset = AugmentedDataset(images, labels, policy, seed=0)
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, n_classes=3, width=16, dropout=0.2)
    config = TrainConfig(epochs=epochs, batch_size=64, seed=0)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fit_model(model, images, labels, normalizer, config, dataset=dataset)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "threads": torch.get_num_threads()}


def run_child(variant: str, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, **VARIANTS[variant], "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--epochs",
        str(args.epochs),
        "--n-images",
        str(args.n_images),
        "--size",
        str(args.size),
    ]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(variant: str, k: int, args: argparse.Namespace) -> dict[str, float]:
    procs = [mp.Process(target=_busy, args=(time.time() + 3600,), daemon=True) for _ in range(k)]
    for p in procs:
        p.start()
    try:
        runs = [run_child(variant, args) for _ in range(args.repeats)]
    finally:
        for p in procs:
            p.terminate()
            p.join()
    best = min(runs, key=lambda r: r["wall_s"])
    return {**best, "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n-images", type=int, default=768)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="runs per cell; the fastest is kept")
    ap.add_argument("--competitors", type=int, nargs="+", default=None)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.epochs, args.n_images, args.size)))
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ks = args.competitors or sorted({0, max(1, cores // 2), cores})
    print(
        f"cores={cores} epochs={args.epochs} images={args.n_images} size={args.size}px "
        f"loadavg(start)={os.getloadavg()[0]:.2f}"
    )
    header = (
        f"{'variant':<9} {'k':>2} {'threads':>7} {'wall_s':>7} {'cpu_s':>7} "
        f"{'slowdown':>8} {'fair':>5} {'excess':>6} {'load1':>5}"
    )
    print(header)
    print("-" * len(header))
    for variant in args.variants:
        alone = None
        for k in ks:
            r = measure(variant, k, args)
            if k == 0:
                alone = r
            t = int(r["threads"])
            fair = max(1.0, (t + k) / cores)
            slow = r["wall_s"] / alone["wall_s"] if alone else float("nan")
            print(
                f"{variant:<9} {k:>2} {t:>7} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} "
                f"{slow:>8.2f} {fair:>5.2f} {slow / fair:>6.2f} {r['load']:>5.2f}"
            )


if __name__ == "__main__":
    main()
