"""Tests for pipeline.features (the per-image feature contract shared by quality and dedup)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from imagededup.methods import DHash, PHash

from pipeline.features import compute_features, decode_thumb


def textured(rng: np.random.Generator, n: int = 96) -> np.ndarray:
    coarse = cv2.resize(
        rng.normal(0.5, 0.2, (6, 6)).astype(np.float32), (n, n), interpolation=cv2.INTER_CUBIC
    )
    return np.clip(coarse + rng.normal(0, 0.03, (n, n)), 0, 1)


def test_fields_types_and_ranges():
    rng = np.random.default_rng(0)
    f = compute_features(np.rint(textured(rng) * 255).astype(np.uint8), 8)
    for key in ("mean", "median", "p01", "p05", "p95", "p99", "std", "contrast", "michelson", "entropy",
                "flat_fraction", "hf_ratio", "channel_diff"):  # fmt: skip
        assert 0.0 <= f[key] <= 1.0, key
    assert f["p01"] <= f["p05"] <= f["median"] <= f["p95"] <= f["p99"] <= f["max"]
    assert f["n_channels"] == 1 and f["is_gray_rgb"] is False
    assert len(f["pixel_sha256"]) == 64
    assert all(len(f[h]) == 16 for h in ("phash", "dhash", "ahash"))
    assert decode_thumb(f["thumb"], f["thumb_size"]).shape == (32, 32)


def test_sixteen_bit_is_measured_at_its_true_depth():
    rng = np.random.default_rng(1)
    img = textured(rng)
    f8 = compute_features(np.rint(img * 255).astype(np.uint8), 8)
    f16 = compute_features(np.rint(img * 65535).astype(np.uint16), 16)
    for key in ("mean", "median", "p95", "michelson"):
        assert f16[key] == pytest.approx(f8[key], abs=0.01), key
    assert f16["stored_bits"] == 16
    assert compute_features(np.rint(img * 4000).astype(np.uint16), 16)["stored_bits"] == 12


def test_hashes_match_imagededup_on_the_full_image():
    rng = np.random.default_rng(2)
    img = np.rint(textured(rng, 700) * 255).astype(np.uint8)  # downscaled to 256 inside
    f = compute_features(img, 8)
    assert f["phash"] == PHash(verbose=False).encode_image(image_array=img)
    assert f["dhash"] == DHash(verbose=False).encode_image(image_array=img)


def test_sixteen_bit_hash_does_not_wrap_around():
    rng = np.random.default_rng(3)
    img = textured(rng)
    h8 = compute_features(np.rint(img * 255).astype(np.uint8), 8)["phash"]
    h16 = compute_features(np.rint(img * 65535).astype(np.uint16), 16)["phash"]
    distance = bin(int(h8, 16) ^ int(h16, 16)).count("1")
    assert distance <= 6


def test_pixel_sha256_depends_on_pixels_shape_and_dtype_only():
    rng = np.random.default_rng(4)
    img = np.rint(textured(rng) * 255).astype(np.uint8)
    same = compute_features(img.copy(), 8)["pixel_sha256"]
    assert compute_features(img, 8)["pixel_sha256"] == same
    assert compute_features(np.repeat(img[:, :, None], 3, 2), 8)["pixel_sha256"] != same
    assert compute_features(img.astype(np.uint16), 16)["pixel_sha256"] != same
    changed = img.copy()
    changed[0, 0] ^= 1
    assert compute_features(changed, 8)["pixel_sha256"] != same


def test_thumbnail_is_intensity_normalized():
    rng = np.random.default_rng(5)
    img = textured(rng)
    t1 = decode_thumb(**_thumb(compute_features(np.rint(img * 255).astype(np.uint8), 8)))
    t2 = decode_thumb(**_thumb(compute_features(np.rint(img * 80 + 20).astype(np.uint8), 8)))
    assert np.abs(t1.astype(int) - t2.astype(int)).mean() < 4


def _thumb(f: dict) -> dict:
    return {"thumb": f["thumb"], "thumb_size": f["thumb_size"]}


def test_gray_stored_as_rgb_and_color():
    rng = np.random.default_rng(6)
    g = np.rint(textured(rng) * 255).astype(np.uint8)
    assert compute_features(np.repeat(g[:, :, None], 3, 2), 8)["is_gray_rgb"] is True
    color = np.stack([g, 255 - g, g // 2], 2)
    f = compute_features(color, 8)
    assert f["is_gray_rgb"] is False and f["colorfulness"] > 0.1


def test_blur_and_blank_measures():
    rng = np.random.default_rng(7)
    img = np.rint(textured(rng) * 255).astype(np.uint8)
    sharp = compute_features(img, 8)
    blurred = compute_features(cv2.GaussianBlur(img, (0, 0), 3), 8)
    assert blurred["sharpness_128"] < sharp["sharpness_128"] / 5
    assert blurred["hf_ratio"] < sharp["hf_ratio"]
    blank = compute_features(np.full((40, 50), 77, np.uint8), 8)
    assert blank["entropy"] == 0.0 and blank["flat_fraction"] == 1.0 and blank["std"] == 0.0


@pytest.mark.parametrize(
    ("pixels", "bit_depth", "match"),
    [
        (np.zeros((4, 4), np.float32), 8, "dtype"),
        (np.zeros((4, 4), np.uint8), 12, "bit_depth"),
        (np.zeros((4, 4, 2), np.uint8), 8, "shape"),
    ],
)
def test_bad_input_is_a_value_error(pixels, bit_depth, match):
    with pytest.raises(ValueError, match=match):
        compute_features(pixels, bit_depth)
