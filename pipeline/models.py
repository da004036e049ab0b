"""Network architectures: a small CNN (the CPU-friendly default), torchvision and timm backbones.

Every model takes ``(N, C, H, W)`` float input with ``C = in_channels`` (1 for grayscale
radiographs, 3 for RGB dermoscopy/histopathology/fundus) and returns ``(N, n_classes)`` logits.

``arch`` is ``small_cnn``, a torchvision name of :data:`ARCHS`, or any timm model name (``timm:<name>``
forces timm when torchvision has the same name, e.g. ``timm:resnet18``). torchvision models are
built with ``weights=None`` and timm models with ``pretrained=False``: nothing is ever downloaded. Pretrained
weights come only from a local file (``weights_path``) that is read with
``torch.load(weights_only=True)``, so a file cannot execute code when it is loaded. The first
convolution is adapted to ``in_channels`` (RGB kernels summed for one channel, as timm does) and the
classifier is replaced by a fresh ``n_classes`` layer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.processed import Normalizer

log = logging.getLogger(__name__)

ARCHS = ("small_cnn", "resnet18", "resnet34", "resnet50", "efficientnet_b0")
TIMM_PREFIX = "timm:"
# What torchvision's ImageNet weights expect (on 0-1 pixels): the normalizer used with them.
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks with 2x2 max pooling, global average + max pooling, dropout, linear.

    Channel widths are ``width * (1, 2, 4, 8)``. At 64 px and width 16 it has ~0.1 M parameters (~15 M multiply-adds per image)
    and trains in seconds per epoch on two CPU cores.
    """

    def __init__(self, in_channels: int, n_classes: int, width: int = 16, dropout: float = 0.2):
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        for mult in (1, 2, 4, 8):
            c_out = width * mult
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        # Average pooling sees diffuse findings (effusion), max pooling keeps a single small
        # focal finding (a nodule) from being diluted by the rest of the image.
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * c_in, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.cat([self.avg_pool(x), self.max_pool(x)], dim=1).flatten(1)
        return self.classifier(self.dropout(x))


def _resnet(name: str) -> Callable[[int, int, int, float], nn.Module]:
    def build(in_channels: int, n_classes: int, width: int, dropout: float) -> nn.Module:
        from torchvision import models as tvm

        model = getattr(tvm, name)(weights=None)
        if in_channels != 3:
            old = model.conv1
            model.conv1 = nn.Conv2d(in_channels, old.out_channels, 7, stride=2, padding=3, bias=False)
        # Dropout before the new classifier (torchvision's ResNet has none).
        model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.fc.in_features, n_classes))
        return model

    return build


def _efficientnet_b0(in_channels: int, n_classes: int, width: int, dropout: float) -> nn.Module:
    from torchvision import models as tvm

    model = tvm.efficientnet_b0(weights=None, dropout=dropout)
    if in_channels != 3:
        old = model.features[0][0]
        model.features[0][0] = nn.Conv2d(in_channels, old.out_channels, 3, stride=2, padding=1, bias=False)
    model.classifier[1] = nn.Linear(model.classifier[1].in_features, n_classes)
    return model


def _small_cnn(in_channels: int, n_classes: int, width: int, dropout: float) -> nn.Module:
    return SmallCNN(in_channels, n_classes, width=width, dropout=dropout)


