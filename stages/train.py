"""Stage train: fit the CNN on the train split, early-stop on val, keep the best checkpoint.

Reads:  <processed>/{train,val}.npy + .parquet, normalizer.json, meta.json (pipeline.normalize),
        the augmentation policy (models/augment/policy.json), data/interim/label_issues.parquet
        (train rows with is_dropped are left out; the file may be absent).
Writes: the checkpoint (models/model.pt, atomically, on every improvement), dvclive curves
        (<live>/plots/metrics/{train_loss,val_loss,val_balanced_accuracy,val_auroc,lr}.tsv),
        metrics/train.json.
Params: seed, model.*, train.*, augment.mixup_alpha/cutmix_alpha/label_smoothing.
Multi-GPU: ``torchrun --nproc_per_node=N -m stages.train <same args>``; only rank 0 writes.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import train as tr
from pipeline.augment import AugmentedDataset, load_policy
from pipeline.io import write_json
from pipeline.models import build_model
from pipeline.normalize import load_meta, load_normalizer, load_split
from pipeline.params import load_params
from stages._cli import run


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--params", "--processed", "--policy", "--label-issues", "--model", "--live", "--metrics"):
        ap.add_argument(flag, type=Path, required=True)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    p, m, a = params.train, params.model, params.augment
    t0 = time.perf_counter()
    run = tr.setup_distributed(p.device)
    try:
        classes = list(load_meta(args.processed)["classes"])
        normalizer = load_normalizer(args.processed / "normalizer.json")
        train_x, train_idx = load_split(args.processed, "train")
        val_x, val_idx = load_split(args.processed, "val")
        issues = pd.read_parquet(args.label_issues) if args.label_issues.exists() else None
        keep = ~tr.dropped_mask(train_idx, issues)
        n_dropped = int((~keep).sum())
        if n_dropped:  # copies only the kept rows into memory
            train_x, train_idx = train_x[keep], train_idx[keep].reset_index(drop=True)
        labels = train_idx["label_index"].to_numpy(np.int64)

        torch.manual_seed(params.seed)  # initial weights; DDP then broadcasts rank 0's
        model = build_model(m.arch, train_x.shape[3], len(classes), m.width, m.dropout, m.weights_path)
        dataset = AugmentedDataset(train_x, labels, load_policy(args.policy), params.seed)
        ckpt_info = dict(
            arch=m.arch, in_channels=train_x.shape[3], width=m.width, dropout=m.dropout, classes=classes,
            normalizer=normalizer, params=params.model_dump(mode="json"),
        )  # fmt: skip
        history: list[dict] = []
        best: dict = {}
        live = tr.open_live(args.live) if run.is_main else None

        def on_epoch_end(record: dict) -> None:
            history.append(record)
            if live is not None:
                tr.log_live(live, record)

        def on_best(record: dict, state: dict) -> None:
            best.update(record)
            if run.is_main:
                ckpt = tr.make_checkpoint(
                    model, **ckpt_info, epoch=record["epoch"], val_metrics=record, state_dict=state
                )
                tr.save_checkpoint(ckpt, args.model)

        tr.fit_model(
            model, train_x, labels, normalizer, val_images=val_x, val_labels=val_idx["label_index"].to_numpy(np.int64),
            epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay,
            warmup_epochs=p.warmup_epochs, dataset=dataset, mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha,
            label_smoothing=a.label_smoothing, class_weights=p.class_weights, patience=p.patience,
            monitor=p.monitor, device=run.device, seed=params.seed, num_workers=p.num_workers, amp=p.amp,
            distributed=run.is_distributed, on_epoch_end=on_epoch_end, on_best=on_best,
        )  # fmt: skip
        if run.is_main:
            if not best:  # no validation set (or metric never defined): keep the last weights
                best = history[-1]
                tr.save_checkpoint(
                    tr.make_checkpoint(model, **ckpt_info, epoch=best["epoch"], val_metrics=best), args.model
                )
            live.end()
            metrics = tr.train_summary(history, best, n_train=len(labels), n_dropped=n_dropped, n_val=len(val_idx),
                                       device=run.device, world_size=run.world_size, seconds=time.perf_counter() - t0)  # fmt: skip
            write_json(metrics, args.metrics)
    finally:
        tr.cleanup_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
