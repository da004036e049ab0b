"""Stage ``accounting``: the final state of every input file, and the demo ground-truth scores.

Runs after ``label_issues`` so that rows dropped as label issues (``label_issues.action: drop``,
train rows only) are counted as excluded with reason ``label_issue``. The ``split`` stage runs
the same check earlier (without label issues) and keeps its own summary in metrics/split.json;
this stage is the one writer of metrics/accounting.json.

Reads:  ``--manifest``, ``--quality``, ``--duplicates``, ``--curated``, ``--splits``,
        ``--label-issues``, ``--outliers`` (data/interim/*.parquet), ``--shortcuts``
        (metrics/shortcuts.json); ``data.truth`` (truth.json) when set (a path to no file stops the stage).
Writes: ``--out`` (data/interim/final_states.parquet: image_id, path, final_state, reason),
        ``--metrics`` (metrics/accounting.json: n_files, n_rejected, n_rejected_by_reason,
        n_excluded {reason: n}, n_train, n_val, n_test, excluded_by_class {label: {n_images,
        n_excluded, share_excluded}}, class_loss_warnings), ``--truth-metrics``
        (metrics/demo_truth.json: pipeline.truth.score_against_truth, or {"available": false}).
Params: ``data.truth``, ``label_issues.action``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline.accounting import check_accounting, class_losses, final_states
from pipeline.errors import InputError
from pipeline.io import read_json, write_json, write_parquet
from stages._cli import run, start

log = logging.getLogger("stages.accounting")


def main(argv: list[str] | None = None) -> int:
    args, params = start(
        __doc__,
        argv,
        "--manifest",
        "--quality",
        "--duplicates",
        "--curated",
        "--splits",
        "--label-issues",
        "--out",
        "--metrics",
        "--truth-metrics",
        optional=("--outliers", "--shortcuts"),
    )
    truth_path = Path(params.data.truth) if params.data.truth else None
    if truth_path is not None and not truth_path.is_file():
        raise InputError(
            f"data.truth: {truth_path} is not a file; set data.truth: null for data without a ground truth"
        )

    manifest = pd.read_parquet(args.manifest)
    curated = pd.read_parquet(args.curated)
    label_issues = pd.read_parquet(args.label_issues)
    if params.label_issues.action != "drop" and label_issues["is_dropped"].any():
        raise InputError(
            f"{args.label_issues}: rows are dropped but label_issues.action is "
            f"{params.label_issues.action!r}; re-run the label_issues stage"
        )
    final = final_states(manifest, curated, pd.read_parquet(args.splits), label_issues)
    summary = check_accounting(final, manifest)
    summary = {**summary, **class_losses(final, manifest)}

    if truth_path is not None:
        from pipeline.truth import score_against_truth

        truth_metrics = score_against_truth(
            read_json(truth_path), manifest, pd.read_parquet(args.quality),
            pd.read_parquet(args.duplicates), curated, label_issues,
            pd.read_parquet(args.outliers) if args.outliers else None,
            read_json(args.shortcuts) if args.shortcuts else None,
        )  # fmt: skip
    else:
        truth_metrics = {"available": False}

    write_parquet(final, args.out)
    write_json(summary, args.metrics)
    write_json(truth_metrics, args.truth_metrics)
    log.info("accounting: %s", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
