"""CNN training: one frozen config, the loop, and the pieces it is made of.

:func:`fit_model` reads top to bottom (setup, epoch loop, validation, early stopping, best weights)
and is configured by one :class:`TrainConfig` built from params (:meth:`TrainConfig.from_params`);
the loader, the optimizer, one epoch and early stopping are named pieces below it. The train stage
and the label-issue auditor both call it. Running a trained network (device, inputs,
probabilities) is :mod:`pipeline.inference`; the checkpoint is :mod:`pipeline.checkpoint`;
``torchrun`` setup is :mod:`pipeline.distributed`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from pipeline.augment import AugmentedDataset
from pipeline.errors import InputError
from pipeline.inference import autocast, n_outputs, nhwc_to_tensor, predict_proba, to_model_input
from pipeline.mixup import mix_batch, smooth_targets, soft_cross_entropy
from pipeline.params import Params
from pipeline.processed import Normalizer

log = logging.getLogger(__name__)

# Metrics where larger is better; everything else (val_loss) is minimised.
MAXIMIZED = {"val_balanced_accuracy", "val_auroc"}
MONITORS = (*sorted(MAXIMIZED), "val_loss")
FINETUNE = ("full", "linear_probe", "freeze_then_unfreeze")


@dataclass(frozen=True)
class TrainConfig:
    """How to train, in one frozen object (built from params by :meth:`from_params`).

    Attributes:
        epochs: Maximum number of epochs.
        batch_size: Images per step *per process*.
        lr, weight_decay: AdamW settings (no decay on biases and norm weights).
        warmup_epochs: Linear warmup before the cosine decay (per step).
        mixup_alpha, cutmix_alpha, label_smoothing: Batch regularisation (pipeline.mixup);
            all 0 = plain cross entropy on one-hot targets.
        class_weights: Weight the loss with "balanced" class weights from the train labels:
            True, False, or "auto" = when the classes are unbalanced beyond ``imbalance_ratio``
            (:func:`loss_class_weights`).
        imbalance_ratio: Largest / smallest train class count above which "auto" weights the loss.
        patience: Stop after this many epochs without improvement of ``monitor`` (None = never).
        monitor: val_balanced_accuracy | val_auroc (maximised) or val_loss (minimised).
        seed: Seeds weight-independent randomness: shuffling, mixup, dropout.
        num_workers: DataLoader worker processes (persistent when > 0).
        amp: Mixed precision on CUDA (bf16 where supported).
        finetune: "full" (train everything), "linear_probe" (the classifier only, the backbone
            frozen with its BatchNorm statistics) or "freeze_then_unfreeze" (the classifier for
            ``freeze_epochs`` epochs, then everything): :class:`FreezeSchedule`.
        freeze_epochs: Epochs with the backbone frozen under "freeze_then_unfreeze".
        backbone_lr_scale: The backbone's learning rate is ``lr * backbone_lr_scale``, the
            classifier's ``lr`` (:func:`param_groups`): pretrained features move less than the new head.
        recompute_bn: Re-estimate BatchNorm running statistics on the un-augmented train images
            after every epoch that is validated (and after the last one), so validation, the kept
            weights and later predictions use statistics of plain images from the current weights
            (:func:`recompute_bn_stats`).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0
    class_weights: bool | str = False
    imbalance_ratio: float = 1.5
    patience: int | None = None
    monitor: str = "val_balanced_accuracy"
    seed: int = 0
    num_workers: int = 0
    amp: bool = True
    finetune: str = "full"
    freeze_epochs: int = 0
    backbone_lr_scale: float = 1.0
    recompute_bn: bool = True

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise InputError(f"train.monitor: expected one of {list(MONITORS)}, got {self.monitor!r}")
        if self.finetune not in FINETUNE:
            raise InputError(f"train.finetune: expected one of {list(FINETUNE)}, got {self.finetune!r}")
        if self.class_weights not in (True, False, "auto"):
            raise InputError(f"train.class_weights: expected true, false or auto, got {self.class_weights!r}")

    @classmethod
    def from_params(cls, params: Params) -> TrainConfig:
        """The train stage's config: ``train.*``, the batch regularisation of ``augment.*``, ``seed``."""
        p, a = params.train, params.augment
        return cls(
            epochs=p.epochs,
            batch_size=p.batch_size,
            lr=p.lr,
            weight_decay=p.weight_decay,
            warmup_epochs=p.warmup_epochs,
            mixup_alpha=a.mixup_alpha,
            cutmix_alpha=a.cutmix_alpha,
            label_smoothing=a.label_smoothing,
            class_weights=p.class_weights,
            imbalance_ratio=p.imbalance_ratio,
            patience=p.patience,
            monitor=p.monitor,
            seed=params.seed,
            num_workers=p.num_workers,
            amp=p.amp,
            finetune=p.finetune,
            freeze_epochs=p.freeze_epochs,
            backbone_lr_scale=p.backbone_lr_scale,
        )

    @property
    def eval_batch_size(self) -> int:
        """Images per forward pass without gradients (validation, BatchNorm statistics)."""
        return max(256, self.batch_size)


