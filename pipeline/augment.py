"""Domain-aware augmentation policies (albumentations 2.0.8) and a worker-independent dataset.

Presets live in one explicit registry, :data:`PRESETS`: each modality lists the transforms it
uses and the transforms it forbids, with the reason (e.g. a vertical flip turns a chest
radiograph upside down, colour jitter invents signal a grayscale detector never records).
:func:`build_policy` turns the ``augment`` params section into an ``A.Compose``, refusing
forbidden transforms unless ``allow_unsafe`` is set. The policy is stored with albumentations'
own serialization (:func:`policy_to_dict`) and loaded back with :func:`load_policy`.

Reproducibility (the two pitfalls of albumentations 2.0.8 this module works around):

* The serialized policy carries no seed, and a DataLoader copies the transform, RNG included,
  into every worker, so workers would draw identical augmentations. :class:`AugmentedDataset`
  therefore reseeds the transform for every sample from ``(seed, epoch, index)``; the augmented
  batch is the same whatever the number of workers.
* ``Compose.set_random_seed(s)`` (and ``A.Compose(..., seed=s)``) gives *every* transform its own
  generator seeded with the same ``s``, so their random draws are identical: with two flips at
  p=0.5 either both or neither fire. :func:`augment_image` instead installs one shared
  generator pair with ``set_random_state``, so the transforms draw from one stream.
"""

from __future__ import annotations

import json
import logging
import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.core.serialization import serialize_enum
from albumentations.core.transforms_interface import BasicTransform
from torch.utils.data import Dataset

from pipeline.errors import InputError

if TYPE_CHECKING:
    from pipeline.params import AugmentParams

logger = logging.getLogger(__name__)

TransformSpec = tuple[str, dict[str, Any]]

# Transforms that mix or need three colour channels. On 1-channel data they are dropped from a
# preset (logged) and refused when listed explicitly in params. HEStain raises on 1 channel; the
# others run but either do nothing (hue, saturation, sepia, gray) or fake colour information.
RGB_ONLY_TRANSFORMS = frozenset(
    {
        "HEStain",
        "ColorJitter",
        "HueSaturationValue",
        "RGBShift",
        "ChannelShuffle",
        "ChannelDropout",
        "ToGray",
        "ToSepia",
        "FancyPCA",
        "PlanckianJitter",
    }
)

_GRAYSCALE_COLOUR_REASON = (
    "radiographs are single-channel intensity images; colour transforms create signal that no "
    "X-ray detector records"
)
_D4_REASON = (
    "chest radiographs have a fixed orientation (apices up, heart on the left); upside-down or "
    "transposed anatomy never occurs at test time"
)


@dataclass(frozen=True)
class Preset:
    """One modality's augmentation policy.

    Attributes:
        description: One line for humans (README, report).
        transforms: Ordered ``(albumentations class name, kwargs)`` pairs, applied in order.
        forbidden: ``{class name: reason}`` of transforms that are unsafe for the modality.
        horizontal_flip: Whether ``HorizontalFlip(p=0.5)`` is part of the preset by default
            (``augment.horizontal_flip`` in params overrides it).
    """

    description: str
    transforms: tuple[TransformSpec, ...]
    forbidden: Mapping[str, str] = field(default_factory=dict)
    horizontal_flip: bool = True


