"""Training throughput: the model step alone vs the full input pipeline + step.

For each (arch, image size) it measures images/s of

* ``model_only``: forward + backward + AdamW step on a synthetic batch that is already on the
  device and already normalized (the ceiling);
* ``full``: the real path of ``pipeline.train.fit_model``: uint8 NHWC array ->
  AugmentedDataset (albumentations policy) -> DataLoader (workers, pinned memory) -> device ->
  Normalizer.apply -> mixup -> the same step.

On a GPU the loader should keep up: ``full / model_only >= 0.9``. Synthetic uint8 images stand in
for data/processed, so no pipeline stage has to run first.

    python bench/train_throughput.py                      # small_cnn + resnet18 at 64 and 224 px
    python bench/train_throughput.py --steps 50 --num-workers 8 --batch-size 256   # on a GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import train as tr  # noqa: E402
from pipeline.augment import AugmentedDataset, build_policy  # noqa: E402
from pipeline.inference import autocast, select_device, to_model_input  # noqa: E402
from pipeline.mixup import mix_batch, smooth_targets, soft_cross_entropy  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.normalize import fit_normalizer  # noqa: E402
from pipeline.params import AugmentParams  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(arch: str, channels: int, device: torch.device, amp: bool):
    torch.manual_seed(0)
    model = build_model(arch, channels, 3, width=16 if arch == "small_cnn" else 32).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")

    def step(x: torch.Tensor, targets: torch.Tensor) -> None:
        with autocast(device, amp):
            logits = model(x)
        loss = soft_cross_entropy(logits.float(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_model_only(arch, size, channels, batch, steps, device, amp) -> float:
    step = _setup(arch, channels, device, amp)
    x = torch.randn(batch, channels, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    targets = smooth_targets(torch.randint(0, 3, (batch,), device=device), 3, 0.05)
    for _ in range(2):  # warm-up: cuDNN autotuning, allocator
        step(x, targets)
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step(x, targets)
    _sync(device)
    return batch * steps / (time.perf_counter() - t)


def bench_full(arch, size, channels, batch, steps, device, amp, num_workers) -> float:
    step = _setup(arch, channels, device, amp)
    rng = np.random.default_rng(0)
    n = batch * (steps + 2)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, 3, n)
    normalizer = fit_normalizer([images[:64]], mode="standardize", max_value=255, channels=channels)
    policy = build_policy(AugmentParams(domain="chest_xray"), channels=channels, image_shape=(size, size))
    dataset = AugmentedDataset(images, labels, policy, seed=0)
    config = tr.TrainConfig(batch_size=batch, num_workers=num_workers, seed=0)
    loader = tr.make_loader(
        dataset, config, torch.Generator().manual_seed(0), distributed=False, pin_memory=device.type == "cuda"
    )
    gen = torch.Generator().manual_seed(0)
    it = iter(loader)
    t = None
    for i, (x_uint, y) in enumerate(it):
        if i == 2:  # the first batches pay for worker start-up
            _sync(device)
            t = time.perf_counter()
        x = to_model_input(x_uint, normalizer, device)
        targets = smooth_targets(y.to(device, non_blocking=True), 3, 0.05)
        x, targets = mix_batch(x, targets, 0.2, 0.0, gen)
        step(x, targets)
    _sync(device)
    return batch * steps / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["small_cnn", "resnet18"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps; default: 30 on CUDA, 3 on CPU")
    ap.add_argument("--num-workers", type=int, default=None, help="default: 8 on CUDA, 0 on CPU")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-amp", action="store_true")
    args = ap.parse_args(argv)
    device = select_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch_size or (256 if cuda else 32)
    steps = args.steps or (30 if cuda else 3)
    workers = args.num_workers if args.num_workers is not None else (8 if cuda else 0)
    amp = not args.no_amp
    if cuda:
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device={name} batch={batch} steps={steps} num_workers={workers} amp={amp and cuda} channels={args.channels}"
    )
    print(f"{'arch':<10} {'px':>4} {'model_only img/s':>17} {'full img/s':>11} {'full/model':>10}")
    for arch in args.archs:
        for size in args.sizes:
            m = bench_model_only(arch, size, args.channels, batch, steps, device, amp)
            f = bench_full(arch, size, args.channels, batch, steps, device, amp, workers)
            print(f"{arch:<10} {size:>4} {m:>17.1f} {f:>11.1f} {f / m:>10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
