"""The model checkpoint: everything needed to rebuild and use a trained network, loadable safely.

A checkpoint file is ``torch.save`` of plain types (dicts, lists, numbers, strings, tensors), so
``torch.load(weights_only=True)`` reads it: a pickle that would import or call anything else is
refused, and a checkpoint from an untrusted source cannot run code. :class:`Checkpoint` is the typed
view of that dict. It carries the model spec, the class names, the normalizer, the params it was
trained with, the epoch and validation metrics of the kept weights, and no wall-clock time, so the
same run writes the same bytes (timings belong in ``metrics/train.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.io import atomic_path
from pipeline.models import build_model
from pipeline.processed import Normalizer

CHECKPOINT_FORMAT = 1
# Epoch-record keys that are not properties of the weights (and would make the file differ per run).
NOT_STORED = frozenset({"seconds"})


@dataclass(frozen=True)
class ModelSpec:
    """What :func:`pipeline.models.build_model` needs to rebuild the network."""

    arch: str
    in_channels: int
    n_classes: int
    width: int
    dropout: float

    def build(self) -> nn.Module:
        return build_model(self.arch, self.in_channels, self.n_classes, self.width, self.dropout)


@dataclass(frozen=True)
class Checkpoint:
    """A trained model and what it needs to be used (see the module docstring)."""

    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    classes: list[str]
    normalizer: Normalizer
    params: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    val_metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        model: nn.Module,
        spec: ModelSpec,
        classes: list[str],
        normalizer: Normalizer,
        *,
        params: dict[str, Any],
        record: dict[str, float],
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Checkpoint:
        """Checkpoint of ``model`` (or of ``state_dict``) after the epoch described by ``record``."""
        net = getattr(model, "module", model)
        state = state_dict if state_dict is not None else net.state_dict()
        return cls(
            spec=spec,
            state_dict={k: v.detach().to("cpu") for k, v in state.items()},
            classes=list(classes),
            normalizer=normalizer,
            params=params,
            epoch=int(record["epoch"]),
            val_metrics={k: float(v) for k, v in record.items() if k not in NOT_STORED},
        )

    def to_dict(self) -> dict[str, Any]:
        """The plain-types dict that is saved (format 1)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": {
                "arch": self.spec.arch,
                "in_channels": int(self.spec.in_channels),
                "n_classes": int(self.spec.n_classes),
                "width": int(self.spec.width),
                "dropout": float(self.spec.dropout),
            },
            "state_dict": self.state_dict,
            "classes": list(self.classes),
            "normalizer": self.normalizer.to_dict(),
            "params": self.params,
            "epoch": int(self.epoch),
            "val_metrics": dict(self.val_metrics),
        }

    def save(self, path: str | Path) -> None:
        """torch.save to a temp file beside ``path``, then rename (never a half-written model)."""
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Load a checkpoint written by :meth:`save`, with ``torch.load(weights_only=True)``.

        Raises:
            InputError: No file at ``path``, not loadable with ``weights_only=True``, missing keys
                or another format.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"checkpoint {path} does not exist")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError, RuntimeError, EOFError...: all mean "refuse"
            raise InputError(f"{path}: refused to load checkpoint (weights_only=True): {err}") from err
        required = {"format", "model", "state_dict", "classes", "normalizer"}
        if not isinstance(ckpt, dict) or not required <= set(ckpt):
            got = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
            raise InputError(
                f"{path}: not a pipeline checkpoint; expected keys {sorted(required)}, got {got}"
            )
        if ckpt["format"] != CHECKPOINT_FORMAT:
            raise InputError(f"{path}: checkpoint format {ckpt['format']}, expected {CHECKPOINT_FORMAT}")
        return cls(
            spec=ModelSpec(**ckpt["model"]),
            state_dict=ckpt["state_dict"],
            classes=list(ckpt["classes"]),
            normalizer=Normalizer.from_dict(ckpt["normalizer"], source=f"{path} normalizer"),
            params=ckpt.get("params", {}),
            epoch=int(ckpt.get("epoch", 0)),
            val_metrics=ckpt.get("val_metrics", {}),
        )

    def build_model(self) -> nn.Module:
        """Rebuild the network and load the weights (eval mode, CPU)."""
        model = self.spec.build()
        model.load_state_dict(self.state_dict)
        return model.eval()
