"""Thumbnail similarity: robust to shifts, identical to the pair-at-a-time reference, chunked in budget."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.demo import render_radiograph, sample_anatomy, sample_view
from pipeline.features import compute_features
from pipeline.params import DedupParams
from pipeline.similarity import (
    _confirm_similarity,
    _pair_chunks,
    _reference_similarity,
    shift_residual,
    thumbnail_similarity,
)


def test_similarity_is_robust_to_shift_and_rejects_other_images() -> None:
    rng = np.random.default_rng(1)
    a = sample_anatomy(rng)
    img = render_radiograph(a, sample_view(rng), "normal", 128, 128, rng)
    other = render_radiograph(a, sample_view(rng), "normal", 128, 128, rng)
    shifted = np.roll(img, 4, axis=1)
    blank = np.full_like(img, 90)
    t = np.stack(
        [
            np.frombuffer(compute_features(x, 8)["thumb"], np.uint8).reshape(32, 32)
            for x in (img, shifted, other, blank)
        ]
    ).astype(np.float32)
    sim = thumbnail_similarity(
        t, np.array([0, 0, 0]), np.array([1, 2, 3]), max_shift=2, zooms=(1.0, 1.05, 1.1)
    )
    null = np.sqrt(shift_residual(t[[0, 0, 0]]) * shift_residual(t[[1, 2, 3]]))
    ratio = (1.0 - sim) / null
    assert ratio[0] <= DedupParams().confirm_residual_ratio
    assert ratio[1] > DedupParams().confirm_residual_ratio
    assert sim[2] == -1.0
    assert np.isnan(null[2])  # a flat thumbnail has no null: never confirmed


def test_shift_residual_is_small_for_smooth_and_large_for_detailed_pictures() -> None:
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    smooth = 100 + 60 * np.exp(-((xx - 16) ** 2 + (yy - 14) ** 2) / 120)
    detailed = np.random.default_rng(0).uniform(0, 255, (32, 32)).astype(np.float32)
    flat = np.full((32, 32), 50.0, np.float32)
    r = shift_residual(np.stack([smooth, detailed, flat]))
    assert r[0] < 0.05 < 0.5 < r[1]
    assert np.isnan(r[2])


def _random_thumbs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth random 32x32 thumbnails, some flat, some shifted noisy copies of others."""
    rng = np.random.default_rng(seed)
    small = rng.random((n, 6, 6)).astype(np.float32)
    t = np.stack([cv2.resize(x, (32, 32), interpolation=cv2.INTER_CUBIC) for x in small]) * 200 + 20
    t[:: n // 10] = 77.0
    src, dst = rng.integers(0, n, size=(2, n // 4))
    t[dst] = np.roll(t[src], 1, axis=2) + rng.normal(0, 2, (src.size, 32, 32))
    return np.clip(t + rng.normal(0, 2, t.shape), 0, 255).round().astype(np.float32), src, dst


def test_confirmation_identical_to_reference_on_random_thumbnails() -> None:
    thumbs, src, dst = _random_thumbs(300, seed=5)
    rng = np.random.default_rng(6)
    i, j = rng.integers(0, 300, size=(2, 3000))
    i, j = np.concatenate([i, src]), np.concatenate([j, dst])
    i, j = i[i != j], j[i != j]
    args = (2, (1.0, 1.05, 1.1))
    ref = _reference_similarity(thumbs, i, j, *args)
    fast = thumbnail_similarity(thumbs, i, j, *args)
    np.testing.assert_allclose(fast, ref, atol=1e-5)
    assert np.array_equal(fast == -1.0, ref == -1.0)  # same flat windows
    for threshold in (0.9, 0.96, float(np.median(ref))):
        got = _confirm_similarity(thumbs, i, j, *args, threshold)
        assert np.array_equal(got >= threshold, ref >= threshold)
        assert np.array_equal(got.round(4), ref.round(4))
    assert (ref >= 0.96).sum() > 10  # the planted copies are there


@pytest.mark.parametrize("max_images", [1, 2, 5, 40])
def test_pair_chunks_cover_every_pair_once_within_the_image_budget(max_images) -> None:
    rng = np.random.default_rng(max_images)
    a, b = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    pairs = np.flatnonzero(a != b)[:150]
    chunks = list(_pair_chunks(a, b, pairs, max_images))
    assert sorted(np.concatenate(chunks).tolist()) == sorted(pairs.tolist())
    for k, sel in enumerate(chunks):  # a pair has 2 images: a budget of 1 still takes one pair
        assert len(np.unique(np.concatenate([a[sel], b[sel]]))) <= max(max_images, 2)
        if max_images >= 2 and k + 1 < len(chunks):  # greedy: the next pair would not have fit
            nxt = chunks[k + 1][0]
            assert len(np.unique(np.concatenate([a[sel], b[sel], [a[nxt], b[nxt]]]))) > max_images
