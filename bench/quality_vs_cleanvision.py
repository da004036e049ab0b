"""Our quality + dedup vs CleanVision on the same images (issue 3 item 5).

For each dataset (the demo set from params.yaml, and a larger generated one) it:

1. generates the images with :func:`pipeline.demo.generate_demo` (skipped when already there);
2. runs **ours**: ingest (one decode per image: validation, sha256, :func:`compute_features`) +
   :func:`pipeline.quality.find_low_quality` + :func:`pipeline.dedup.find_duplicates`;
3. runs **CleanVision** (``pip install cleanvision``; the ``bench`` extra) on the images ingest
   accepted, all its default issue types, with the same number of worker processes;
4. prints per planted kind the precision / recall of both against ``truth.json``, wall times,
   images/s and our speed as a ratio to CleanVision's.

Duplicates are scored as pairs: a predicted pair (two images in one predicted set) is correct when
both belong to one planted duplicate family (a source and its copies); recall of a kind is the share
of its planted (copy, source) pairs that end up in one predicted set.

Usage:
    .venv/bin/python bench/quality_vs_cleanvision.py                      # demo set + 5,000-image set
    .venv/bin/python bench/quality_vs_cleanvision.py --sizes demo --workers 2 --work /tmp/qvc
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import pandas as pd

from pipeline.contract import flag_col
from pipeline.demo import generate_demo
from pipeline.ingest import ingest
from pipeline.params import ExecutorParams, load_params
from pipeline.quality import find_low_quality

# planted kind -> (our quality issue, CleanVision issue)
QUALITY_KINDS = {
    "dark": ("dark", "dark"),
    "overexposed": ("overexposed", "light"),
    "blurry": ("blurry", "blurry"),
    "blank": ("low_information", "low_information"),
    "odd_size": ("odd_size", "odd_size"),
    "odd_aspect_ratio": ("odd_aspect_ratio", "odd_aspect_ratio"),
}
DUP_KINDS = ("exact_duplicate", "near_duplicate", "cross_patient_duplicate")


def _pr(pred: set, truth: set) -> tuple[float, float]:
    tp = len(pred & truth)
    return (tp / len(pred) if pred else float("nan")), (tp / len(truth) if truth else float("nan"))


def _families(truth: dict) -> dict[str, int]:
    """image path -> planted duplicate family id (union of copy-source links)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for it in truth["items"]:
        if it["kind"] in DUP_KINDS:
            parent[find(it["path"])] = find(it["source"])
    roots = sorted({find(x) for x in parent})
    ids = {r: i for i, r in enumerate(roots)}
    return {x: ids[find(x)] for x in parent}


def _dup_scores(sets: list[set[str]], truth: dict) -> dict[str, tuple[float, float]]:
    fam = _families(truth)
    pred_pairs = {frozenset(p) for s in sets for p in itertools.combinations(sorted(s), 2)}
    correct = sum(1 for p in pred_pairs if len({fam.get(x, -1 - hash(x)) for x in p}) == 1)
    precision = correct / len(pred_pairs) if pred_pairs else float("nan")
    member = {x: i for i, s in enumerate(sets) for x in s}
    out = {}
    for kind in DUP_KINDS:
        pairs = [(it["path"], it["source"]) for it in truth["items"] if it["kind"] == kind]
        found = sum(1 for a, b in pairs if a in member and member.get(a) == member.get(b))
        out[kind] = (precision, found / len(pairs) if pairs else float("nan"))
    return out


def run_ours(root: Path, params, executor: ExecutorParams) -> tuple[dict, float, int, list[str]]:
    t0 = time.perf_counter()
    res = ingest(root, root / "labels.csv", params.ingest, executor, hashes=(params.dedup.hash_method,))
    ok = res.manifest[res.manifest["status"] == "ok"]
    quality = find_low_quality(res.features, ok, params.quality)
    pred = {i: set(quality.loc[quality[flag_col(i)], "image_id"]) for i, _ in QUALITY_KINDS.values()}
    dup_sets = _run_our_dedup(res.features, ok, quality, params)
    seconds = time.perf_counter() - t0
    return {"quality": pred, "dup_sets": dup_sets}, seconds, len(ok), ok["path"].tolist()


def _run_our_dedup(features, manifest, quality, params) -> list[set[str]]:
    from pipeline.dedup import find_duplicates

    dups = find_duplicates(manifest, features, quality, params.dedup).duplicates
    return [set(g["image_id"]) for _, g in dups.groupby("cluster_id")]


