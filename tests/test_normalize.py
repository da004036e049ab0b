"""Normalize: round-trip of arrays and index, train-only fitting, resize policies, Normalizer.apply."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.normalize import (
    AUTO_SIZE_CAP,
    PixelStats,
    build_processed,
    choose_image_size,
    fit_normalizer,
    resize_image,
)
from pipeline.params import NormalizeParams
from pipeline.processed import Normalizer, ProcessedData

SPLIT_OF = ["train"] * 6 + ["val"] * 2 + ["test"] * 2


def write_dataset(root, seed=0, val_test_offset=0):
    """10 small gray PNGs of varying size + manifest/curated/splits tables (1 excluded row)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(11):
        h, w = 20 + 3 * i, 30
        split = SPLIT_OF[i] if i < 10 else "train"
        base = rng.integers(0, 200, size=(h, w)).astype(np.int64)
        if split in ("val", "test"):
            base = base + val_test_offset
        rel = f"images/p{i // 2}/img{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), np.clip(base, 0, 255).astype(np.uint8))
        rows.append((rel, rel, f"c{i % 2}", f"p{i // 2}", 1, 8, "ok", ""))
    manifest = pd.DataFrame(
        rows, columns=["image_id", "path", "label", "patient_id", "channels", "bit_depth", "status", "reason"]
    )
    curated = pd.DataFrame({"image_id": manifest["image_id"], "included": [True] * 10 + [False],
                            "reason": [""] * 10 + ["exact_duplicate"], "group_id": manifest["patient_id"]})  # fmt: skip
    splits = pd.DataFrame({"image_id": manifest["image_id"][:10], "split": SPLIT_OF})
    return manifest, curated, splits


def test_arrays_and_index_round_trip(tmp_path):
    root, out = tmp_path / "data", tmp_path / "processed"
    manifest, curated, splits = write_dataset(root)
    metrics = build_processed(
        manifest, curated, splits, root, out, NormalizeParams(image_size=16, aspect="stretch")
    )
    meta = ProcessedData(out).meta
    assert meta["classes"] == ["c0", "c1"] and meta["channels"] == 1 and meta["dtype"] == "uint8"
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        x, idx = ProcessedData(out).split(split)
        assert x.shape == (n, 16, 16, 1) and x.dtype == np.uint8 and isinstance(x, np.memmap)
        assert list(idx.columns) == ["image_id", "label", "patient_id", "group_id", "label_index"]
        assert idx["image_id"].is_monotonic_increasing
        for i, image_id in enumerate(idx["image_id"]):
            src = cv2.imread(str(root / image_id), cv2.IMREAD_UNCHANGED)
            expected = cv2.resize(src, (16, 16), interpolation=cv2.INTER_AREA)
            np.testing.assert_array_equal(x[i, :, :, 0], expected)
            assert meta["classes"][idx["label_index"].iloc[i]] == idx["label"].iloc[i]
    assert metrics["splits"]["train"]["n_images"] == 6
    assert not list(out.glob("*.tmp"))


def test_normalizer_ignores_val_and_test_pixels(tmp_path):
    fitted = []
    for offset in (0, 50):
        root, out = tmp_path / f"d{offset}", tmp_path / f"p{offset}"
        manifest, curated, splits = write_dataset(root, val_test_offset=offset)
        build_processed(
            manifest, curated, splits, root, out, NormalizeParams(image_size=16, mode="percentile")
        )
        fitted.append(json.loads((out / "normalizer.json").read_text()))
        val, _ = ProcessedData(out).split("val")
        assert val.shape[0] == 2
    assert fitted[0] == fitted[1]
    assert fitted[0]["fitted_on"] == "train" and fitted[0]["n_images"] == 6


def test_fit_matches_numpy_on_train_pixels():
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, size=(7, 9, 9, 3), dtype=np.uint8)
    norm = fit_normalizer([train[:3], train[3:]], "standardize", 255, 3, (0.01, 0.99))
    flat = train.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(norm.mean, flat.mean(0))
    np.testing.assert_allclose(norm.std, flat.std(0))
    np.testing.assert_allclose(norm.low, np.percentile(flat, 1, axis=0, method="inverted_cdf"))
    np.testing.assert_allclose(norm.high, np.percentile(flat, 99, axis=0, method="inverted_cdf"))
    stats = PixelStats(3, 255)
    stats.update(train)
    assert fit_normalizer(stats, "standardize", 255, 3, (0.01, 0.99)) == norm


