"""CNN training: device choice, the training loop, prediction, and checkpoints.

The loop in :func:`fit_model` reads top to bottom (setup, epoch loop, step, validation, early
stopping, best weights); the comments say why things are done the way they are.

Data arrive as uint8/uint16 NHWC arrays (``data/processed/*.npy``). Batches stay integer on the
host (4x less to copy than float32, and pinned on CUDA), move to the device, and are turned into
normalized float NCHW there with the one shared :func:`pipeline.normalize.apply_normalizer`, so
training, label-issue finding and evaluation see exactly the same inputs.

Multi-GPU: under ``torchrun`` the stage calls :func:`setup_distributed`; :func:`fit_model` then
wraps the model in DistributedDataParallel with a DistributedSampler for training. Validation
is *not* run through a DistributedSampler (it pads the last shard with repeated samples, which
biases metrics): each rank predicts one contiguous, unpadded shard and the shards are gathered in
rank order, so every rank sees the same full-validation metrics and takes the same early-stopping
decision.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from pipeline.augment import AugmentedDataset
from pipeline.io import atomic_path
from pipeline.mixup import mix_batch, smooth_targets, soft_cross_entropy
from pipeline.models import build_model
from pipeline.normalize import apply_normalizer

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# Metrics where larger is better; everything else (val_loss) is minimised.
MAXIMIZED = {"val_balanced_accuracy", "val_auroc"}


# ----------------------------------------------------------------------------- device & DDP


def select_device(requested: str = "auto") -> torch.device:
    """Resolve ``train.device``: auto = cuda, then mps, then cpu.

    Raises:
        ValueError: An explicitly requested device is not available.
    """
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' requested but torch.cuda.is_available() is False")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device: 'mps' requested but MPS is not available")
    if requested not in ("cuda", "mps", "cpu"):
        raise ValueError(f"train.device: expected auto|cuda|mps|cpu, got {requested!r}")
    return torch.device(requested)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(requested_device: str = "auto") -> DistInfo:
    """Initialise torch.distributed when launched by ``torchrun`` (WORLD_SIZE > 1).

    NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo otherwise. Without torchrun
    this only resolves the device.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(requested_device)
    if world_size <= 1:
        return DistInfo(rank=0, world_size=1, device=device)
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Contiguous, unpadded shard ``[start, stop)`` of ``n`` rows for ``rank`` (sizes differ by <= 1)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _gather_shards(local: torch.Tensor, n: int, world_size: int) -> torch.Tensor:
    """all_gather contiguous shards of different sizes and concatenate them in rank order.

    all_gather needs equal shapes, so each shard is padded to the largest size and the padding is
    cut off again using the known sizes: no sample is counted twice.
    """
    sizes = [shard_bounds(n, world_size, r)[1] - shard_bounds(n, world_size, r)[0] for r in range(world_size)]
    pad = torch.zeros((max(sizes) - local.shape[0], *local.shape[1:]), dtype=local.dtype, device=local.device)
    buffers = [torch.empty_like(torch.cat([local, pad])) for _ in range(world_size)]
    dist.all_gather(buffers, torch.cat([local, pad]))
    return torch.cat([b[:s] for b, s in zip(buffers, sizes, strict=True)])


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


def nhwc_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W[, C]) uint8/uint16 array -> integer (N, C, H, W) tensor view (no float copy)."""
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # read-only memmap slice; torch wants writable memory
        images = images.copy()
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype == np.uint16:
        images = images.astype(np.int32)
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def to_model_input(x: torch.Tensor, normalizer: Any, device: torch.device) -> torch.Tensor:
    """Integer NCHW batch -> normalized float NCHW on ``device``.

    The integer batch is what crosses the host-device link (4x smaller than float32). On CUDA
    the result is channels_last, which cuDNN prefers for conv nets under AMP.
    """
    x = x.to(device, non_blocking=True).float()
    x = apply_normalizer(x, normalizer)
    if device.type == "cuda":
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast where supported (no loss scaling needed), fp16 otherwise; CUDA only.

    On the CPU we stay in fp32: it keeps training bit-reproducible and CPU autocast is slow for
    convolutions anyway.
    """
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


