"""Shared fixtures: a tiny demo dataset with planted problems (generated once per session)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# First, as in a stage process: idle OpenMP threads sleep rather than spin-wait (stages/__init__.py),
# so the suite costs its fair share of a machine that other jobs share.
import stages  # noqa: F401  isort: skip
from pipeline.demo import generate_demo
from pipeline.params import DemoParams

# Small enough to generate in well under a second; every planted kind appears at least twice
# (flipped labels: 5 % of about 100 images).
TINY_DEMO = DemoParams(
    n_patients=30,
    images_per_patient_range=(2, 5),
    n_exact_duplicates=3,
    n_near_duplicates=4,
    n_cross_patient_duplicates=2,
    n_blurry=2,
    n_dark=2,
    n_overexposed=2,
    n_blank=2,
    n_odd_size=2,
    n_odd_aspect_ratio=2,
    n_corrupt=2,
    n_not_an_image=2,
    flipped_label_fraction=0.05,
    n_outliers_per_subtype=1,
)
TINY_DEMO_SEED = 7


@pytest.fixture(scope="session")
def tiny_demo_params() -> tuple[DemoParams, int]:
    """(params, seed) that :func:`tiny_demo` was generated with."""
    return TINY_DEMO, TINY_DEMO_SEED


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny demo dataset: (root folder, truth dict). Read-only: copy it before changing it.

    root holds ``images/``, ``labels.csv`` and ``truth.json`` as written by
    :func:`pipeline.demo.generate_demo` with :data:`TINY_DEMO` and seed :data:`TINY_DEMO_SEED`.
    """
    root = tmp_path_factory.mktemp("tiny_demo")
    truth = generate_demo(root, TINY_DEMO, TINY_DEMO_SEED)
    assert json.loads((root / "truth.json").read_text(encoding="utf-8")) == truth
    return root, truth


@pytest.fixture
def one_torch_thread():
    """Tiny models: one intra-op thread is faster than two fighting over a shared CPU."""
    import torch  # only the training tests pay for the import

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
