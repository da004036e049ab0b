"""Stage tune: Optuna search over ``tune.space``, every trial scored on the validation split.

Reads:  <processed>/{train,val}.npy + .parquet, normalizer.json, meta.json (never test), the
        augmentation policy (models/augment/policy.json), data/interim/label_issues.parquet (train rows
        with is_dropped are left out, as in train; the file may be absent).
Writes: models/tune/best.json (the best values; ``{"values": {}}`` when skipped), metrics/tune.json,
        plots/tune_trials.csv (trial, state, value, best_value, drawn values).
Params: seed, tune.*, model.*, train.*, augment.* (the values not searched are those of params.yaml).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from pipeline import tune
from pipeline.io import write_csv, write_json
from pipeline.processed import ProcessedData
from stages._cli import run, start


def main(argv: list[str] | None = None) -> int:
    args, params = start(
        __doc__, argv, "--processed", "--policy", "--label-issues", "--best", "--metrics", "--trials"
    )
    t0 = time.perf_counter()

    data = None
    if params.tune.n_trials > 0:
        from pipeline.augment import load_policy
        from pipeline.inference import select_device
        from pipeline.models import pretrained_normalizer
        from pipeline.train import dropped_mask

        processed = ProcessedData(args.processed)
        train_x, train_idx = processed.split("train")
        val_x, val_idx = processed.split("val")
        issues = pd.read_parquet(args.label_issues) if args.label_issues.exists() else None
        keep = ~dropped_mask(train_idx, issues)
        if (~keep).any():
            train_x, train_idx = train_x[keep], train_idx[keep].reset_index(drop=True)
        normalizer = processed.normalizer()
        if params.model.input_stats == "pretrained":  # as in stages/train.py
            normalizer = pretrained_normalizer(normalizer, params.model.arch)
        data = tune.TrainingData(
            train_x, train_idx["label_index"].to_numpy(np.int64), val_x,
            val_idx["label_index"].to_numpy(np.int64), len(processed.classes), normalizer,
            load_policy(args.policy),
        )  # fmt: skip
        best, trials = tune.run_search(params, data, select_device(params.train.device))
    else:
        best, trials = tune.run_search(params, data, "cpu")  # writes the empty result

    write_json(best, args.best)
    write_json(tune.summarize(best, trials, time.perf_counter() - t0), args.metrics)
    write_csv(trials, args.trials)
    logging.info(
        "tune: %d trials, best %s=%s %s", best["n_trials"], best["monitor"], best["value"], best["values"]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
