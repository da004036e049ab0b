"""Stage train: fit the CNN on the train split, early-stop on val, keep the best checkpoint.

Reads:  <processed>/{train,val}.npy + .parquet, normalizer.json, meta.json (pipeline.processed),
        the augmentation policy (models/augment/policy.json), data/interim/label_issues.parquet
        (train rows with is_dropped are left out; the file may be absent), models/tune/best.json
        (the tune stage's best values, used only with train.use_tuned: true).
Writes: the checkpoint (models/model.pt, atomically, on every improvement), dvclive curves
        (<live>/plots/metrics/{train_loss,val_loss,val_balanced_accuracy,val_auroc,lr}.tsv),
        metrics/train.json.
Params: seed, model.*, train.*, augment.mixup_alpha/cutmix_alpha/label_smoothing (with
        train.use_tuned, the searched ones are replaced by the tuned values).
Multi-GPU: ``torchrun --nproc_per_node=N -m stages.train <same args>``; only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import train as tr
from pipeline.augment import AugmentedDataset, load_policy
from pipeline.checkpoint import Checkpoint, ModelSpec
from pipeline.distributed import cleanup_distributed, setup_distributed
from pipeline.errors import InputError
from pipeline.io import write_json
from pipeline.live import log_live, open_live
from pipeline.models import build_model, pretrained_normalizer
from pipeline.params import Params
from pipeline.processed import ProcessedData
from pipeline.tune import read_tuned, with_tuned
from stages._cli import run, start


def _with_tuned_values(params: Params, path: Path | None) -> Params:
    """``params`` with the tune stage's best values (``train.use_tuned: true``)."""
    if path is None or not path.is_file():
        raise InputError(
            f"train.use_tuned is true but the tune result {path} does not exist; run the tune stage"
        )
    values = read_tuned(json.loads(path.read_text(encoding="utf-8")), str(path))
    logging.info("train.use_tuned: %s from %s", values, path)
    return with_tuned(params, values, source=str(path))


def main(argv: list[str] | None = None) -> int:
    args, params = start(
        __doc__,
        argv,
        "--processed",
        "--policy",
        "--label-issues",
        "--model",
        "--live",
        "--metrics",
        optional=("--tuned",),
    )
    if params.train.use_tuned:
        params = _with_tuned_values(params, args.tuned)
    m = params.model
    t0 = time.perf_counter()
    dist_info = setup_distributed(params.train.device)
    try:
        data = ProcessedData(args.processed)
        normalizer = data.normalizer()
        if m.input_stats == "pretrained":  # the statistics the backbone's weights were trained with
            normalizer = pretrained_normalizer(normalizer, m.arch)
        train_x, train_idx = data.split("train")
        val_x, val_idx = data.split("val")
        issues = pd.read_parquet(args.label_issues) if args.label_issues.exists() else None
        keep = ~tr.dropped_mask(train_idx, issues)
        n_dropped = int((~keep).sum())
        if n_dropped:  # copies only the kept rows into memory
            train_x, train_idx = train_x[keep], train_idx[keep].reset_index(drop=True)
        labels = train_idx["label_index"].to_numpy(np.int64)

        torch.manual_seed(params.seed)  # initial weights; DDP then broadcasts rank 0's
        model = build_model(m.arch, train_x.shape[3], len(data.classes), m.width, m.dropout, m.weights_path)
        spec = ModelSpec(m.arch, int(train_x.shape[3]), len(data.classes), m.width, m.dropout)
        dataset = AugmentedDataset(train_x, labels, load_policy(args.policy), params.seed)
        history: list[dict] = []
        best: dict = {}
        live = open_live(args.live) if dist_info.is_main else None

        def save(record: dict, state: dict | None = None) -> None:
            ckpt = Checkpoint.of(
                model, spec, data.classes, normalizer, params=params.model_dump(mode="json"), record=record,
                state_dict=state,
            )  # fmt: skip
            ckpt.save(args.model)

        def on_epoch_end(record: dict) -> None:
            history.append(record)
            if live is not None:
                log_live(live, record)

        def on_best(record: dict, state: dict) -> None:
            best.update(record)
            if dist_info.is_main:
                save(record, state)

        tr.fit_model(
            model, train_x, labels, normalizer, tr.TrainConfig.from_params(params),
            val_images=val_x, val_labels=val_idx["label_index"].to_numpy(np.int64), dataset=dataset,
            device=dist_info.device, distributed=dist_info.is_distributed, on_epoch_end=on_epoch_end,
            on_best=on_best,
        )  # fmt: skip
        if dist_info.is_main:
            if not best:  # no validation set (or metric never defined): keep the last weights
                best = history[-1]
                save(best)
            live.end()
            metrics = tr.train_summary(history, best, n_train=len(labels), n_dropped=n_dropped, n_val=len(val_idx),
                                       device=dist_info.device, world_size=dist_info.world_size,
                                       seconds=time.perf_counter() - t0)  # fmt: skip
            write_json(metrics, args.metrics)
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
