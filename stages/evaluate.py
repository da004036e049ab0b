"""Stage evaluate: the test split, read once, scored with patient-bootstrap confidence intervals.

Reads:  the checkpoint (models/model.pt, weights_only=True), <processed>/test.npy + test.parquet,
        val.npy + val.parquet (calibration and operating point are fitted there, never on test),
        normalizer.json and meta.json (must match the ones stored in the checkpoint).
Writes: metrics/test.json (accuracy, balanced_accuracy, macro_f1, auroc, pr_auc, cohen_kappa, mcc,
        ece as {value, ci_low, ci_high} of the calibrated probabilities; per_class; patient_level;
        calibration: temperature, ECE before/after; operating_point for binary tasks),
        <plots>/confusion.csv, <plots>/roc.csv, <plots>/calibration.csv, reports/predictions.csv.
        With --manifest and --subgroups: metrics/subgroups.json (pipeline/subgroups.py) and
        <plots>/subgroups.csv.
Params: seed (bootstrap), evaluate.*.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import calibration as cal
from pipeline import evaluate as ev
from pipeline import subgroups as sg
from pipeline.checkpoint import Checkpoint
from pipeline.errors import InputError
from pipeline.inference import predict_proba, select_device
from pipeline.io import write_csv, write_json
from pipeline.processed import ProcessedData
from stages._cli import run, start


def main(argv: list[str] | None = None) -> int:
    args, params = start(
        __doc__,
        argv,
        "--processed",
        "--model",
        "--metrics",
        "--plots",
        "--predictions",
        optional=("--manifest", "--subgroups"),
    )
    p = params.evaluate

    ckpt = Checkpoint.load(args.model)
    classes = ckpt.classes
    processed = ProcessedData(args.processed)
    if processed.classes != classes:
        raise InputError(
            f"{args.model}: classes {classes} differ from {args.processed / 'meta.json'}; retrain"
        )
    normalizer = processed.normalizer()
    # A pretrained backbone's own statistics (model.input_stats) are not fitted on this data.
    if ckpt.normalizer.fitted_on == "train" and normalizer != ckpt.normalizer:
        raise InputError(f"{args.model}: trained with a different normalizer than {args.processed}; retrain")
    normalizer = ckpt.normalizer
    test_x, test_idx = processed.split("test")
    labels = test_idx["label_index"].to_numpy(np.int64)

    model = ckpt.build_model()
    device = select_device(p.device, "evaluate.device")
    probs = predict_proba(model, test_x, normalizer, device, p.batch_size)
    val_x, val_idx = processed.split("val")
    val_labels = val_idx["label_index"].to_numpy(np.int64)
    val_probs = predict_proba(model, val_x, normalizer, device, p.batch_size) if len(val_idx) else None
    extra: dict = {"calibration": {"method": None}}
    if p.temperature_scaling and val_probs is not None:
        # Fitted on val, applied to test: every metric below is of the calibrated probabilities.
        probs, extra["calibration"] = cal.calibrate_test(
            val_labels, val_probs, labels, probs, p.n_calibration_bins
        )
        val_probs = cal.apply_temperature(val_probs, extra["calibration"]["temperature"])
    if len(classes) == 2 and val_probs is not None:
        extra["operating_point"] = cal.operating_point(
            classes, p.positive_class, val_labels, val_probs, labels, probs, p.target_sensitivity
        )
    metrics = ev.evaluate_predictions(
        labels, probs, test_idx["patient_id"].to_numpy(), classes, n_bootstrap=p.n_bootstrap,
        ci_level=p.ci_level, n_bins=p.n_calibration_bins, seed=params.seed,
    )  # fmt: skip
    metrics.update(extra)

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