# ----------------------------------------------------------------------------- the loop


def fit_model(
    model: nn.Module,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    normalizer: Normalizer,
    config: TrainConfig,
    *,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    dataset: Dataset | None = None,
    device: str | torch.device = "cpu",
    distributed: bool = False,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    on_best: Callable[[dict[str, float], dict[str, torch.Tensor]], None] | None = None,
) -> nn.Module:
    """Train ``model``; return it with the best weights (by ``config.monitor``) or the last ones.

    Args:
        model: From :func:`pipeline.models.build_model` (moved to ``device`` here).
        train_images: (N, H, W, C) uint8/uint16 array; trained on when ``dataset`` is None, and
            the plain images for ``config.recompute_bn``.
        train_labels: (N,) int class indices in [0, K).
        normalizer: The fitted normalizer, applied on the device.
        config: How to train.
        val_images, val_labels: Validation set; without it there is no early stopping and the
            last weights are returned.
        dataset: Training dataset yielding ((C, H, W) integer tensor, label), i.e. a
            :class:`pipeline.augment.AugmentedDataset` with the augmentation policy; it gets
            ``set_epoch(epoch)``. None = ``train_images`` without augmentation.
        device: "cpu", "cuda", "cuda:1", "mps" or a torch.device.
        distributed: Wrap in DDP (torch.distributed must be initialised, see
            :func:`pipeline.distributed.setup_distributed`).
        on_epoch_end: Called with the epoch record (epoch, train_loss, lr, val_*, seconds).
        on_best: Called with the record and a CPU copy of the state_dict when the monitor
            improves (to save a checkpoint as soon as it exists).

    Returns:
        The trained, unwrapped model in eval mode.

    Raises:
        ValueError: Labels outside [0, K) or no training image (a bug in the caller).
    """
    # ---- setup
    device = torch.device(device)
    train_labels = _checked_labels(train_labels, n_outputs(model))
    has_val = val_images is not None and val_labels is not None and len(val_labels) > 0
    rank = dist.get_rank() if distributed else 0
    # Seed what is not already driven by an explicit generator (dropout); each rank draws
    # different mixup/dropout noise but the same initial weights come from the caller.
    torch.manual_seed(config.seed + rank)
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    mix_gen = torch.Generator().manual_seed(config.seed + 1_000_003 * (rank + 1))

    net, model = _place(model, device, distributed)  # net: the plain module; model: maybe DDP-wrapped
    train_set = (
        dataset if dataset is not None else AugmentedDataset(train_images, train_labels, None, config.seed)
    )
    loader = make_loader(
        train_set, config, shuffle_gen, distributed=distributed, pin_memory=device.type == "cuda"
    )
    step = Stepper.create(net, config, steps_per_epoch=max(1, len(loader)), device=device)
    weights = loss_class_weights(train_labels, n_outputs(net), config)
    weights = weights.to(device) if weights is not None else None
    freeze = FreezeSchedule.create(net, config, distributed=distributed)
    stopping = EarlyStopping(config.monitor, config.patience)

    with _deterministic(device.type == "cpu"):
        for epoch in range(config.epochs):
            # ---- one epoch of training
            t0 = time.perf_counter()
            loader.sampler.set_epoch(epoch)  # reshuffles (DDP) and sets per-sample augmentation seeds
            frozen = freeze.apply(epoch)  # a frozen backbone gets no gradient and keeps its BN statistics
            train_loss = train_one_epoch(
                model, loader, step, normalizer, config, weights, mix_gen, distributed,
                frozen=freeze if frozen else None,
            )  # fmt: skip
            record: dict[str, float] = {"epoch": epoch, "train_loss": train_loss, "lr": step.lr}
            is_last = epoch == config.epochs - 1
            if config.recompute_bn and not frozen and train_images is not None and (has_val or is_last):
                # Eval-mode statistics of plain images, before validation and before the weights
                # can be kept as the best (see recompute_bn_stats).
                recompute_bn_stats(net, train_images, normalizer, device, config.eval_batch_size)

            # ---- validation on the full, unpadded validation set
            if has_val:
                probs = predict_proba(
                    net, val_images, normalizer, device, config.eval_batch_size, shard=distributed, amp=config.amp
                )  # fmt: skip
                record.update(validation_metrics(np.asarray(val_labels, dtype=np.int64), probs))
            record["seconds"] = time.perf_counter() - t0
            log.info("epoch %d/%d %s", epoch + 1, config.epochs, _format_record(record))
            if on_epoch_end is not None:
                on_epoch_end(record)

            # ---- keep the best weights; stop when the monitor stops improving
            if not has_val:
                continue
            if stopping.update(record, net) and on_best is not None:
                on_best(record, stopping.best_state)
            if stopping.should_stop:
                log.info("early stop after epoch %d: no %s improvement for %d epochs", epoch + 1, config.monitor,
                         config.patience)  # fmt: skip
                break

    if stopping.best_state is not None:
        net.load_state_dict(stopping.best_state)
    return net.eval()


