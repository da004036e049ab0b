"""Near-duplicate confirmation on more than the demo's gray radiographs (issue 17 item 7).

Generates demo datasets (``pipeline.demo.generate_demo``) of several kinds, runs ingest, quality
and dedup on each with the shipped ``dedup`` defaults (or ``-S key=value`` overrides) and prints
one table row per set:

* ``gray128``: the default demo (chest radiographs, 128 px);
* ``rgb128``: the dermoscopy demo (RGB lesion photographs, 128 px);
* ``gray28``: the default demo at 28 px (low resolution);
* ``rgb28``: the dermoscopy demo at 28 px;
* ``distinct_gray28``, ``distinct_rgb64``: images of different patients and lesions only (no
  planted copy, no defect, no outlier), many of them alike: smooth low-resolution radiographs,
  smooth lesions of two look-alike classes. Every confirmed link there is a false one.

Columns: near-duplicate precision/recall as ``metrics/demo_truth.json`` scores them (a planted copy
is found when it shares a cluster with its source; a flag is right when it traces back to its
representative), the same for exact and cross-patient duplicates, the number of near candidates,
confirmed candidates and, of those, the ones that join two different pictures (``false_links``).

    python bench/dedup_confirmation.py                       # all sets (~3 min on 2 cores)
    python bench/dedup_confirmation.py --sets gray28 rgb128
    python bench/dedup_confirmation.py -S confirm_residual_ratio=0.35   # a dedup param override
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.dedup import find_duplicates  # noqa: E402
from pipeline.demo import generate_demo  # noqa: E402
from pipeline.ingest import ingest  # noqa: E402
from pipeline.params import DedupParams, DemoParams, IngestParams, QualityParams  # noqa: E402
from pipeline.quality import find_low_quality  # noqa: E402
from pipeline.truth import _score_duplicates  # noqa: E402

_NONE = {
    "n_exact_duplicates": 0, "n_near_duplicates": 0, "n_cross_patient_duplicates": 0, "n_blurry": 0,
    "n_dark": 0, "n_overexposed": 0, "n_blank": 0, "n_odd_size": 0, "n_odd_aspect_ratio": 0,
    "n_corrupt": 0, "n_not_an_image": 0, "flipped_label_fraction": 0.0, "n_outliers_per_subtype": 0,
    "shortcut_site_fraction": 0.0,
}  # fmt: skip
_DERM = {"modality": "dermoscopy", "classes": ["naevus", "melanoma", "vascular"]}
SETS = {
    "gray128": {},
    "rgb128": _DERM,
    "gray28": {"image_size": 28},
    "rgb28": {**_DERM, "image_size": 28},
    "distinct_gray28": {**_NONE, "image_size": 28, "n_patients": 400},
    "distinct_rgb64": {
        **_NONE, "modality": "dermoscopy", "classes": ["naevus", "keratosis"], "image_size": 64, "n_patients": 400,
    },
}  # fmt: skip


def prepared(name: str, work: Path, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """(manifest, features, quality, truth) of set ``name``, generated and ingested once under ``work``."""
    root = work / name
    if not (root / "features.parquet").exists():
        truth = generate_demo(root / "data", DemoParams(**SETS[name]), seed)
        res = ingest(root / "data", root / "data" / "labels.csv", IngestParams(), None, ("phash",))
        res.manifest.to_parquet(root / "manifest.parquet")
        res.features.to_parquet(root / "features.parquet")
        pd.Series([len(truth["items"])]).to_frame().to_parquet(root / "done.parquet")
    manifest = pd.read_parquet(root / "manifest.parquet")
    features = pd.read_parquet(root / "features.parquet")
    import json

    truth = json.loads((root / "data" / "truth.json").read_text())
    quality = find_low_quality(features, manifest, QualityParams())
    return manifest, features, quality, truth


def false_links(pairs: pd.DataFrame, truth: dict) -> int:
    """Confirmed near candidates whose two images are different pictures (different truth roots)."""
    source = {it["path"]: it["source"] for it in truth["items"] if it.get("source")}

    def root(p: str) -> str:
        while p in source:
            p = source[p]
        return p

    conf = pairs[(pairs["link"] == "near") & pairs["is_confirmed"]]
    return int(sum(root(a) != root(b) for a, b in zip(conf["image_id_a"], conf["image_id_b"], strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/medcurate_dedup_bench"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("-S", action="append", default=[], help="dedup param override key=value (YAML value)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.S)}
    params = DedupParams(**overrides)
    rows = []
    for name in args.sets:
        manifest, features, quality, truth = prepared(name, args.work, args.seed)
        t0 = time.perf_counter()
        result = find_duplicates(manifest, features, quality, params)
        seconds = time.perf_counter() - t0
        by_kind: dict[str, list[dict]] = {}
        for it in truth["items"]:
            by_kind.setdefault(it["kind"], []).append(it)
        scores = _score_duplicates(truth["items"], by_kind, manifest, result.duplicates)
        m = result.metrics
        row = {"set": name, "n_images": m["n_images"]}
        for kind, short in (
            ("near_duplicate", "near"),
            ("exact_duplicate", "exact"),
            ("cross_patient_duplicate", "cross"),
        ):
            s = scores[kind]
            row[f"{short}_P"] = s["precision"]
            row[f"{short}_R"] = s["recall"]
        row["n_near_flagged"] = scores["near_duplicate"]["n_flagged"]
        row["candidates"] = m["n_candidates"]
        row["confirmed"] = m["n_candidates_confirmed"]
        row["false_links"] = false_links(result.pairs, truth)
        row["seconds"] = round(seconds, 2)
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False, header=len(rows) == 1), flush=True)
    print()
    print(pd.DataFrame(rows).to_string(index=False))
    np.set_printoptions()


if __name__ == "__main__":
    main()
