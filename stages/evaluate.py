"""Stage evaluate: the test split, read once, scored with patient-bootstrap confidence intervals.

Reads:  the checkpoint (models/model.pt, weights_only=True), <processed>/test.npy + test.parquet,
        normalizer.json and meta.json (must match the ones stored in the checkpoint).
Writes: metrics/test.json (accuracy, balanced_accuracy, macro_f1, auroc, pr_auc, cohen_kappa, mcc,
        ece as {value, ci_low, ci_high}; per_class; patient_level), <plots>/confusion.csv,
        <plots>/roc.csv, <plots>/calibration.csv, reports/predictions.csv; with --manifest and
        --subgroups: metrics/subgroups.json (pipeline/subgroups.py) and <plots>/subgroups.csv.
Params: seed (bootstrap), evaluate.*.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import evaluate as ev
from pipeline import subgroups as sg
from pipeline.io import write_csv, write_json
from pipeline.normalize import load_meta, load_normalizer, load_split
from pipeline.params import load_params
from pipeline.train import load_checkpoint, model_from_checkpoint, predict_proba, select_device
from stages._cli import run


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--params", "--processed", "--model", "--metrics", "--plots", "--predictions"):
        ap.add_argument(flag, type=Path, required=True)
    ap.add_argument("--manifest", type=Path, default=None, help="labels-table columns for subgroups")
    ap.add_argument("--subgroups", type=Path, default=None, help="output metrics/subgroups.json")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    p = params.evaluate

    ckpt = load_checkpoint(args.model)
    classes = list(ckpt["classes"])
    if list(load_meta(args.processed)["classes"]) != classes:
        raise ValueError(
            f"{args.model}: classes {classes} differ from {args.processed / 'meta.json'}; retrain"
        )
    normalizer = load_normalizer(args.processed / "normalizer.json")
    if normalizer != ckpt["normalizer"]:
        raise ValueError(f"{args.model}: trained with a different normalizer than {args.processed}; retrain")
    test_x, test_idx = load_split(args.processed, "test")
    labels = test_idx["label_index"].to_numpy(np.int64)

    model = model_from_checkpoint(ckpt)
    probs = predict_proba(model, test_x, normalizer, select_device(p.device), p.batch_size)
    metrics = ev.evaluate_predictions(
        labels, probs, test_idx["patient_id"].to_numpy(), classes, n_bootstrap=p.n_bootstrap,
        ci_level=p.ci_level, n_bins=p.n_calibration_bins, seed=params.seed,
    )  # fmt: skip

    write_json(metrics, args.metrics)
    write_csv(ev.confusion_table(labels, probs, classes), args.plots / "confusion.csv")
    write_csv(ev.roc_table(labels, probs, classes), args.plots / "roc.csv")
    write_csv(ev.calibration_table(labels, probs, p.n_calibration_bins), args.plots / "calibration.csv")
    write_csv(ev.predictions_table(test_idx, probs, classes), args.predictions)
    if args.manifest is not None and args.subgroups is not None:
        manifest = pd.read_parquet(args.manifest).set_index("image_id")
        table = manifest.reindex(test_idx["image_id"].astype(str)).reset_index(drop=True)
        result = sg.evaluate_subgroups(
            labels, probs, test_idx["patient_id"].astype(str).to_numpy(), table, p.subgroups, overall=metrics,
            n_bins=p.subgroup_bins, edges=p.subgroup_edges, min_images=p.min_subgroup_images,
            n_bootstrap=p.n_bootstrap, ci_level=p.ci_level, n_calibration_bins=p.n_calibration_bins,
            seed=params.seed,
        )  # fmt: skip
        write_json(result, args.subgroups)
        write_csv(sg.subgroup_plot_table(result), args.plots / "subgroups.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
