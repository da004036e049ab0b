"""Batch-level regularization on the device: label smoothing, mixup, cutmix, soft-target loss.

Label smoothing is applied exactly once, when the hard labels become soft targets::

    targets = (1 - smoothing) * one_hot(labels, n_classes) + smoothing / n_classes

(the same formula as ``F.cross_entropy(..., label_smoothing=smoothing)`` and timm). Mixup and
cutmix then mix those soft targets with the same lambda as the images, and
:func:`soft_cross_entropy` takes the mixed targets as they are. With ``mixup_alpha =
cutmix_alpha = 0`` and ``smoothing = 0`` the loss is plain cross entropy.

All randomness comes from a CPU ``torch.Generator`` passed in, so a batch is mixed the same way
on every run and every device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def smooth_targets(labels: torch.Tensor, n_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Hard labels -> soft targets with label smoothing.

    Args:
        labels: (N,) integer class indices in [0, n_classes).
        n_classes: Number of classes (>= 2).
        smoothing: s in [0, 1). Each row becomes ``(1 - s) * one_hot + s / n_classes``: the true
            class gets ``1 - s + s / n_classes``, every other class ``s / n_classes``.

    Returns:
        (N, n_classes) float32 tensor on ``labels.device``; each row sums to 1.

    Raises:
        ValueError: For a bad ``smoothing``/``n_classes`` or labels outside [0, n_classes).
    """
    if n_classes < 2:
        raise ValueError(f"smooth_targets: expected n_classes >= 2, got {n_classes}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smooth_targets: expected 0 <= smoothing < 1, got {smoothing}")
    if labels.ndim != 1 or labels.dtype.is_floating_point:
        raise ValueError(
            f"smooth_targets: expected (N,) integer labels, got {tuple(labels.shape)} {labels.dtype}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(
            f"smooth_targets: labels must be in [0, {n_classes}), got min {int(labels.min())} max {int(labels.max())}"
        )
    one_hot = F.one_hot(labels.long(), n_classes).float()
    return one_hot * (1.0 - smoothing) + smoothing / n_classes


def _sample_beta(alpha: float, generator: torch.Generator) -> float:
    """lambda ~ Beta(alpha, alpha), drawn reproducibly from ``generator``.

    torch.distributions cannot take a generator, so a seed is drawn from it for numpy's Beta.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _cutmix_box(lam: float, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """A box covering about ``1 - lam`` of the image, centred uniformly, clipped to the image."""
    cut_ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut_ratio), int(width * cut_ratio)
    cy = int(torch.randint(0, height, (1,), generator=generator).item())
    cx = int(torch.randint(0, width, (1,), generator=generator).item())
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


def mix_batch(
    x: torch.Tensor,
    targets: torch.Tensor,
    mixup_alpha: float,
    cutmix_alpha: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix one batch with a random partner permutation.

    One lambda per batch. Mixup: ``x = lam * x + (1 - lam) * x[perm]``. Cutmix: a box of
    ``x[perm]`` is pasted into ``x`` and lambda is reset to the fraction of pixels actually
    kept (the box is clipped at the border). Targets are mixed with the same lambda:
    ``targets = lam * targets + (1 - lam) * targets[perm]``. With both alphas > 0, cutmix or
    mixup is chosen per batch with probability 0.5 (as timm does).

    Args:
        x: (N, C, H, W) floating tensor (already scaled/normalized), any device.
        targets: (N, K) soft targets, e.g. from :func:`smooth_targets`.
        mixup_alpha: Beta parameter for mixup; 0 disables it.
        cutmix_alpha: Beta parameter for cutmix; 0 disables it.
        generator: CPU ``torch.Generator``; the only source of randomness.

    Returns:
        ``(x, targets)``: new tensors (inputs are not modified); unchanged inputs when both
        alphas are 0 or the batch has fewer than 2 samples.

    Raises:
        ValueError: For negative alphas, a non-floating ``x`` or mismatched shapes.
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mix_batch: alphas must be >= 0, got mixup {mixup_alpha}, cutmix {cutmix_alpha}")
    if x.ndim != 4 or not x.dtype.is_floating_point:
        raise ValueError(f"mix_batch: expected a floating (N, C, H, W) batch, got {tuple(x.shape)} {x.dtype}")
    if targets.ndim != 2 or targets.shape[0] != x.shape[0]:
        raise ValueError(
            f"mix_batch: expected targets of shape ({x.shape[0]}, K), got {tuple(targets.shape)}"
        )
    n = x.shape[0]
    if n < 2 or (mixup_alpha == 0 and cutmix_alpha == 0):
        return x, targets
    use_cutmix = cutmix_alpha > 0 and (
        mixup_alpha == 0 or bool(torch.rand(1, generator=generator).item() < 0.5)
    )
    lam = _sample_beta(cutmix_alpha if use_cutmix else mixup_alpha, generator)
    perm = torch.randperm(n, generator=generator).to(x.device)
    if use_cutmix:
        height, width = x.shape[2], x.shape[3]
        y0, y1, x0, x1 = _cutmix_box(lam, height, width, generator)
        mixed = x.clone()
        mixed[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    else:
        mixed = x * lam + x[perm] * (1.0 - lam)
    targets_perm = targets.index_select(0, perm.to(targets.device))
    return mixed, targets * lam + targets_perm * (1.0 - lam)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross entropy against soft targets, averaged over the batch.

    ``mean_i( -sum_k targets[i, k] * log_softmax(logits)[i, k] )``; equals
    ``F.cross_entropy(logits, labels)`` for one-hot targets.

    Args:
        logits: (N, K) raw scores.
        targets: (N, K) non-negative rows summing to 1.

    Returns:
        A scalar tensor.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"soft_cross_entropy: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ"
        )
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(targets.float() * log_probs).sum(dim=-1).mean()
