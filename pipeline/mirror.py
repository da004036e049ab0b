"""Mirrored films: a small self-supervised CNN that tells an image from its mirror image.

The linear orientation model of :mod:`pipeline.outliers` reads rotations and inversions off a
32x32 thumbnail with certainty, but a mirror image differs from the original only in which side
holds the asymmetric anatomy (the heart's apex, the aortic knob, the gastric bubble) or a side
marker: a few pixels at 32 px. Measured on the demo, linear models on 32 or 64 px pixels and
HOG reach at best 0.95 held-out accuracy with many confident errors (mirrored precision
0.15-0.26). This model sees the 64x64 thumbnail ingest stores (``thumb_large``).

It is antisymmetric by construction: ``s(x) = g(x) - g(flip(x))`` for a small CNN ``g``, so
``s(flip(x)) = -s(x)`` exactly, and ``s`` is the log-odds that ``x`` is stored mirrored. It is
trained on the dataset's typical images as they are stored (labels not needed) with the logistic
loss ``softplus(s(x))`` (upright), which by antisymmetry is also the loss of each mirror image
as "mirrored": every image is shown both ways without a second forward pass. Random shifts of up
to 1/16 of the side keep it from reading position. As in the linear model, two models are
cross-fitted on halves of a seeded sample (no image is scored by a model that saw it) and each
score averages five shifted views (test-time augmentation).

Held-out accuracy (the share of held-out images with ``s < 0``, which by antisymmetry equals the
share of their mirror images called mirrored) decides whether mirroring is judged at all: in a
set without handedness (histology tiles, dermoscopy) the model stays near 0.5 and nothing is
flagged.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

BATCH = 64
MIN_IMAGES = 32
"""Fewer typical images than this: mirroring is not judged (too little to learn from)."""
_MIN_STEPS = 150
_LR = 2e-3
_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
"""Test-time shifts, in units of 1/32 of the side."""


class MirrorNet(nn.Module):
    """``g``: conv-BN-ReLU-pool blocks from S px down to 4 px (8, 16, 32, 64 filters at 64 px),
    dropout, one linear output."""

    def __init__(self, size: int, width: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c, s = 1, width, size
        while s > 4:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in, s, c = c, s // 2, min(2 * c, 64)
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.3), nn.Linear(c_in * s * s, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(1)


def mirror_log_odds(g: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``s(x) = g(x) - g(flip(x))``: log-odds that each image of ``x`` (N, 1, S, S) is mirrored."""
    both = g(torch.cat([x, torch.flip(x, dims=[3])]))
    return both[: len(x)] - both[len(x) :]


def _to_tensor(thumbs: np.ndarray) -> torch.Tensor:
    """(N, S, S) uint8 -> (N, 1, S, S) float32, each image standardized on its own (exposure and
    contrast are not what mirroring is about)."""
    x = torch.from_numpy(np.ascontiguousarray(thumbs)).float().unsqueeze(1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    return (x - mean) / std


def n_steps(n_images: int, epochs: int) -> int:
    """Optimizer steps for ``n_images``: ``epochs`` passes, at least :data:`_MIN_STEPS` (a few
    hundred images need many passes to learn a cue of a few pixels)."""
    return max(epochs * max(1, -(-n_images // BATCH)), _MIN_STEPS)


def train_mirror_model(
    x: torch.Tensor, *, epochs: int, seed: int, device: torch.device, progress: tqdm | None = None
) -> MirrorNet:
    """Fit ``g`` on upright images ``x`` (N, 1, S, S) (see the module docstring)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    size = x.shape[-1]
    g = MirrorNet(size).to(device)
    n_batches = max(1, -(-len(x) // BATCH))
    steps = n_steps(len(x), epochs)
    opt = torch.optim.AdamW(g.parameters(), _LR, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, _LR, total_steps=steps)
    reach = max(1, size // 16)
    g.train()
    step = 0
    while step < steps:
        for rows in np.array_split(rng.permutation(len(x)), n_batches):
            if step == steps:
                break
            dy, dx = (int(v) for v in rng.integers(-reach, reach + 1, 2))
            batch = torch.roll(x[rows], (dy, dx), dims=(2, 3)).to(device)
            loss = nn.functional.softplus(mirror_log_odds(g, batch)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress is not None:
                progress.update(1)
    return g.eval()


@torch.no_grad()
def score(g: nn.Module, thumbs: np.ndarray, device: torch.device) -> np.ndarray:
    """Mean of :func:`mirror_log_odds` over the five shifted views of each (S, S) uint8 thumbnail
    (N,); converted to float a batch at a time, so a large dataset is never whole in float."""
    unit = max(1, thumbs.shape[-1] // 32)
    out = []
    starts = range(0, len(thumbs), 4 * BATCH)
    for start in tqdm(starts, desc="outliers: mirror scores", leave=False, disable=len(starts) < 40):
        batch = _to_tensor(thumbs[start : start + 4 * BATCH]).to(device)
        views = [
            mirror_log_odds(g, torch.roll(batch, (dy * unit, dx * unit), dims=(2, 3))) for dy, dx in _SHIFTS
        ]
        out.append(torch.stack(views).mean(0).float().cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def mirror_scores(
    thumbs: np.ndarray,
    train: np.ndarray,
    *,
    max_train: int,
    epochs: int,
    seed: int,
    device: torch.device | None = None,
) -> tuple[np.ndarray, float | None]:
    """Cross-fitted mirror log-odds of every thumbnail.

    Args:
        thumbs: (N, S, S) uint8 (centred and aspect-restored like the linear model's input).
        train: Boolean (N,): images the models may learn from (the typical ones).
        max_train: Most images the models learn from (a seeded sample).
        epochs: Passes over each half (see :func:`n_steps`).
        seed: Sampling and initialization seed.
        device: Where to train; None = CPU.

    Returns:
        ``(s, accuracy)``: log-odds that each image is stored mirrored (0 where nothing could be
        learned), and the held-out accuracy (None when there were fewer than :data:`MIN_IMAGES`
        typical images).
    """
    n = thumbs.shape[0]
    pool = np.flatnonzero(train)
    if pool.size < MIN_IMAGES:
        log.info("outliers: %d typical images, fewer than %d; mirroring is not judged", pool.size, MIN_IMAGES)
        return np.zeros(n), None
    device = device or torch.device("cpu")
    rng = np.random.default_rng(seed)
    pool = rng.permutation(pool)[:max_train]
    halves = (pool[0::2], pool[1::2])
    steps = [n_steps(len(h), epochs) for h in halves]
    with tqdm(total=sum(steps), desc="outliers: mirror model", unit="step", leave=False) as bar:
        models = [
            train_mirror_model(
                _to_tensor(thumbs[h]), epochs=epochs, seed=seed + k, device=device, progress=bar
            )
            for k, h in enumerate(halves)
        ]
    s = np.zeros(n)
    for k, g in enumerate(models):
        held = halves[1 - k]
        s[held] = score(g, thumbs[held], device)
    unseen = np.ones(n, bool)
    unseen[pool] = False
    if unseen.any():
        rows = np.flatnonzero(unseen)
        s[rows] = np.mean([score(g, thumbs[rows], device) for g in models], axis=0)
    accuracy = float((s[pool] < 0).mean())
    return s, accuracy