@pytest.mark.parametrize("mode", ["scale01", "center", "standardize", "percentile", "per_image_zscore"])
def test_apply_normalizer_numpy_and_torch_agree(mode):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    norm = fit_normalizer([x], mode, 255, 3)
    out_np = norm.apply(x)
    out_t = norm.apply(torch.from_numpy(x).permute(0, 3, 1, 2).float())
    assert out_np.dtype == np.float32 and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.permute(0, 2, 3, 1).numpy(), out_np, rtol=1e-5, atol=1e-5)
    if mode == "standardize":
        np.testing.assert_allclose(out_np.reshape(-1, 3).mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(out_np.reshape(-1, 3).std(0), 1, atol=1e-4)
    if mode in ("scale01", "percentile"):
        assert out_np.min() >= 0 and out_np.max() <= 1
    with pytest.raises(ValueError, match="expected 3 channel"):
        norm.apply(x[..., :1])


@pytest.mark.parametrize("aspect", ["pad", "center_crop", "stretch"])
def test_resize_policies_keep_shape_and_dtype(aspect):
    img = np.full((40, 80, 1), 200, dtype=np.uint16)
    out = resize_image(img, 32, aspect)
    assert out.shape == (32, 32, 1) and out.dtype == np.uint16
    if aspect == "pad":  # 40x80 -> 16x32 centred, black bars above and below
        assert out[:8].max() == 0 and out[-8:].max() == 0 and out[8:24].min() == 200
    else:
        assert out.min() == 200


def test_rgb_dataset_gives_three_channels_and_uint16_kept(tmp_path):
    root, out = tmp_path / "data", tmp_path / "processed"
    manifest, curated, splits = write_dataset(root)
    first = root / manifest["path"][0]
    cv2.imwrite(str(first), np.full((20, 30), 4000, np.uint16))  # one 12-bit image
    manifest.loc[0, "bit_depth"] = 16
    feats = pd.DataFrame(
        {"image_id": [manifest["image_id"][0]], "max": [4000 / 65535], "full_scale": [65535.0]}
    )
    build_processed(manifest, curated, splits, root, out, NormalizeParams(image_size=8, keep_uint16=True, channels=3),
                    features=feats)  # fmt: skip
    meta = ProcessedData(out).meta
    assert meta["dtype"] == "uint16" and meta["max_value"] == 4095 and meta["channels"] == 3
    x, idx = ProcessedData(out).split("train")
    row = int(np.flatnonzero(idx["image_id"] == manifest["image_id"][0])[0])
    assert x.shape[-1] == 3 and x[row].max() == 4000
    other = 1 if row == 0 else 0
    assert x[other].max() > 255  # 8-bit sources are scaled up to the 12-bit range
    assert Normalizer.from_json(out).max_value == 4095


def test_empty_val_split(tmp_path):
    root, out = tmp_path / "data", tmp_path / "processed"
    manifest, curated, splits = write_dataset(root)
    splits.loc[splits["split"] == "val", "split"] = "train"
    build_processed(manifest, curated, splits, root, out, NormalizeParams(image_size=8))
    x, idx = ProcessedData(out).split("val")
    assert x.shape == (0, 8, 8, 1) and len(idx) == 0


def test_auto_image_size_follows_the_data_and_the_device():
    """auto: median short side rounded down to a multiple of 32, capped per device; a number wins."""
    table = pd.DataFrame({"width": [1024, 2048, 900, 1100, 300], "height": [1024, 1500, 1200, 1100, 5000]})
    assert choose_image_size("auto", table, on_cuda=False)[0] == AUTO_SIZE_CAP["cpu"]
    assert choose_image_size("auto", table, on_cuda=True)[0] == AUTO_SIZE_CAP["cuda"]
    small = pd.DataFrame({"width": [100, 120, 140], "height": [200, 130, 90]})  # short sides 100, 120, 90
    assert choose_image_size("auto", small, on_cuda=True) == (
        96,
        "auto: median short side 100 px, cuda cap 256 px",
    )
    tiny = pd.DataFrame({"width": [28, 28], "height": [28, 28]})
    assert choose_image_size("auto", tiny, on_cuda=False)[0] == 28  # never upsampled
    assert choose_image_size(224, table, on_cuda=False) == (224, "normalize.image_size")
