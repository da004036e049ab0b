"""Multi-process training with ``torchrun``: process-group setup and gathering unpadded shards.

Under ``torchrun`` the train stage calls :func:`setup_distributed`; the training loop then wraps the
model in DistributedDataParallel with a DistributedSampler for training. Validation is *not* run
through a DistributedSampler (it pads the last shard with repeated samples, which biases metrics):
each rank predicts one contiguous, unpadded shard (:func:`shard_bounds`) and the shards are
gathered in rank order (:func:`gather_shards`), so every rank sees the same full-validation metrics
and takes the same early-stopping decision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.inference import select_device


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


def gather_shards(local: torch.Tensor, n: int, world_size: int) -> torch.Tensor:
    """all_gather contiguous shards of different sizes and concatenate them in rank order.

    all_gather needs equal shapes, so each shard is padded to the largest size and the padding is
    cut off again using the known sizes: no sample is counted twice.
    """
    sizes = [shard_bounds(n, world_size, r)[1] - shard_bounds(n, world_size, r)[0] for r in range(world_size)]
    pad = torch.zeros((max(sizes) - local.shape[0], *local.shape[1:]), dtype=local.dtype, device=local.device)
    buffers = [torch.empty_like(torch.cat([local, pad])) for _ in range(world_size)]
    dist.all_gather(buffers, torch.cat([local, pad]))
    return torch.cat([b[:s] for b, s in zip(buffers, sizes, strict=True)])