def _place(model: nn.Module, device: torch.device, distributed: bool) -> tuple[nn.Module, nn.Module]:
    """Move ``model`` to ``device`` (channels_last on CUDA); under DDP also wrap it.

    Returns:
        ``(net, model)``: the plain module (for validation, BatchNorm statistics, the kept weights)
        and what the training step calls (the DDP wrapper, or ``net`` itself).
    """
    net = model.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    if not distributed:
        return net, net
    # DDP broadcasts rank 0's weights at construction, so all ranks start identical.
    ddp = nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None
    )
    return net, ddp


def _checked_labels(labels: np.ndarray, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("fit_model: no training images")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(
            f"fit_model: labels must be in [0, {n_classes}), got [{labels.min()}, {labels.max()}]"
        )
    return labels


def _format_record(record: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch")


# ----------------------------------------------------------------------------- the pieces


def make_loader(
    train_set: Dataset,
    config: TrainConfig,
    shuffle_gen: torch.Generator,
    *,
    distributed: bool,
    pin_memory: bool,
) -> DataLoader:
    """Shuffling loader of integer batches; its ``sampler`` is an :class:`EpochSampler`."""
    # DistributedSampler pads the *training* set to a multiple of world_size: harmless for SGD.
    base_sampler = (
        DistributedSampler(train_set, dist.get_world_size(), dist.get_rank(), shuffle=True, seed=config.seed)
        if distributed
        else RandomSampler(train_set, generator=shuffle_gen)
    )
    return DataLoader(
        EpochIndexed(train_set),
        batch_size=config.batch_size,
        sampler=EpochSampler(base_sampler),
        # BatchNorm cannot train on a batch of one; drop the ragged tail when there is more than one batch.
        drop_last=len(base_sampler) > config.batch_size,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,  # workers (and their imports) live across epochs
        pin_memory=pin_memory,  # page-locked host memory: async copies with non_blocking=True
        collate_fn=collate_uint,
    )


@dataclass
class Stepper:
    """Optimizer, LR schedule and loss scaler: one optimisation step at a time."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    @classmethod
    def create(
        cls, net: nn.Module, config: TrainConfig, *, steps_per_epoch: int, device: torch.device
    ) -> Stepper:
        """AdamW (no weight decay on biases and BatchNorm parameters, standard practice), warmup + cosine."""
        is_cuda = device.type == "cuda"
        optimizer = torch.optim.AdamW(param_groups(net, config), lr=config.lr, fused=is_cuda)
        warmup, total = config.warmup_epochs * steps_per_epoch, config.epochs * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total))
        # fp16 (no bf16 support) needs loss scaling; bf16 and fp32 do not.
        scaler = torch.amp.GradScaler(
            "cuda", enabled=is_cuda and config.amp and not torch.cuda.is_bf16_supported()
        )
        return cls(optimizer, scheduler, scaler)

    def __call__(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    @property
    def lr(self) -> float:
        """The classifier's (peak-``lr``) current learning rate."""
        return float(max(g["lr"] for g in self.optimizer.param_groups))


def head_parameters(net: nn.Module) -> set[int]:
    """ids of the classifier's parameters: those of the network's last ``nn.Linear`` layer."""
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    return {id(p) for p in last.parameters()}


def param_groups(net: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: backbone / classifier x decay / no decay (biases and norm weights).

    The backbone's learning rate is ``lr * backbone_lr_scale`` (the warmup-cosine schedule scales
    every group alike); empty groups are left out.
    """
    head = head_parameters(net)
    groups = []
    for is_head in (False, True):
        lr = config.lr if is_head else config.lr * config.backbone_lr_scale
        for decay in (True, False):
            params = [p for p in net.parameters() if (id(p) in head) == is_head and (p.ndim > 1) == decay]
            if params:
                groups.append(
                    {"params": params, "lr": lr, "weight_decay": config.weight_decay if decay else 0.0}
                )
    return groups


@dataclass
class FreezeSchedule:
    """Which epochs train the classifier only (``config.finetune``), and how to freeze the backbone.

    Frozen = no gradient for the backbone's parameters (AdamW then skips them: no update, no
    decay) and its BatchNorm layers in eval mode, so their pretrained running statistics are kept.
    """

    backbone: list[nn.Parameter]
    norms: list[nn.Module]
    frozen_epochs: float  # math.inf for a linear probe

    @classmethod
    def create(cls, net: nn.Module, config: TrainConfig, *, distributed: bool) -> FreezeSchedule:
        head = head_parameters(net)
        frozen_epochs = {"full": 0, "linear_probe": math.inf, "freeze_then_unfreeze": config.freeze_epochs}
        n = frozen_epochs[config.finetune]
        if n and distributed:
            raise InputError(f"train.finetune: {config.finetune} is not supported under torchrun (DDP)")
        head_modules = {m for m in net.modules() if any(id(p) in head for p in m.parameters(recurse=False))}
        return cls(
            backbone=[p for p in net.parameters() if id(p) not in head],
            norms=[
                m for m in net.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in head_modules
            ],
            frozen_epochs=n,
        )  # fmt: skip

    def apply(self, epoch: int) -> bool:
        """Set the backbone's ``requires_grad`` for ``epoch``; True when it is frozen."""
        frozen = epoch < self.frozen_epochs
        for p in self.backbone:
            p.requires_grad_(not frozen)
        return frozen

    def train_mode(self, model: nn.Module) -> None:
        """``model.train()`` with the frozen backbone's BatchNorm layers kept in eval mode."""
        model.train()
        for m in self.norms:
            m.eval()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    step: Stepper,
    normalizer: Normalizer,
    config: TrainConfig,
    weights: torch.Tensor | None,
    mix_gen: torch.Generator,
    distributed: bool,
    frozen: FreezeSchedule | None = None,
) -> float:
    """One pass over ``loader``; returns the mean training loss (over all ranks under DDP).

    ``frozen``: the schedule whose backbone is frozen this epoch (its BatchNorm stays in eval mode).
    """
    device = next(model.parameters()).device
    n_classes = n_outputs(getattr(model, "module", model))
    if frozen is not None:
        frozen.train_mode(model)
    else:
        model.train()
    loss_sum = torch.zeros((), device=device)
    n_seen = 0
    for x_uint, y in loader:
        x = to_model_input(x_uint, normalizer, device)
        y = y.to(device, non_blocking=True)
        # Smoothing once, inside the soft targets; mixup then mixes the soft targets.
        targets = smooth_targets(y, n_classes, config.label_smoothing)
        if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
            x, targets = mix_batch(x, targets, config.mixup_alpha, config.cutmix_alpha, mix_gen)
        with autocast(device, config.amp):
            logits = model(x)
        loss = _loss(logits.float(), targets, weights)
        step(loss)
        # Accumulate on the device: .item() every step would sync CUDA each batch.
        loss_sum += loss.detach() * len(y)
        n_seen += len(y)
    if distributed:
        totals = torch.stack([loss_sum, torch.tensor(float(n_seen), device=device)])
        dist.all_reduce(totals)
        loss_sum, n_seen = totals[0], int(totals[1].item())
    return float(loss_sum.item() / max(n_seen, 1))


