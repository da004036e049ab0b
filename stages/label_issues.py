"""Stage label_issues: grouped out-of-fold predictions + cleanlab -> ranked label-issue list.

Reads:  data/processed (<split>.npy/.parquet, normalizer.json, meta.json),
        data/interim/duplicates.parquet, data/interim/manifest.parquet (labels of conflict rows).
Writes: data/interim/label_issues.parquet (every audited image + label-conflict images),
        reports/label_issues.csv (the issues, ranked), reports/label_issues/top.png,
        metrics/label_issues.json.
Params: seed, label_issues.*, model.* (cnn auditor), train.device/batch_size/lr/weight_decay.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from pipeline import label_issues as li
from pipeline.contract import SPLITS, STATUS_OK
from pipeline.errors import InputError
from pipeline.io import write_csv, write_json, write_parquet, write_png
from pipeline.processed import ProcessedData
from stages._cli import run, start


def main(argv: list[str] | None = None) -> int:
    args, params = start(
        __doc__, argv, "--processed", "--duplicates", "--manifest", "--csv", "--out", "--top", "--metrics"
    )
    p = params.label_issues
    t0 = time.perf_counter()

    processed = ProcessedData(args.processed)
    classes = processed.classes
    data = {s: processed.split(s) for s in SPLITS if processed.has_split(s)}
    missing = [s for s in p.splits if s not in data]
    if missing:
        raise InputError(f"label_issues.splits: {missing} not found in {args.processed}")
    index = pd.concat([data[s][1].assign(split=s) for s in p.splits], ignore_index=True)
    normalizer = processed.normalizer()

    from pipeline.inference import select_device  # imports torch: only the training-side stages do

    device = select_device(params.train.device)
    auditor = li.choose_auditor(
        p.auditor, len(index), processed.image_size, p.n_folds, p.cnn_epochs, device.type == "cuda",
        p.cnn_cpu_budget,
    )  # fmt: skip
    logging.info("auditing %d images of %s with the %s auditor on %s", len(index), p.splits, auditor, device)
    cnn_kwargs = dict(
        normalizer=normalizer, arch=params.model.arch, width=params.model.width, dropout=params.model.dropout,
        config=li.auditor_config(params), device=device,
    )  # fmt: skip
    folds, pred, is_issue, quality = li.find_label_issues_oof(
        [data[s][0] for s in p.splits], index, classes, auditor=auditor, n_folds=p.n_folds, seed=params.seed,
        normalize=normalizer.apply, linear_c=p.linear_c, cnn_kwargs=cnn_kwargs,
    )  # fmt: skip

    manifest = pd.read_parquet(args.manifest, columns=["image_id", "label", "status"])
    ok = manifest[manifest["status"] == STATUS_OK]
    conflicts = li.label_conflicts(
        pd.read_parquet(args.duplicates), dict(zip(ok["image_id"], ok["label"], strict=True))
    )
    split_of = {i: s for s, (_, idx) in data.items() for i in idx["image_id"]}
    table = li.build_label_issue_table(index, classes, pred, is_issue, quality, conflicts, split_of, p.action)

    where = {i: (s, r) for s, (_, idx) in data.items() for r, i in enumerate(idx["image_id"])}
    lookup = lambda i: np.asarray(data[where[i][0]][0][where[i][1]]) if i in where else None  # noqa: E731
    sheet = li.make_top_sheet(table, lookup, p.n_top)
    labels = index["label_index"].to_numpy(np.int64)
    strength = li.auditor_strength(labels, pred, is_issue, classes, p)
    for warning in strength["warnings"]:
        logging.warning("label_issues: %s", warning)
    li.check_drop(table, int((index["split"] == "train").sum()), strength, p)
    metrics = li.summarize(
        table, classes, labels, pred, auditor, len(np.unique(folds)), time.perf_counter() - t0, strength
    )

    write_parquet(table, args.out)
    write_csv(table.loc[table["is_label_issue"], li.CSV_COLUMNS], args.csv)
    write_png(sheet, args.top)
    write_json(metrics, args.metrics)
    logging.info(
        "%d label issues (%d dropped) in %.1f s",
        metrics["n_issues"],
        metrics["n_dropped"],
        metrics["seconds"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