# arch -> (builder, state_dict key of the first conv weight, state_dict key prefixes of the classifier).
# The keys are those of the *pretrained* file (torchvision layout), used to adapt it.
BUILDERS: dict[str, tuple[Callable[[int, int, int, float], nn.Module], str, tuple[str, ...]]] = {
    "small_cnn": (_small_cnn, "features.0.0.weight", ("classifier.",)),
    "resnet18": (_resnet("resnet18"), "conv1.weight", ("fc.",)),
    "resnet34": (_resnet("resnet34"), "conv1.weight", ("fc.",)),
    "resnet50": (_resnet("resnet50"), "conv1.weight", ("fc.",)),
    "efficientnet_b0": (_efficientnet_b0, "features.0.0.weight", ("classifier.",)),
}


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt pretrained first-conv kernels ``(O, C_src, k, k)`` to ``in_channels`` inputs.

    One channel: the RGB kernels are summed, so a gray image replicated into RGB would give the
    same activations. Other counts: the kernels are cycled and rescaled by ``C_src / in_channels``
    to keep the activation magnitude.
    """
    c_src = weight.shape[1]
    if in_channels == c_src:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / c_src)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (c_src / in_channels)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"model.weights_path: {path} does not exist (weights are never downloaded)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors of many kinds; the file is untrusted
        raise InputError(
            f"{path}: not a plain tensor state_dict loadable with weights_only=True: {err}"
        ) from err
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: expected a state_dict (name -> tensor), got {type(obj).__name__}")
    # Checkpoints saved from DataParallel/DDP carry a "module." prefix.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def timm_name(arch: str) -> str | None:
    """The timm model name of ``arch``, or None for ``small_cnn`` and the torchvision names."""
    if arch.startswith(TIMM_PREFIX):
        return arch.removeprefix(TIMM_PREFIX)
    return None if arch in BUILDERS else arch


def _build_timm(
    name: str, in_channels: int, n_classes: int, dropout: float
) -> tuple[nn.Module, str, tuple[str, ...]]:
    """A timm model (``pretrained=False``) and the state_dict keys of its first conv and classifier."""
    import timm

    if not timm.is_model(name):
        raise InputError(
            f"model.arch: {name!r} is neither one of {list(ARCHS)} nor a timm model name "
            f"(see timm.list_models())"
        )
    model = timm.create_model(
        name, pretrained=False, num_classes=n_classes, in_chans=in_channels, drop_rate=dropout
    )
    cfg = model.pretrained_cfg
    return model, f"{cfg['first_conv']}.weight", (f"{cfg['classifier']}.",)


def pretrained_stats(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel on 0-1 pixels that ``arch``'s pretrained weights expect."""
    name = timm_name(arch)
    if name is None:
        return IMAGENET_STATS
    import timm

    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    return tuple(cfg.get("mean", IMAGENET_STATS[0])), tuple(cfg.get("std", IMAGENET_STATS[1]))


def pretrained_normalizer(data: Normalizer, arch: str) -> Normalizer:
    """The normalizer a pretrained ``arch`` expects, in the stored units of ``data`` (``model.input_stats``).

    ``(x / max_value - mean_c) / std_c`` with the backbone's ImageNet-style statistics; for one
    channel (gray, whose first conv is the summed RGB kernels, i.e. gray replicated into RGB) the
    averages of the three channels' statistics.
    """
    mean, std = pretrained_stats(arch)
    if data.channels == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    elif data.channels != len(mean):
        raise InputError(
            f"model.input_stats: pretrained statistics have {len(mean)} channels, data {data.channels}"
        )
    scale = float(data.max_value)
    return replace(
        data,
        mode="standardize",
        mean=tuple(m * scale for m in mean),
        std=tuple(s * scale for s in std),
        fitted_on=f"pretrained:{arch}",
    )


def build_model(
    arch: str,
    in_channels: int,
    n_classes: int,
    width: int = 16,
    dropout: float = 0.2,
    weights_path: str | Path | None = None,
) -> nn.Module:
    """Build a classifier, from scratch or from a local pretrained state_dict.

    Args:
        arch: One of :data:`ARCHS`, a timm model name, or ``timm:<name>``.
        in_channels: Input channels of the data (1 or 3, any positive count works).
        n_classes: Number of output logits.
        width: Base channel width of ``small_cnn`` (ignored by torchvision models).
        dropout: Dropout before the classifier.
        weights_path: Local ``.pt``/``.pth`` state_dict in the torchvision (or timm) layout of ``arch``
            (e.g. ImageNet weights saved with ``torch.save(model.state_dict(), path)``). Its first
            conv is adapted to ``in_channels``; its classifier is dropped and re-initialised.

    Returns:
        The model (in train mode, on the CPU).

    Raises:
        ValueError: Unknown ``arch``, bad counts, or a weights file that does not match ``arch``.
        FileNotFoundError: ``weights_path`` does not exist.
    """
    if in_channels < 1 or n_classes < 2:
        raise InputError(f"expected in_channels >= 1 and n_classes >= 2, got {in_channels}, {n_classes}")
    name = timm_name(arch)
    if name is not None:
        model, first_conv_key, head_prefixes = _build_timm(name, in_channels, n_classes, dropout)
    else:
        builder, first_conv_key, head_prefixes = BUILDERS[arch]
        model = builder(in_channels, n_classes, width, dropout)
    if weights_path is None:
        return model

    path = Path(weights_path)
    state = _read_state_dict(path)
    if first_conv_key not in state:
        raise InputError(f"{path}: no key {first_conv_key!r}; is this a {arch} state_dict?")
    state[first_conv_key] = adapt_first_conv(state[first_conv_key], in_channels)
    state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head_prefixes)]
    if missing or unexpected:
        raise InputError(
            f"{path}: does not match arch {arch!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    log.info(
        "loaded %d pretrained tensors for %s from %s (classifier re-initialised)", len(state), arch, path
    )
    return model