# ----------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    normalizer: Any,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    shard: bool = False,
    amp: bool = True,
) -> np.ndarray:
    """Class probabilities for NHWC images, in input order.

    Args:
        model: A classifier (a DDP wrapper is unwrapped).
        images: (N, H, W, C) uint8/uint16 array (a memmap is fine; read batch by batch).
        normalizer: The fitted normalizer (:func:`pipeline.normalize.load_normalizer`).
        device: Where to run.
        batch_size: Images per forward pass.
        shard: Under torch.distributed, predict only this rank's contiguous shard and gather
            all shards (no padding, no duplicates). Every rank gets the full result.
        amp: Autocast on CUDA.

    Returns:
        float32 (N, n_classes) probabilities, rows summing to 1.
    """
    device = torch.device(device)
    net = getattr(model, "module", model)
    was_training = net.training
    net.eval()
    n = len(images)
    start, stop = (0, n)
    world_size = dist.get_world_size() if shard and dist.is_initialized() else 1
    if world_size > 1:
        start, stop = shard_bounds(n, world_size, dist.get_rank())
    out = []
    for i in range(start, stop, batch_size):
        x = nhwc_to_tensor(images[i : min(i + batch_size, stop)])
        with _autocast(device, amp):
            logits = net(to_model_input(x, normalizer, device))
        out.append(torch.softmax(logits.float(), dim=1))
    n_classes = _n_outputs(net)
    probs = torch.cat(out) if out else torch.zeros((0, n_classes), device=device)
    if world_size > 1:
        probs = _gather_shards(probs, n, world_size)
    net.train(was_training)
    return probs.cpu().numpy()


