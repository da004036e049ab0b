"""Mirrored films: the linear orientation model against the mirror CNN, on one pipeline run (issue 15).

Reads a workspace after ``dvc repro outliers`` (``data/interim/{manifest,features,quality}.parquet``
and, for precision and recall, the demo's ``truth.json``) and, for each model, prints one row:

* ``held_out_acc``: how often the model tells a typical image from its mirror image on images it
  did not learn from (the number ``outliers.min_orientation_accuracy`` gates on);
* ``flagged``, ``precision``, ``recall``: typical images (atypicality below ``outliers.robust_z``;
  an atypical image is named ``atypical`` whatever its orientation) that the model alone would call
  mirrored at ``outliers.threshold`` (``p(as stored) / p(mirrored) < threshold``; for the linear
  model, among images it calls upright or mirrored), scored against the planted ``mirrored``
  outliers when a truth file exists (a planted mirrored film that is atypical counts as missed);
* ``seconds``: wall time of fitting both cross-fitted models and scoring every image;
* for the CNN, ``ms_per_image``: scoring alone (both models, five shifted views), the cost of each
  image beyond ``max_orientation_images``.

    make repro                                    # or: .venv/bin/dvc repro outliers
    PYTHONPATH=. .venv/bin/python bench/mirror_models.py
    PYTHONPATH=. .venv/bin/python bench/mirror_models.py --root ../other-run --seeds 42 1 7
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import mirror  # noqa: E402
from pipeline import outliers as ol  # noqa: E402
from pipeline.params import load_params  # noqa: E402


def _inputs(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ids, centred 32 px and 64 px thumbnails, atypicality z of every scored image."""
    interim = root / "data" / "interim"
    features = pd.read_parquet(interim / "features.parquet", columns=ol.FEATURE_COLUMNS)
    features = features.sort_values("image_id", ignore_index=True)
    manifest = pd.read_parquet(
        interim / "manifest.parquet", columns=["image_id", "width", "height", "status"]
    )
    aspect = (manifest["width"] / manifest["height"]).set_axis(manifest["image_id"])
    quality = pd.read_parquet(interim / "quality.parquet", columns=["image_id", "is_low_information_issue"])
    skip = set(quality.loc[quality["is_low_information_issue"].astype(bool), "image_id"])
    features = features[~features["image_id"].isin(skip)].reset_index(drop=True)
    ids = features["image_id"].astype(str).to_numpy()
    ratio = aspect.reindex(ids).fillna(1.0).to_numpy(np.float64)
    small = ol.restore_aspect(ol.thumbnail_stack(features), ratio)
    large = ol.restore_aspect(ol.large_thumbnail_stack(features), ratio)
    colour = features[["colorfulness", "channel_diff"]].to_numpy(np.float64)
    x = ol.atypicality_features(small, colour)
    return ids, ol.center_thumbs(small), ol.center_thumbs(large), x, ratio


def _linear(thumbs: np.ndarray, typical: np.ndarray, max_train: int, seed: int) -> tuple[np.ndarray, float]:
    """The linear model judging mirroring as it did before the mirror CNN: log p(flip) - log p(as stored)
    (-inf where another rotation or inversion is likelier) and its held-out pairwise accuracy."""
    rng = np.random.default_rng(seed)
    pool = rng.permutation(np.flatnonzero(typical))[:max_train]
    halves = (pool[0::2], pool[1::2])
    models = [ol._orientation_model(thumbs[h]) for h in halves]
    post = np.zeros((len(thumbs), len(ol.TRANSFORMS)))
    unseen = np.ones(len(thumbs), bool)
    unseen[pool] = False
    correct = []
    for k, model in enumerate(models):
        held = halves[1 - k]
        post[held] = ol.orientation_log_posterior(model, thumbs[held])
        x, y = ol._views(thumbs[held])
        logp = model.predict_log_proba(x)
        a, b = y == ol.IDENTITY, y == ol.FLIP
        correct += [
            (logp[a, ol.IDENTITY] > logp[a, ol.FLIP]).mean(),
            (logp[b, ol.FLIP] > logp[b, ol.IDENTITY]).mean(),
        ]
    if unseen.any():
        post[unseen] = np.mean([ol.orientation_log_posterior(m, thumbs[unseen]) for m in models], axis=0)
    best = post.argmax(axis=1)
    s = np.where(np.isin(best, [ol.IDENTITY, ol.FLIP]), post[:, ol.FLIP] - post[:, ol.IDENTITY], -np.inf)
    return s, float(np.mean(correct))


def _row(name: str, s: np.ndarray, acc: float, secs: float, threshold: float, ids, typical, planted) -> dict:
    flagged = set(ids[typical & (s > np.log(1 / threshold))])
    row = {"model": name, "held_out_acc": round(acc, 4), "flagged": len(flagged), "seconds": round(secs, 1)}
    if planted is not None:
        hits = len(flagged & planted)
        row["precision"] = round(hits / len(flagged), 3) if flagged else None
        row["recall"] = round(hits / len(planted), 3) if planted else None
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="the workspace of a pipeline run")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: params.yaml seed")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.root / "params.yaml")
    p = params.outliers
    ids, small, large, x, _ = _inputs(args.root)
    typical = ol.Atypicality(p.robust_z).fit(x).z(x) < p.robust_z
    planted = None
    truth_file = args.root / params.data.root / "truth.json" if params.data.truth else None
    if truth_file is not None and truth_file.exists():
        items = json.loads(truth_file.read_text())["items"]
        planted = {i["path"] for i in items if i.get("kind") == "outlier" and i.get("subtype") == "mirrored"}
        planted &= set(ids)
    rows = []
    for seed in args.seeds or [params.seed]:
        t0 = time.perf_counter()
        s, acc = _linear(small, typical, p.max_orientation_images, seed)
        rows.append(
            _row("linear 32 px", s, acc, time.perf_counter() - t0, p.threshold, ids, typical, planted)
            | {"seed": seed}
        )
        t0 = time.perf_counter()
        s, acc = mirror.mirror_scores(
            large, typical, max_train=p.max_orientation_images, epochs=p.mirror_epochs, seed=seed
        )
        row = _row(
            "mirror CNN 64 px", s, acc or 0.5, time.perf_counter() - t0, p.threshold, ids, typical, planted
        )
        g = mirror.MirrorNet(large.shape[-1]).eval()
        t0 = time.perf_counter()
        for _ in range(2):  # two cross-fitted models score an unseen image
            mirror.score(g, large, mirror.torch.device("cpu"))
        row["ms_per_image"] = round(1000 * (time.perf_counter() - t0) / len(large), 2)
        rows.append(row | {"seed": seed})
    print(f"{len(ids)} scored images, {len(planted) if planted is not None else 'no'} planted mirrored")
    print(pd.DataFrame(rows).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
