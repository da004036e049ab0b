"""Split balance: ``pipeline.split.assign_splits`` vs a StratifiedGroupKFold-derived 70/10/20 split.

For several random manifests (patients with 1..N images, skewed class frequencies, some
patients with images of two labels, a few very large patients) and several seeds, both
methods split the same table. Printed per configuration: the mean and worst (over seeds) of
the max abs deviation of class proportions per split from the whole dataset, and of the
largest |split fraction - target fraction|.

    .venv/bin/python bench/split_balance.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.split import assign_splits, max_abs_deviation, sgkf_splits  # noqa: E402

FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def random_manifest(
    rng: np.random.Generator,
    n_patients: int,
    n_classes: int,
    max_images: int,
    mixed: float = 0.1,
    n_large: int = 2,
) -> pd.DataFrame:
    """A labels table: skewed class frequencies, mixed-label patients, a few very large patients."""
    class_p = rng.dirichlet(np.full(n_classes, 2.0))
    rows = []
    for p in range(n_patients):
        n_img = int(rng.integers(1, max_images + 1))
        if p < n_large:
            n_img *= 8
        main = rng.choice(n_classes, p=class_p)
        for i in range(n_img):
            label = main if rng.random() > mixed else rng.integers(n_classes)
            rows.append((f"p{p:05d}/img{i:03d}.png", f"c{label}", f"g{p:05d}", f"p{p:05d}"))
    return pd.DataFrame(rows, columns=["image_id", "label", "group_id", "patient_id"])


def score(table: pd.DataFrame, assignment: pd.DataFrame) -> tuple[float, float]:
    dev = max(max_abs_deviation(table["label"], assignment["split"]).values())
    frac = assignment["split"].value_counts(normalize=True)
    size_dev = max(abs(frac.get(s, 0.0) - f) for s, f in FRACTIONS.items())
    return dev, size_dev


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    configs = [
        ("demo-like 320 pat, 3 cls", 320, 3, 8),
        ("small 60 pat, 3 cls", 60, 3, 6),
        ("2000 pat, 5 cls", 2000, 5, 10),
        ("500 pat, 8 cls", 500, 8, 4),
    ]
    print(
        f"{'configuration':28s} {'method':6s} {'class dev mean':>14s} {'class dev max':>13s} "
        f"{'size dev mean':>13s} {'size dev max':>12s} {'sec':>6s}"
    )
    for name, n_pat, n_cls, max_img in configs:
        res: dict[str, list[tuple[float, float]]] = {"ours": [], "sgkf": []}
        secs = {"ours": 0.0, "sgkf": 0.0}
        for seed in range(args.seeds):
            table = random_manifest(np.random.default_rng(1000 + seed), n_pat, n_cls, max_img)
            for method, fn in (("ours", assign_splits), ("sgkf", sgkf_splits)):
                t0 = time.perf_counter()
                a = fn(table, FRACTIONS, seed)
                secs[method] += time.perf_counter() - t0
                res[method].append(score(table, a))
        for method, vals in res.items():
            arr = np.array(vals)
            print(
                f"{name:28s} {method:6s} {arr[:, 0].mean():14.4f} {arr[:, 0].max():13.4f} "
                f"{arr[:, 1].mean():13.4f} {arr[:, 1].max():12.4f} {secs[method] / args.seeds:6.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