PRESETS: dict[str, Preset] = {
    "chest_xray": Preset(
        description="Grayscale radiographs: small rigid geometry, exposure changes, mild noise/blur.",
        transforms=(
            (
                "Affine",
                {
                    "scale": (0.92, 1.08),
                    "translate_percent": (-0.04, 0.04),
                    "rotate": (-7.0, 7.0),
                    "border_mode": cv2.BORDER_CONSTANT,
                    "fill": 0,
                    "p": 0.7,
                },
            ),
            ("RandomBrightnessContrast", {"brightness_limit": 0.1, "contrast_limit": 0.1, "p": 0.5}),
            ("RandomGamma", {"gamma_limit": (85, 115), "p": 0.3}),
            ("GaussNoise", {"std_range": (0.01, 0.03), "p": 0.2}),
            ("GaussianBlur", {"blur_limit": (3, 3), "sigma_limit": (0.1, 0.6), "p": 0.1}),
        ),
        forbidden={
            "HorizontalFlip": (
                "laterality matters (heart on the left, side markers, dextrocardia); enable it "
                "deliberately with augment.horizontal_flip: true"
            ),
            "VerticalFlip": _D4_REASON,
            "RandomRotate90": _D4_REASON,
            "Transpose": _D4_REASON,
            "SquareSymmetry": _D4_REASON,
            "D4": _D4_REASON,
            "ElasticTransform": (
                "non-rigid warps change heart size and rib geometry (the cardiothoracic ratio is a finding)"
            ),
            "GridDistortion": "non-rigid warps change heart size and rib geometry",
            "OpticalDistortion": "non-rigid warps change heart size and rib geometry",
            **{name: _GRAYSCALE_COLOUR_REASON for name in sorted(RGB_ONLY_TRANSFORMS)},
        },
        horizontal_flip=False,
    ),
    "dermoscopy": Preset(
        description="Skin lesions: any orientation, flips both ways, free rotation, colour jitter.",
        transforms=(
            ("HorizontalFlip", {"p": 0.5}),
            ("VerticalFlip", {"p": 0.5}),
            (
                "Affine",
                {
                    "rotate": (-180.0, 180.0),
                    "scale": (0.9, 1.1),
                    "border_mode": cv2.BORDER_REFLECT_101,
                    "p": 0.8,
                },
            ),
            (
                "ColorJitter",
                {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.03, "p": 0.7},
            ),
            ("GaussianBlur", {"blur_limit": (3, 3), "sigma_limit": (0.1, 0.8), "p": 0.1}),
        ),
        forbidden={
            "ToGray": "lesion colour is diagnostic (ABCD rule: blue-white veil, pigment network)",
            "ChannelShuffle": "lesion colour is diagnostic; permuted channels never occur in a dermatoscope",
            "HEStain": "H&E stain model of histology slides; meaningless for skin photographs",
        },
    ),
    "histopathology": Preset(
        description="H&E tiles: all 8 rot90/flip symmetries, stain (HEStain) and colour jitter.",
        transforms=(
            # The 8 dihedral symmetries: tiles have no canonical orientation. Square tiles only
            # (a 90 degree turn swaps height and width); normalize always writes square images.
            ("SquareSymmetry", {"p": 1.0}),
            (
                "HEStain",
                {
                    "method": "random_preset",
                    "intensity_scale_range": (0.8, 1.2),
                    "intensity_shift_range": (-0.1, 0.1),
                    "p": 0.5,
                },
            ),
            (
                "HueSaturationValue",
                {"hue_shift_limit": 8, "sat_shift_limit": 15, "val_shift_limit": 10, "p": 0.3},
            ),
            ("RandomBrightnessContrast", {"brightness_limit": 0.1, "contrast_limit": 0.1, "p": 0.3}),
            ("GaussianBlur", {"blur_limit": (3, 3), "sigma_limit": (0.1, 0.8), "p": 0.1}),
        ),
        forbidden={
            "ChannelShuffle": "swaps haematoxylin and eosin appearance; no real stain looks like that",
            "InvertImg": "turns the bright slide background into dark, tissue-like regions",
        },
    ),
    "fundus": Preset(
        description="Retinal photographs: free rotation (circular field), flips, illumination, mild colour.",
        transforms=(
            ("HorizontalFlip", {"p": 0.5}),
            (
                "Affine",
                {
                    "rotate": (-180.0, 180.0),
                    "scale": (0.95, 1.05),
                    "border_mode": cv2.BORDER_CONSTANT,
                    "fill": 0,
                    "p": 0.8,
                },
            ),
            ("RandomBrightnessContrast", {"brightness_limit": 0.15, "contrast_limit": 0.15, "p": 0.5}),
            ("RandomGamma", {"gamma_limit": (85, 115), "p": 0.3}),
            (
                "HueSaturationValue",
                {"hue_shift_limit": 5, "sat_shift_limit": 10, "val_shift_limit": 0, "p": 0.3},
            ),
            ("GaussianBlur", {"blur_limit": (3, 3), "sigma_limit": (0.1, 0.8), "p": 0.1}),
        ),
        forbidden={
            "CoarseDropout": (
                "can erase the small lesions (microaneurysms, haemorrhages) that define the grade, "
                "making the label wrong"
            ),
            "ChannelShuffle": "the green channel carries vessel and lesion contrast; permuting channels destroys it",
            "HEStain": "H&E stain model of histology slides; meaningless for fundus photographs",
        },
    ),
    "generic": Preset(
        description="Unknown modality: conservative geometry and intensity changes, mild colour.",
        transforms=(
            ("HorizontalFlip", {"p": 0.5}),
            (
                "Affine",
                {
                    "rotate": (-10.0, 10.0),
                    "scale": (0.9, 1.1),
                    "translate_percent": (-0.05, 0.05),
                    "border_mode": cv2.BORDER_REFLECT_101,
                    "p": 0.7,
                },
            ),
            ("RandomBrightnessContrast", {"brightness_limit": 0.15, "contrast_limit": 0.15, "p": 0.5}),
            ("ColorJitter", {"brightness": 0.0, "contrast": 0.0, "saturation": 0.1, "hue": 0.0, "p": 0.3}),
            ("GaussNoise", {"std_range": (0.01, 0.03), "p": 0.2}),
        ),
        forbidden={
            "HEStain": "H&E stain model; use domain: histopathology for stained slides",
        },
    ),
}


