"""The processed dataset as the training side reads it: the fitted normalizer and the per-split arrays.

Written by the normalize stage (:func:`pipeline.normalize.build_processed`), read by augment,
label_issues, train and evaluate. This module is a foundation: it imports no stage logic and no
torch, so reading the data costs nothing beyond numpy and pandas.

Layout of ``data/processed/``:

* ``{train,val,test}.npy``: ``(N, H, W, C)`` uint8/uint16 raw intensities (no normalization baked in).
* ``{split}.parquet``: row ``i`` describes ``images[i]``: ``image_id, label, patient_id, group_id,
  label_index``.
* ``meta.json``: ``classes`` (sorted; ``label_index`` indexes it), ``channels``, ``image_size``,
  ``dtype``, ``max_value``, ``aspect``, ``layout``, ``n_images`` per split.
* ``normalizer.json``: the :class:`Normalizer` fitted on the train split only.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contract import SPLITS
from pipeline.errors import InputError

MODES = ("scale01", "center", "standardize", "percentile", "per_image_zscore")
EPS = 1e-6


@dataclass(frozen=True)
class Normalizer:
    """Pixel normalization fitted on the train split (:func:`pipeline.normalize.fit_normalizer`).

    Per-channel statistics are in raw stored units (0..``max_value``). ``apply`` is the ONE function
    that turns stored pixels into model inputs, for training, label issues and evaluation alike.
    """

    mode: str
    max_value: float
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    percentile_range: tuple[float, float] = (0.005, 0.995)
    n_images: int = 0
    n_pixels: int = 0
    fitted_on: str = "train"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"normalizer: expected mode in {list(MODES)}, got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists, floats): what ``normalizer.json`` and checkpoints store."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "normalizer") -> Normalizer:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            InputError: Keys missing or the mode unknown (``source`` names where the dict came from).
        """
        required = ("mode", "max_value", "channels", "mean", "std", "low", "high")
        missing = [k for k in required if k not in data]
        if missing or data.get("mode") not in MODES:
            raise InputError(f"{source}: not a normalizer (missing {missing}, mode {data.get('mode')!r})")
        known = {f.name for f in fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | Path) -> Normalizer:
        """Read ``normalizer.json`` (a file path, or the processed folder)."""
        path = _file(path, "normalizer.json")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))

    def apply(self, x: Any, channel_axis: int | None = None) -> Any:
        """Normalize raw-unit pixels; returns float32 of the same type, device and layout.

        * ``scale01``: ``x / max_value`` in [0, 1].
        * ``center``: ``(x - mean_c) / max_value`` (train per-channel mean removed, unit scale kept).
        * ``standardize``: ``(x - mean_c) / std_c`` (train per-channel mean and std).
        * ``percentile``: ``(clip(x, low_c, high_c) - low_c) / (high_c - low_c)`` in [0, 1], with
          ``low_c, high_c`` the train per-channel ``percentile_range`` quantiles (a fixed window,
          like a CT/radiograph window).
        * ``per_image_zscore``: ``(x - mean) / (std + 1e-6)`` over all pixels and channels of each
          image; nothing from train is used.

        Args:
            x: A torch tensor (any device; layout ``(N, C, H, W)`` or ``(C, H, W)``) or a numpy array
                (layout ``(N, H, W, C)`` or ``(H, W, C)``) of raw stored values. Integer inputs are cast
                to float32 first. torch is never imported here: a tensor implies it already is.
            channel_axis: Override the channel axis (default ``-3`` for torch, ``-1`` for numpy).

        Raises:
            ValueError: The channel axis does not have ``channels`` entries (a bug in the caller).
        """
        torch = sys.modules.get("torch")
        is_torch = torch is not None and isinstance(x, torch.Tensor)
        if is_torch:
            x = x.to(torch.float32)
            axis = -3 if channel_axis is None else channel_axis
        else:
            x = np.asarray(x).astype(np.float32, copy=True)
            axis = -1 if channel_axis is None else channel_axis
        n_ch = int(self.channels)
        if x.shape[axis] != n_ch:
            raise ValueError(
                f"Normalizer.apply: expected {n_ch} channel(s) on axis {axis} "
                f"({'N,C,H,W torch' if is_torch else 'N,H,W,C numpy'}), got shape {tuple(x.shape)}"
            )

        def per_channel(values: tuple[float, ...]) -> Any:
            shape = [1] * x.ndim
            shape[axis] = n_ch
            arr = np.asarray(values, dtype=np.float32).reshape(shape)
            return torch.as_tensor(arr, device=x.device) if is_torch else arr

        max_value = float(self.max_value)
        if self.mode == "scale01":
            return x / max_value
        if self.mode == "center":
            return (x - per_channel(self.mean)) / max_value
        if self.mode == "standardize":
            return (x - per_channel(self.mean)) / per_channel(self.std)
        if self.mode == "percentile":
            low, high = per_channel(self.low), per_channel(self.high)
            x = torch.minimum(torch.maximum(x, low), high) if is_torch else np.clip(x, low, high)
            return (x - low) / (high - low)
        # per_image_zscore: statistics over every axis but the batch axis (all axes for one image).
        dims = tuple(range(1, x.ndim)) if x.ndim == 4 else tuple(range(x.ndim))
        if is_torch:
            mean = x.mean(dim=dims, keepdim=True)
            std = x.std(dim=dims, keepdim=True, unbiased=False)
        else:
            mean = x.mean(axis=dims, keepdims=True)
            std = x.std(axis=dims, keepdims=True)
        return (x - mean) / (std + EPS)


def _file(path: str | Path, name: str) -> Path:
    path = Path(path)
    return path / name if path.is_dir() else path


class ProcessedData:
    """Reader of ``data/processed/``: its meta, its normalizer and the arrays of each split.

    Files are read when first asked for, so a reader of one split needs nothing else.

    Args:
        directory: The processed folder (normalize stage output).
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @functools.cached_property
    def meta(self) -> dict[str, Any]:
        """``meta.json``.

        Raises:
            InputError: It is missing (the normalize stage has not run there).
        """
        meta_path = self.directory / "meta.json"
        if not meta_path.is_file():
            raise InputError(f"{self.directory}: no meta.json (run the normalize stage first)")
        return json.loads(meta_path.read_text(encoding="utf-8"))

    @property
    def classes(self) -> list[str]:
        """Class names; ``label_index`` indexes this list."""
        return list(self.meta["classes"])

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def normalizer(self) -> Normalizer:
        """The normalizer fitted on the train split."""
        return Normalizer.from_json(self.directory / "normalizer.json")

    def has_split(self, split: str) -> bool:
        return (self.directory / f"{split}.parquet").exists()

    def split(self, split: str) -> tuple[np.ndarray, pd.DataFrame]:
        """The images and index of one split.

        Returns:
            ``(images, index)``: a read-only memmap ``(N, H, W, C)`` (uint8/uint16) and the
            DataFrame ``image_id, label, patient_id, group_id, label_index`` whose row ``i``
            describes ``images[i]``.

        Raises:
            ValueError: Unknown split (a bug in the caller).
            InputError: Array and index lengths differ.
        """
        if split not in SPLITS:
            raise ValueError(f"ProcessedData.split: expected split in {list(SPLITS)}, got {split!r}")
        images = np.load(self.directory / f"{split}.npy", mmap_mode="r")
        index = pd.read_parquet(self.directory / f"{split}.parquet")
        if len(index) != images.shape[0]:
            raise InputError(
                f"{self.directory}/{split}.npy has {images.shape[0]} images but {split}.parquet has "
                f"{len(index)} rows"
            )
        return images, index
