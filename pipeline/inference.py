"""Running a trained network: device choice, model inputs, and class probabilities.

Data arrive as uint8/uint16 NHWC arrays (``data/processed/*.npy``). Batches stay integer on the
host (4x less to copy than float32, and pinned on CUDA), move to the device, and are turned into
normalized float NCHW there with the one shared :meth:`pipeline.processed.Normalizer.apply`, so
training, label-issue finding and evaluation see exactly the same inputs.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipeline.errors import InputError
from pipeline.processed import Normalizer


def select_device(requested: str = "auto", key: str = "train.device") -> torch.device:
    """Resolve a ``device`` param (named ``key`` in messages): auto = cuda, then mps, then cpu.

    Raises:
        InputError: An explicitly requested device is not available.
    """
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{key}: 'cuda' requested but torch.cuda.is_available() is False")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{key}: 'mps' requested but MPS is not available")
    if requested not in ("cuda", "mps", "cpu"):
        raise InputError(f"{key}: expected auto|cuda|mps|cpu, got {requested!r}")
    return torch.device(requested)


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


def to_model_input(x: torch.Tensor, normalizer: Normalizer, device: torch.device) -> torch.Tensor:
    """Integer NCHW batch -> normalized float NCHW on ``device``.

    The integer batch is what crosses the host-device link (4x smaller than float32). On CUDA
    the result is channels_last, which cuDNN prefers for conv nets under AMP.
    """
    x = x.to(device, non_blocking=True).float()
    x = normalizer.apply(x)
    if device.type == "cuda":
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast where supported (no loss scaling needed), fp16 otherwise; CUDA only.

    On the CPU we stay in fp32: it keeps training bit-reproducible and CPU autocast is slow for
    convolutions anyway.
    """
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def n_outputs(net: nn.Module) -> int:
    """Number of classes of a classifier: the out_features of its last Linear layer."""
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    normalizer: Normalizer,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    shard: bool = False,
    amp: bool = True,
) -> np.ndarray:
    """Class probabilities for NHWC images, in input order.

    Args:
        model: A classifier (a DDP wrapper is unwrapped).
        images: (N, H, W, C) uint8/uint16 array (a memmap is fine; read batch by batch).
        normalizer: The fitted normalizer.
        device: Where to run.
        batch_size: Images per forward pass.
        shard: Under torch.distributed, predict only this rank's contiguous shard and gather
            all shards (no padding, no duplicates). Every rank gets the full result.
        amp: Autocast on CUDA.

    Returns:
        float32 (N, n_classes) probabilities, rows summing to 1.
    """
    from pipeline.distributed import gather_shards, shard_bounds

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
        with autocast(device, amp):
            logits = net(to_model_input(x, normalizer, device))
        out.append(torch.softmax(logits.float(), dim=1))
    probs = torch.cat(out) if out else torch.zeros((0, n_outputs(net)), device=device)
    if world_size > 1:
        probs = gather_shards(probs, n, world_size)
    net.train(was_training)
    return probs.cpu().numpy()