@dataclass
class EarlyStopping:
    """Keeps the best weights by ``monitor`` and counts epochs without improvement."""

    monitor: str
    patience: int | None
    best_value: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    epochs_since_best: int = 0

    def update(self, record: dict[str, float], net: nn.Module) -> bool:
        """Take this epoch's record; True when it improved (a CPU copy of the weights is kept)."""
        value = record[self.monitor]
        if _is_better(self.monitor, value, self.best_value):
            self.best_value = value
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
            self.epochs_since_best = 0
            return True
        self.epochs_since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.epochs_since_best >= self.patience


def _is_better(monitor: str, value: float, best: float | None) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if monitor in MAXIMIZED else value < best


# ----------------------------------------------------------------------------- data


class EpochSampler(Sampler):
    """Wrap a sampler so that it yields ``(epoch, index)`` instead of ``index``.

    The epoch then travels with every index to the worker processes, so per-epoch augmentation
    seeds stay right with ``persistent_workers=True`` (a ``set_epoch`` on the main process's
    dataset would not reach persistent workers' copies).
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, int(i)) for i in self.sampler)


class EpochIndexed(Dataset):
    """Dataset side of :class:`EpochSampler`: item ``(epoch, i)`` = ``dataset[i]`` in ``epoch``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def collate_uint(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (C, H, W) integer image tensors into an NCHW batch; the dtype stays integer.

    uint16 becomes int32 (torch has few uint16 kernels); the values are unchanged.
    """
    images = torch.stack([torch.as_tensor(im) for im, _ in batch])
    if images.dtype == torch.uint16:
        images = images.to(torch.int32)
    labels = torch.tensor([int(y) for _, y in batch], dtype=torch.long)
    return images, labels


@torch.no_grad()
def recompute_bn_stats(
    model: nn.Module,
    images: np.ndarray,
    normalizer: Normalizer,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    max_images: int = 4096,
) -> None:
    """Re-estimate BatchNorm running statistics on un-augmented images ("precise BN").

    During training the running mean/variance are an exponential average over the last few
    batches, which were augmented and mixed (mixup lowers the variance) and came from weights
    that have moved since. On a small data set with few steps per epoch that mismatch shifts
    the eval-mode logits from epoch to epoch (validation balanced accuracy swings while AUROC
    hardly moves). Here the statistics are recomputed with the current weights as an equal-weight
    average over batches of the plain (normalized, un-augmented) images that evaluation also sees.

    Args:
        model: The network (a DDP wrapper is unwrapped); left in the mode it was in.
        images: (N, H, W, C) uint array; at most ``max_images`` evenly spaced rows are used.
        normalizer: The fitted normalizer.
        device: Where to run.
        batch_size: Images per forward pass (>= 2 for BatchNorm).
        max_images: Cap on the images used (bounds the cost on large data sets).
    """
    net = getattr(model, "module", model)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    n = len(images)
    if not norms or n < 2:
        return
    device = torch.device(device)
    rows = np.linspace(0, n - 1, min(n, max_images)).round().astype(np.int64)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative (equal-weight) average over the batches below
    was_training = net.training
    net.train()
    batch_size = max(2, batch_size)
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        if len(chunk) < 2:  # a single-image batch has no variance
            break
        net(to_model_input(nhwc_to_tensor(np.asarray(images[chunk])), normalizer, device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    net.train(was_training)


# ----------------------------------------------------------------------------- metrics and loss


def validation_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """val_loss (cross entropy, no smoothing), val_balanced_accuracy, val_auroc (macro OvR).

    AUROC is NaN when a class is missing from ``labels``.
    """
    n_classes = probs.shape[1]
    p_true = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    auroc = float("nan")
    present = np.unique(labels)
    if len(present) == n_classes:
        if n_classes == 2:
            auroc = float(roc_auc_score(labels, probs[:, 1]))
        else:
            auroc = float(
                roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=range(n_classes))
            )
    return {
        "val_loss": float(-np.log(p_true).mean()),
        "val_balanced_accuracy": float(balanced_accuracy_score(labels, probs.argmax(1))),
        "val_auroc": auroc,
    }


def loss_class_weights(labels: np.ndarray, n_classes: int, config: TrainConfig) -> torch.Tensor | None:
    """The class-weight policy: "balanced" weights, or None for an unweighted loss.

    ``config.class_weights`` True/False decides; "auto" weights the loss when the largest train
    class outnumbers the smallest present one by more than ``config.imbalance_ratio``. Unweighted,
    a network on a 20:1 set learns to predict the majority class (low loss, chance-level balanced
    accuracy); weighted, every class contributes equally to the loss.
    """
    counts = np.bincount(labels, minlength=n_classes)
    present = counts[counts > 0]
    ratio = float(present.max() / present.min())
    use = config.class_weights is True or (config.class_weights == "auto" and ratio > config.imbalance_ratio)
    log.info(
        "class counts %s (largest/smallest %.2f): %s loss",
        counts.tolist(),
        ratio,
        "class-weighted" if use else "unweighted",
    )
    return balanced_class_weights(labels, n_classes) if use else None


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """sklearn's "balanced" weights n / (K * count_c); absent classes get weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warmup from ~0 to 1, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """torch.use_deterministic_algorithms for the duration of training (restored afterwards)."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=True)


def _loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Soft-target cross entropy; with class weights, weighted like nn.CrossEntropyLoss.

    Weighted: sum_i sum_c w_c t_ic (-log p_ic) / sum_i sum_c w_c t_ic, i.e. the targets are
    scaled by the weights and the mean is renormalised by the total weight.
    """
    if weights is None:
        return soft_cross_entropy(logits, targets)
    weighted = targets * weights
    return soft_cross_entropy(logits, weighted) * (len(targets) / weighted.sum().clamp_min(1e-12))


# ----------------------------------------------------------------------------- stage helpers


def dropped_mask(index: pd.DataFrame, label_issues: pd.DataFrame | None) -> np.ndarray:
    """Rows of the train ``index`` that the label-issue stage dropped (``is_dropped``).

    Args:
        index: The train split table (``image_id`` column).
        label_issues: ``data/interim/label_issues.parquet`` or None (no file: nothing dropped).

    Returns:
        Boolean (N,) mask aligned with ``index``.
    """
    if label_issues is None or label_issues.empty:
        return np.zeros(len(index), dtype=bool)
    if "is_dropped" not in label_issues.columns:
        raise ValueError(
            f"label_issues table: expected an is_dropped column, got {list(label_issues.columns)}"
        )
    dropped = label_issues["is_dropped"].astype(bool)
    if "split" in label_issues.columns:
        dropped &= label_issues["split"] == "train"
    return index["image_id"].isin(set(label_issues.loc[dropped, "image_id"])).to_numpy()


def train_summary(
    history: list[dict[str, float]],
    best: dict[str, float],
    *,
    n_train: int,
    n_dropped: int,
    n_val: int,
    device: torch.device,
    world_size: int,
    seconds: float,
) -> dict[str, Any]:
    """The content of ``metrics/train.json`` (flat, so ``dvc metrics show`` lists it cleanly)."""

    def num(x: float | None) -> float | None:
        return None if x is None or not math.isfinite(x) else round(float(x), 6)

    train_seconds = sum(r["seconds"] for r in history)
    return {
        "best_epoch": int(best["epoch"]),
        "epochs_run": len(history),
        "val_loss": num(best.get("val_loss")),
        "val_balanced_accuracy": num(best.get("val_balanced_accuracy")),
        "val_auroc": num(best.get("val_auroc")),
        "train_loss": num(best.get("train_loss")),
        "n_train": int(n_train),
        "n_dropped": int(n_dropped),
        "n_val": int(n_val),
        "device": device.type,
        "world_size": int(world_size),
        "seconds": round(seconds, 2),
        "seconds_per_epoch": round(train_seconds / max(len(history), 1), 3),
    }