@torch.no_grad()
def recompute_bn_stats(
    model: nn.Module,
    images: np.ndarray,
    normalizer: Any,
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


def _n_outputs(net: nn.Module) -> int:
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


# ----------------------------------------------------------------------------- metrics


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


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """sklearn's "balanced" weights n / (K * count_c); absent classes get weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def _is_better(monitor: str, value: float, best: float | None) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if monitor in MAXIMIZED else value < best


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


# ----------------------------------------------------------------------------- the loop


def fit_model(
    model: nn.Module,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    normalizer: Any,
    *,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    warmup_epochs: int = 0,
    dataset: Dataset | None = None,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    label_smoothing: float = 0.0,
    class_weights: bool = False,
    patience: int | None = None,
    monitor: str = "val_balanced_accuracy",
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 0,
    amp: bool = True,
    distributed: bool = False,
    recompute_bn: bool = True,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    on_best: Callable[[dict[str, float], dict[str, torch.Tensor]], None] | None = None,
) -> nn.Module:
    """Train ``model``; return it with the best weights (by ``monitor``) or the last ones.

    Args:
        model: From :func:`pipeline.models.build_model` (moved to ``device`` here).
        train_images: (N, H, W, C) uint8/uint16 array; trained on when ``dataset`` is None, and
            the plain images for ``recompute_bn``.
        train_labels: (N,) int class indices in [0, K).
        normalizer: The fitted normalizer, applied on the device.
        val_images, val_labels: Validation set; without it there is no early stopping and the
            last weights are returned.
        epochs: Maximum number of epochs.
        batch_size: Images per step *per process*.
        lr, weight_decay: AdamW settings (no decay on biases and norm weights).
        warmup_epochs: Linear warmup before the cosine decay (per step).
        dataset: Training dataset yielding ((C, H, W) integer tensor, label), i.e. a
            :class:`pipeline.augment.AugmentedDataset` with the augmentation policy; it gets
            ``set_epoch(epoch)``. None = ``train_images`` without augmentation.
        mixup_alpha, cutmix_alpha, label_smoothing: Batch regularisation (pipeline.mixup);
            all 0 = plain cross entropy on one-hot targets.
        class_weights: Weight the loss with "balanced" class weights from ``train_labels``.
        patience: Stop after this many epochs without improvement of ``monitor`` (None = never).
        monitor: val_balanced_accuracy | val_auroc (maximised) or val_loss (minimised).
        device: "cpu", "cuda", "cuda:1", "mps" or a torch.device.
        seed: Seeds weight-independent randomness here: shuffling, mixup, dropout.
        num_workers: DataLoader worker processes (persistent when > 0).
        amp: Mixed precision on CUDA (bf16 where supported).
        distributed: Wrap in DDP (torch.distributed must be initialised, see setup_distributed).
        recompute_bn: Re-estimate BatchNorm running statistics on the un-augmented
            ``train_images`` after every epoch that is validated (and after the last one), so
            validation, the kept weights and later predictions use statistics of plain images
            from the current weights (:func:`recompute_bn_stats`).
        on_epoch_end: Called with the epoch record (epoch, train_loss, val_*, lr, seconds).
        on_best: Called with the record and a CPU copy of the state_dict when ``monitor``
            improves (to save a checkpoint as soon as it exists).

    Returns:
        The trained, unwrapped model in eval mode.

    Raises:
        ValueError: Bad labels or an unknown ``monitor``.
    """
    # ---- setup
    device = torch.device(device)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    n_classes = _n_outputs(model)
    if train_labels.size == 0:
        raise ValueError("fit_model: no training images")
    if train_labels.min() < 0 or train_labels.max() >= n_classes:
        raise ValueError(
            f"fit_model: labels must be in [0, {n_classes}), got [{train_labels.min()}, {train_labels.max()}]"
        )
    if monitor not in (*MAXIMIZED, "val_loss"):
        raise ValueError(
            f"train.monitor: expected one of {sorted((*MAXIMIZED, 'val_loss'))}, got {monitor!r}"
        )
    has_val = val_images is not None and val_labels is not None and len(val_labels) > 0
    rank = dist.get_rank() if distributed else 0
    world_size = dist.get_world_size() if distributed else 1
    is_cuda = device.type == "cuda"

    # Seed what is not already driven by an explicit generator (dropout); each rank draws
    # different mixup/dropout noise but the same initial weights come from the caller.
    torch.manual_seed(seed + rank)
    shuffle_gen = torch.Generator().manual_seed(seed)
    mix_gen = torch.Generator().manual_seed(seed + 1_000_003 * (rank + 1))

    model = model.to(device)
    if is_cuda:
        model = model.to(memory_format=torch.channels_last)
    net = model
    if distributed:
        # DDP broadcasts rank 0's weights at construction, so all ranks start identical.
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if is_cuda else None)

    train_set = dataset if dataset is not None else AugmentedDataset(train_images, train_labels, None, seed)
    # DistributedSampler pads the *training* set to a multiple of world_size: harmless for SGD.
    base_sampler = (
        DistributedSampler(train_set, world_size, rank, shuffle=True, seed=seed)
        if distributed
        else RandomSampler(train_set, generator=shuffle_gen)
    )
    sampler = EpochSampler(base_sampler)
    loader = DataLoader(
        EpochIndexed(train_set),
        batch_size=batch_size,
        sampler=sampler,
        # BatchNorm cannot train on a batch of one; drop the ragged tail when there is more than one batch.
        drop_last=len(base_sampler) > batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # workers (and their imports) live across epochs
        pin_memory=is_cuda,  # page-locked host memory: async copies with non_blocking=True
        collate_fn=collate_uint,
    )
    steps_per_epoch = max(1, len(loader))

    # AdamW without weight decay on biases and BatchNorm parameters (standard practice).
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        fused=is_cuda,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_epochs * steps_per_epoch, epochs * steps_per_epoch)
    )
    # fp16 (no bf16 support) needs loss scaling; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler("cuda", enabled=is_cuda and amp and not torch.cuda.is_bf16_supported())
    weights = balanced_class_weights(train_labels, n_classes).to(device) if class_weights else None

    best_value: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    epochs_since_best = 0

    with _deterministic(device.type == "cpu"):
        for epoch in range(epochs):
            # ---- one epoch of training
            t0 = time.perf_counter()
            model.train()
            sampler.set_epoch(epoch)  # reshuffles (DDP) and sets per-sample augmentation seeds
            loss_sum = torch.zeros((), device=device)
            n_seen = 0
            for x_uint, y in loader:
                x = to_model_input(x_uint, normalizer, device)
                y = y.to(device, non_blocking=True)
                # Smoothing once, inside the soft targets; mixup then mixes the soft targets.
                targets = smooth_targets(y, n_classes, label_smoothing)
                if mixup_alpha > 0 or cutmix_alpha > 0:
                    x, targets = mix_batch(x, targets, mixup_alpha, cutmix_alpha, mix_gen)
                with _autocast(device, amp):
                    logits = model(x)
                loss = _loss(logits.float(), targets, weights)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                # Accumulate on the device: .item() every step would sync CUDA each batch.
                loss_sum += loss.detach() * len(y)
                n_seen += len(y)
            if distributed:
                totals = torch.stack([loss_sum, torch.tensor(float(n_seen), device=device)])
                dist.all_reduce(totals)
                loss_sum, n_seen = totals[0], int(totals[1].item())
            record: dict[str, float] = {
                "epoch": epoch,
                "train_loss": float(loss_sum.item() / max(n_seen, 1)),
                "lr": float(optimizer.param_groups[0]["lr"]),
            }

            if recompute_bn and train_images is not None and (has_val or epoch == epochs - 1):
                # Eval-mode statistics of plain images, before validation and before the weights
                # can be kept as the best (see recompute_bn_stats).
                recompute_bn_stats(net, train_images, normalizer, device, max(256, batch_size))

            # ---- validation on the full, unpadded validation set
            if has_val:
                probs = predict_proba(
                    net,
                    val_images,
                    normalizer,
                    device,
                    batch_size=max(256, batch_size),
                    shard=distributed,
                    amp=amp,
                )
                record.update(validation_metrics(np.asarray(val_labels, dtype=np.int64), probs))
            record["seconds"] = time.perf_counter() - t0
            log.info(
                "epoch %d/%d %s",
                epoch + 1,
                epochs,
                " ".join(f"{k}={v:.4f}" for k, v in record.items() if k not in ("epoch",)),
            )
            if on_epoch_end is not None:
                on_epoch_end(record)

            # ---- keep the best weights; stop when the monitor stops improving
            if not has_val:
                continue
            if _is_better(monitor, record[monitor], best_value):
                best_value = record[monitor]
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
                epochs_since_best = 0
                if on_best is not None:
                    on_best(record, best_state)
            else:
                epochs_since_best += 1
                if patience is not None and epochs_since_best >= patience:
                    log.info(
                        "early stop after epoch %d: no %s improvement for %d epochs",
                        epoch + 1,
                        monitor,
                        patience,
                    )
                    break

    if best_state is not None:
        net.load_state_dict(best_state)
    return net.eval()


def _loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Soft-target cross entropy; with class weights, weighted like nn.CrossEntropyLoss.

    Weighted: sum_i sum_c w_c t_ic (-log p_ic) / sum_i sum_c w_c t_ic, i.e. the targets are
    scaled by the weights and the mean is renormalised by the total weight.
    """
    if weights is None:
        return soft_cross_entropy(logits, targets)
    weighted = targets * weights
    return soft_cross_entropy(logits, weighted) * (len(targets) / weighted.sum().clamp_min(1e-12))


# ----------------------------------------------------------------------------- checkpoints


def make_checkpoint(
    model: nn.Module,
    *,
    arch: str,
    in_channels: int,
    width: int,
    dropout: float,
    classes: list[str],
    normalizer: dict,
    params: dict,
    epoch: int,
    val_metrics: dict[str, float],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Everything needed to rebuild and use the model, as plain types (loadable with weights_only)."""
    net = getattr(model, "module", model)
    state = state_dict if state_dict is not None else net.state_dict()
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {
            "arch": arch,
            "in_channels": int(in_channels),
            "n_classes": len(classes),
            "width": int(width),
            "dropout": float(dropout),
        },
        "state_dict": {k: v.detach().to("cpu") for k, v in state.items()},
        "classes": list(classes),
        "normalizer": normalizer,
        "params": params,
        "epoch": int(epoch),
        "val_metrics": {k: float(v) for k, v in val_metrics.items()},
    }


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """torch.save to a temp file beside ``path``, then rename (never a half-written model)."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, safely.

    ``torch.load(weights_only=True)`` only rebuilds tensors and plain containers; a pickle that
    would import or call anything else is refused, so a checkpoint from an untrusted source cannot
    run code.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Not loadable with ``weights_only=True`` or missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError...: all mean "refuse"
        raise ValueError(f"{path}: refused to load checkpoint (weights_only=True): {err}") from err
    required = {"format", "model", "state_dict", "classes", "normalizer"}
    if not isinstance(ckpt, dict) or not required <= set(ckpt):
        got = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a pipeline checkpoint; expected keys {sorted(required)}, got {got}")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {ckpt['format']}, expected {CHECKPOINT_FORMAT}")
    return ckpt


def model_from_checkpoint(checkpoint: dict[str, Any]) -> nn.Module:
    """Rebuild the network described by a checkpoint and load its weights (eval mode, CPU)."""
    spec = checkpoint["model"]
    model = build_model(spec["arch"], spec["in_channels"], spec["n_classes"], spec["width"], spec["dropout"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


# ----------------------------------------------------------------------------- stage helpers

LIVE_METRICS = ("train_loss", "val_loss", "val_balanced_accuracy", "val_auroc", "lr")


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


def open_live(directory: str | Path) -> Any:
    """A dvclive logger that only writes files under ``directory``.

    ``dvcyaml=None``: dvclive must not edit dvc.yaml (the plots are declared there);
    ``save_dvc_exp=False``: no DVC experiment is created. Curves land in
    ``<directory>/plots/metrics/<name>.tsv`` with a ``step`` column (= epoch).
    """
    import dvclive.live
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    def make() -> Any:
        return Live(dir=str(directory), save_dvc_exp=False, dvcyaml=None, report=None)

    try:
        return make()
    except SCMError:
        # dvclive asks git for the current revision and fails in a repository with no commit
        # yet (a fresh `git init`). We need no revision (no experiments), so log without DVC.
        original = dvclive.live.get_dvc_repo
        dvclive.live.get_dvc_repo = lambda: None
        try:
            return make()
        finally:
            dvclive.live.get_dvc_repo = original


def log_live(live: Any, record: dict[str, float]) -> None:
    """Log one epoch record (undefined metrics, e.g. NaN AUROC, are skipped) and advance the step."""
    for name in LIVE_METRICS:
        value = record.get(name)
        if value is not None and math.isfinite(value):
            live.log_metric(name, value)
    live.next_step()


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