def _instantiate(name: str, kwargs: Mapping[str, Any], domain: str) -> BasicTransform:
    """Build one albumentations transform by class name, with clear errors."""
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BasicTransform)):
        raise InputError(
            f"augment.transforms: {name!r} is not an albumentations {A.__version__} transform "
            f"(expected a class name such as 'Affine', 'RandomGamma'; domain {domain!r})"
        )
    if not isinstance(kwargs, Mapping):
        raise InputError(f"augment.transforms.{name}: expected a mapping of arguments, got {kwargs!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid args are turned into an error just below
            transform = cls(**dict(kwargs))
    except (ValueError, TypeError) as err:  # pydantic ValidationError is a ValueError
        raise InputError(f"augment.transforms.{name}: invalid arguments {dict(kwargs)}: {err}") from err
    invalid = getattr(transform, "invalid_args", None)
    if invalid:
        raise InputError(
            f"augment.transforms.{name}: unknown argument(s) {sorted(invalid)} for "
            f"albumentations {A.__version__} {name}"
        )
    return transform


def resolve_specs(params: AugmentParams, channels: int) -> list[TransformSpec]:
    """Decide the ordered transform list for a domain, checking it against the domain's rules.

    Args:
        params: The ``augment`` params section (domain, transforms override, allow_unsafe,
            horizontal_flip).
        channels: Channels of the images the policy will see (1 or 3).

    Returns:
        ``(class name, kwargs)`` pairs, in application order.

    Raises:
        ValueError: If a transform is forbidden for the domain (message names the transform, the
            domain and the reason) and ``allow_unsafe`` is false; if a listed transform needs 3
            channels and the data has 1; if ``horizontal_flip: false`` contradicts an explicit
            ``HorizontalFlip`` in ``transforms``.
    """
    if channels not in (1, 3):
        raise InputError(f"augment: expected images with 1 or 3 channels, got {channels}")
    domain = params.domain
    preset = PRESETS[domain]
    is_override = params.transforms is not None
    specs: list[TransformSpec] = (
        [(name, dict(kwargs or {})) for name, kwargs in params.transforms.items()]
        if is_override
        else [(name, dict(kwargs)) for name, kwargs in preset.transforms]
    )
    has_flip = any(name == "HorizontalFlip" for name, _ in specs)
    if params.horizontal_flip is True and not has_flip:
        specs.insert(0, ("HorizontalFlip", {"p": 0.5}))
    elif params.horizontal_flip is False and has_flip:
        if is_override:
            raise InputError(
                "augment: horizontal_flip is false but augment.transforms lists HorizontalFlip; "
                "remove one of them"
            )
        specs = [(name, kw) for name, kw in specs if name != "HorizontalFlip"]

    for name, _ in specs:
        reason = preset.forbidden.get(name)
        if reason is None:
            continue
        if name == "HorizontalFlip" and params.horizontal_flip is True:
            logger.warning("domain %r: HorizontalFlip enabled by augment.horizontal_flip: %s", domain, reason)
        elif params.allow_unsafe:
            logger.warning(
                "domain %r: using forbidden transform %s (allow_unsafe: true): %s", domain, name, reason
            )
        else:
            raise InputError(
                f"augment: transform {name!r} is forbidden for domain {domain!r}: {reason} "
                f"(set augment.allow_unsafe: true to use it anyway)"
            )

    if channels == 1:
        colour = [name for name, _ in specs if name in RGB_ONLY_TRANSFORMS]
        if colour and is_override:
            raise InputError(
                f"augment.transforms: {colour} need 3-channel images, but the data has 1 channel "
                f"(domain {domain!r}); remove them"
            )
        if colour:
            logger.info("domain %r: 1-channel images, skipping colour transforms %s", domain, colour)
        specs = [(name, kw) for name, kw in specs if name not in RGB_ONLY_TRANSFORMS]
    return specs


def build_policy(params: AugmentParams, channels: int, image_shape: tuple[int, int] = (64, 64)) -> A.Compose:
    """Build the albumentations policy for the ``augment`` params and check it on a dummy image.

    Args:
        params: The ``augment`` params section.
        channels: 1 or 3; colour transforms are dropped (preset) or refused (override) for 1.
        image_shape: (H, W) of the images the policy will see; the policy is run on a random
            uint8 image of that shape and must keep shape and dtype.

    Returns:
        An ``A.Compose`` (no seed: reseed per sample with :func:`augment_image`).

    Raises:
        ValueError: See :func:`resolve_specs`; also for unknown transform names or arguments, and
            for a policy that changes the image shape or dtype.
    """
    specs = resolve_specs(params, channels)
    policy = A.Compose([_instantiate(name, kwargs, params.domain) for name, kwargs in specs])
    probe = np.random.default_rng(0).integers(0, 256, (*image_shape, channels), dtype=np.uint8)
    for seed in range(4):
        out = augment_image(policy, probe, seed)
        if out.shape != probe.shape or out.dtype != probe.dtype:
            raise InputError(
                f"augment: policy for domain {params.domain!r} must keep shape and dtype, "
                f"got {out.shape} {out.dtype} from {probe.shape} {probe.dtype}"
            )
    return policy


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation, derived from ``(seed, epoch, index)`` only.

    Uses ``np.random.SeedSequence`` so that nearby triples give unrelated streams.

    Returns:
        An integer in [0, 2**32).
    """
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def augment_image(transform: A.BaseCompose, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply ``transform`` to one image with a fixed seed (same seed -> same output).

    All transforms draw from one shared stream (``set_random_state``), not from per-transform
    generators with the same seed (see the module docstring).

    Args:
        transform: An albumentations composition (mutated: its random state is replaced).
        image: HxW or HxWxC array, uint8 or uint16. uint16 images are augmented as float32 in
            [0, 1] and converted back, because several albumentations transforms (GaussNoise,
            RandomGamma) do not support uint16.
        seed: Non-negative int, e.g. from :func:`sample_seed`.

    Returns:
        The augmented image, same shape and dtype as ``image``.

    Raises:
        ValueError: For a dtype other than uint8 or uint16.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    if image.dtype == np.uint8:
        return transform(image=np.ascontiguousarray(image))["image"]
    if image.dtype == np.uint16:
        x = image.astype(np.float32) / 65535.0
        out = transform(image=x)["image"]
        return (np.clip(out, 0.0, 1.0) * 65535.0).round().astype(np.uint16)
    raise ValueError(f"augment: expected a uint8 or uint16 image, got {image.dtype}")


def policy_to_dict(transform: A.BaseCompose, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """albumentations' own serialization (``A.to_dict``), plus an optional ``"augment"`` key.

    ``A.from_dict`` reads only the ``"transform"`` key, so the extra metadata (domain, channels,
    batch-level settings) does not affect loading.
    """
    out = serialize_enum(A.to_dict(transform))
    if extra:
        out["augment"] = dict(extra)
    return out


def load_policy(path: str | Path) -> A.Compose:
    """Load the policy written by the augment stage (``models/augment/policy.json``).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not an albumentations serialization of a ``Compose``.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(raw, dict) or "transform" not in raw:
        raise InputError(f"{path}: expected an albumentations serialization with a 'transform' key")
    try:
        policy = A.from_dict(raw)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: could not rebuild the albumentations policy: {err}") from err
    if not isinstance(policy, A.Compose):
        raise InputError(f"{path}: expected a Compose at the top level, got {type(policy).__name__}")
    return policy


def make_preview(
    images: np.ndarray,
    transform: A.BaseCompose,
    seed: int,
    n_images: int = 6,
    n_variants: int = 6,
    tile_px: int = 128,
) -> np.ndarray:
    """A grid showing what the policy does: one row per sample image, original first.

    Variant ``v`` of image ``i`` is exactly what :class:`AugmentedDataset` yields for that image
    in epoch ``v``.

    Args:
        images: (N, H, W[, C]) uint8/uint16 array (e.g. the train split memmap), N >= 1.
        transform: The policy.
        seed: The run's seed (picks the images and seeds the variants).
        n_images: Rows (at most N).
        n_variants: Augmented columns after the original.
        tile_px: Side of each tile (small processed images are enlarged for viewing).

    Returns:
        uint8 RGB array (see ``pipeline.sheets.make_contact_sheet``).

    Raises:
        ValueError: If ``images`` is empty.
    """
    from pipeline.sheets import make_contact_sheet

    if len(images) == 0:
        raise InputError("make_preview: no images to preview (empty train split)")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(images), size=min(n_images, len(images)), replace=False))
    tiles, captions = [], []
    for index in picked:
        image = np.asarray(images[index])
        if image.ndim == 2:
            image = image[:, :, None]
        tiles.append(image)
        captions.append(f"#{index} original")
        for epoch in range(n_variants):
            tiles.append(augment_image(transform, image, sample_seed(seed, epoch, int(index))))
            captions.append(f"epoch {epoch}")
    return make_contact_sheet(tiles, captions, tile_px=tile_px, n_cols=1 + n_variants)


