"""Stage ``split``: stratified, leakage-free train/val/test split of the included images.

Reads:  ``--manifest`` (data/interim/manifest.parquet), ``--curated`` (data/interim/curated.parquet:
        image_id, included, reason, group_id), ``--duplicates`` (data/interim/duplicates.parquet:
        image_id, cluster_id; for the independent leakage check).
Writes: ``--out`` (data/interim/splits.parquet: image_id, split for every included image),
        ``--metrics`` (metrics/split.json: per split images, patients, groups, class proportions,
        max abs deviation from the whole; leaking_groups/patients/clusters (always 0: the stage
        fails otherwise); the accounting summary before label issues),
        ``--balance`` (plots/split_balance.csv: label, split, n_images).
Params: ``seed``, ``split`` (train_fraction, val_fraction, test_fraction).

Before writing, an independent check refuses any group_id, patient_id or duplicate cluster in
two splits, and the accounting (every input file in exactly one final state) must add up.
"""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.accounting import check_accounting, final_states
from pipeline.contract import included
from pipeline.io import write_csv, write_json, write_parquet
from pipeline.labels import check_two_classes
from pipeline.split import (
    assign_splits,
    balance_table,
    check_no_leakage,
    fractions_from_params,
    split_metrics,
)
from stages._cli import run, start

log = logging.getLogger("stages.split")


def main(argv: list[str] | None = None) -> int:
    args, params = start(
        __doc__, argv, "--manifest", "--curated", "--duplicates", "--out", "--metrics", "--balance"
    )
    fractions = fractions_from_params(params.split)

    manifest = pd.read_parquet(args.manifest)
    curated = pd.read_parquet(args.curated)
    duplicates = pd.read_parquet(args.duplicates, columns=["image_id", "cluster_id"])
    table = curated.loc[included(curated), ["image_id", "group_id"]].merge(
        manifest[["image_id", "label", "patient_id"]], on="image_id", how="left", validate="one_to_one"
    )
    check_two_classes(table["label"].value_counts().to_dict(), str(args.curated), "included images")
    # A duplicate cluster must not straddle splits either: link its included members.
    table = table.merge(duplicates, on="image_id", how="left", validate="one_to_one")

    assignment = assign_splits(
        table, fractions, params.seed, link_columns=("group_id", "patient_id", "cluster_id")
    )
    leaks = check_no_leakage(assignment, table, duplicates)
    accounting = check_accounting(final_states(manifest, curated, assignment), manifest)

    metrics = {
        **split_metrics(table, assignment, fractions),
        **leaks,
        "seed": params.seed,
        "accounting": accounting,
    }
    write_parquet(assignment[["image_id", "split"]].reset_index(drop=True), args.out)
    write_csv(balance_table(table, assignment), args.balance)
    write_json(metrics, args.metrics)
    log.info(
        "split: %s; max abs class-proportion deviation %.4f",
        {s: m["images"] for s, m in metrics["splits"].items()},
        metrics["max_abs_deviation"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