def run_cleanvision(root: Path, paths: list[str], n_jobs: int) -> tuple[dict, float]:
    from cleanvision import Imagelab

    files = [str(root / p) for p in paths]
    t0 = time.perf_counter()
    lab = Imagelab(filepaths=files, verbose=False)
    lab.find_issues(n_jobs=n_jobs, verbose=False)
    seconds = time.perf_counter() - t0
    issues = lab.issues
    rel = {str(root / p): p for p in paths}
    pred = {}
    for _, cv_issue in QUALITY_KINDS.values():
        col = f"is_{cv_issue}_issue"
        pred[cv_issue] = {rel[f] for f in issues.index[issues[col]]} if col in issues else set()
    sets = []
    for key in ("exact_duplicates", "near_duplicates"):
        for s in lab.info.get(key, {}).get("sets", []):
            sets.append({rel[f] for f in s})
    return {"quality": pred, "dup_sets": sets}, seconds


def bench_one(name: str, root: Path, demo_params, params, workers: int, seed: int) -> list[dict]:
    if not (root / "truth.json").exists():
        logging.info("generating %s into %s", name, root)
        generate_demo(root, demo_params, seed)
    truth = json.loads((root / "truth.json").read_text())
    executor = ExecutorParams(kind="process", n_workers=workers, chunk_size=64)
    ours, t_ours, n_ok, paths = run_ours(root, params, executor)
    theirs, t_cv = run_cleanvision(root, paths, workers)
    rows = []
    for kind, (our_issue, cv_issue) in QUALITY_KINDS.items():
        planted = {it["path"] for it in truth["items"] if it["kind"] == kind}
        op, orec = _pr(ours["quality"][our_issue], planted)
        cp, crec = _pr(theirs["quality"][cv_issue], planted)
        rows.append(
            dict(dataset=name, kind=kind, n_planted=len(planted), ours_P=op, ours_R=orec, cv_P=cp, cv_R=crec)
        )
    cv_dup = _dup_scores(theirs["dup_sets"], truth)
    our_dup = _dup_scores(ours["dup_sets"], truth)
    for kind in DUP_KINDS:
        n = sum(1 for it in truth["items"] if it["kind"] == kind)
        op, orec = our_dup[kind] if our_dup else (float("nan"), float("nan"))
        rows.append(
            dict(
                dataset=name,
                kind=kind,
                n_planted=n,
                ours_P=op,
                ours_R=orec,
                cv_P=cv_dup[kind][0],
                cv_R=cv_dup[kind][1],
            )
        )
    what = "ingest+quality+dedup"
    rows.append(dict(dataset=name, kind=f"TIME {what}", n_planted=n_ok, ours_P=t_ours, ours_R=n_ok / t_ours,
                     cv_P=t_cv, cv_R=n_ok / t_cv))  # fmt: skip
    logging.info("%s: %d images, ours %.1fs (%.0f img/s), CleanVision %.1fs (%.0f img/s), ratio %.2fx",
                 name, n_ok, t_ours, n_ok / t_ours, t_cv, n_ok / t_cv, t_cv / t_ours)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_quality_vs_cleanvision"))
    ap.add_argument("--sizes", nargs="+", default=["demo", "large"], choices=["demo", "large"])
    ap.add_argument("--large-images", type=int, default=5000, help="at least this many images in 'large'")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    rows = []
    for name in args.sizes:
        demo = params.demo
        if name == "large":  # scale patients and planted counts together (~4.8 images per patient)
            k = args.large_images / 1500
            planted = {
                f: int(getattr(demo, f) * k)
                for f in type(demo).model_fields
                if f.startswith("n_") and f != "n_patients"
            }
            demo = demo.model_copy(update={"n_patients": int(demo.n_patients * k) + 1, **planted})
        rows += bench_one(name, args.work / name, demo, params, args.workers, params.seed)
    table = pd.DataFrame(rows)
    with pd.option_context(
        "display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format
    ):
        print(
            "\nprecision (P) / recall (R) vs truth.json; TIME rows: P = seconds, R = images/s, n_planted = images"
        )
        print(table.to_string(index=False))
    for name in args.sizes:
        t = table[(table.dataset == name) & table.kind.str.startswith("TIME")].iloc[0]
        print(
            f"{name}: ours {t.ours_R:.0f} img/s vs CleanVision {t.cv_R:.0f} img/s -> ours/cleanvision = {t.ours_R / t.cv_R:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