class AugmentedDataset(Dataset):
    """Map-style dataset of augmented images whose output does not depend on DataLoader workers.

    Sample ``index`` in epoch ``epoch`` is augmented with seed ``sample_seed(seed, epoch, index)``.
    Call :meth:`set_epoch` before each epoch. With ``num_workers > 0`` use
    ``persistent_workers=False`` (the default): workers get a fresh copy of the dataset, with the
    current epoch, each time the DataLoader is iterated; persistent workers would keep the old
    epoch.

    Args:
        images: (N, H, W, C) or (N, H, W) uint8/uint16 array or memmap.
        labels: N integer class indices.
        transform: An albumentations composition, or ``None`` for no augmentation (val/test).
        seed: The run's seed from params.

    Items are ``(image, label)``: a (C, H, W) tensor with the dtype of ``images`` (scaling and
    normalization happen later, on the device) and a Python int.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | list[int],
        transform: A.BaseCompose | None,
        seed: int,
    ) -> None:
        if images.ndim not in (3, 4):
            raise ValueError(f"AugmentedDataset: expected images (N, H, W[, C]), got shape {images.shape}")
        if images.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"AugmentedDataset: expected uint8 or uint16 images, got {images.dtype}")
        labels = np.asarray(labels)
        if labels.shape != (len(images),):
            raise ValueError(
                f"AugmentedDataset: expected {len(images)} labels (one per image), got shape {labels.shape}"
            )
        self.images = images
        self.labels = labels.astype(np.int64)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = np.asarray(self.images[index])
        if image.ndim == 2:
            image = image[:, :, None]
        if self.transform is not None:
            image = augment_image(self.transform, image, sample_seed(self.seed, self.epoch, index))
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return tensor, int(self.labels[index])
