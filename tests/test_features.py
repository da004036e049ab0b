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
                "flat_fraction", "channel_diff"):  # fmt: skip
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
    # noise alone has little structure above noise, at any exposure; real content has much more
    noise = rng.normal(120, 10, (200, 180)).clip(0, 255).astype(np.uint8)
    assert compute_features(noise, 8)["structure_snr"] < 1.0 < 5.0 < sharp["structure_snr"]
    dim_noise = (noise // 4).astype(np.uint8)
    assert compute_features(dim_noise, 8)["structure_snr"] < 1.0
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


# ---------------------------------------------------------------------------------------------
# perceptual hashes: our re-implementation vs imagededup itself (issue 9: no imagededup/torch import
# in the ingest pass, same hashes bit for bit)

from imagededup.methods import AHash, WHash  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.features import (  # noqa: E402
    _lanczos_resize_many,
    _pillow_pass_order,
    perceptual_hashes,
)

IMAGEDEDUP = {
    "phash": PHash(verbose=False),
    "dhash": DHash(verbose=False),
    "ahash": AHash(verbose=False),
    "whash": WHash(verbose=False),
}


def _varied(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    if kind == "noise":
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if kind == "constant":
        return np.full((h, w), int(rng.integers(0, 256)), np.uint8)
    if kind == "gradient":
        return ((np.indices((h, w)).sum(0) * 255) // max(1, h + w - 2)).astype(np.uint8)
    coarse = cv2.resize(rng.random((5, 5), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(coarse * 300 - 20 + rng.normal(0, 3, (h, w)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("h", "w"),
    [
        (1, 1),
        (3, 7),
        (8, 9),
        (9, 8),
        (31, 31),
        (32, 32),
        (45, 31),
        (100, 8),
        (256, 256),
        (256, 171),
        (171, 256),
        (300, 20),
        (20, 300),
        (700, 500),
        (999, 1000),
        (2000, 1501),
    ],  # fmt: skip
)
def test_perceptual_hashes_are_imagededups_bit_for_bit(h, w):
    rng = np.random.default_rng(h * 10007 + w)
    names = ("phash", "dhash", "ahash", "whash")
    for kind in ("noise", "smooth", "constant", "gradient"):
        img = _varied(rng, h, w, kind)
        expected = {name: IMAGEDEDUP[name].encode_image(image_array=img) for name in names}
        assert perceptual_hashes(img, names) == expected, (h, w, kind)


def test_lanczos_resize_is_pillows_on_random_shapes():
    """Both pass orders of Pillow's two-pass LANCZOS, including up- and mixed scaling."""
    rng = np.random.default_rng(11)
    sizes = [(32, 32), (9, 8), (8, 8), (256, 256)]
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 400, 2))
        img = rng.integers(0, 256, (h, w), dtype=np.uint8)
        ours = _lanczos_resize_many(img, sizes)
        for size, got in zip(sizes, ours, strict=True):
            expected = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))
            assert np.array_equal(got, expected), (h, w, size)


def test_pass_order_of_the_installed_pillow_is_reproduced():
    # "pillow" would mean the fallback (Pillow resizes, exact but slower): a new Pillow changed
    # its LANCZOS pass order again and _vertical_first needs a look.
    assert _pillow_pass_order() in ("horizontal_first", "vertical_first_when_taller")
    img = np.random.default_rng(12).integers(0, 256, (216, 29), dtype=np.uint8)
    sizes = [(32, 32), (9, 8)]
    fallback = _lanczos_resize_many(img, sizes, rule="pillow")
    assert all(np.array_equal(a, b) for a, b in zip(_lanczos_resize_many(img, sizes), fallback, strict=True))


def test_feature_hashes_versus_imagededup_on_the_decoded_image():
    rng = np.random.default_rng(13)
    # at most WORK_PX px, 8-bit gray: the working copy is the image, so the hashes are identical
    for h, w in ((128, 128), (256, 200), (37, 256)):
        img = _varied(rng, h, w, "smooth")
        f = compute_features(img, 8)
        for name in ("phash", "dhash", "ahash"):
            assert f[name] == IMAGEDEDUP[name].encode_image(image_array=img), (h, w, name)
    # larger, RGB: hashed on the reduced gray working copy, a few bits from imagededup's full-size hash
    for h, w in ((700, 900), (1500, 400)):
        gray = np.rint(cv2.resize(textured(rng, 200), (w, h)) * 255).astype(np.uint8)
        rgb = np.stack([gray, np.roll(gray, 5, axis=1), gray // 2], 2)
        for img in (gray, rgb):
            f = compute_features(img, 8)
            for name in ("phash", "dhash", "ahash"):
                ref = IMAGEDEDUP[name].encode_image(image_array=img)
                assert bin(int(f[name], 16) ^ int(ref, 16)).count("1") <= 4, (h, w, img.ndim, name)


def test_the_scan_imports_neither_imagededup_nor_torch(tmp_path):
    """Team rule: no torch in ingest/quality (``import imagededup`` imports torch, 15-30 s)."""
    import subprocess
    import sys
    from pathlib import Path

    cv2.imwrite(str(tmp_path / "a.png"), np.random.default_rng(14).integers(0, 256, (40, 50), dtype=np.uint8))
    code = (
        "import sys\n"
        "from pipeline.ingest import FileTask, ingest_file\n"
        f"res = ingest_file(FileTask(root={str(tmp_path)!r}, path='a.png', label='x', patient_id='p'))\n"
        "assert res.features is not None and len(res.features['phash']) == 16, res\n"
        "bad = [m for m in ('imagededup', 'torch', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=120)


def test_histogram_statistics_match_numpy():
    rng = np.random.default_rng(15)
    for img, bd in (
        (rng.integers(3, 250, (200, 130), dtype=np.uint8), 8),
        (rng.integers(100, 4000, (90, 256), dtype=np.uint16), 16),
    ):
        f = compute_features(img, bd)
        scale = 2.0**bd - 1
        assert f["mean"] == pytest.approx(img.mean() / scale, rel=1e-12)
        assert f["std"] == pytest.approx(img.std() / scale, rel=1e-9)
        for key, q in (("min", 0), ("p05", 5), ("median", 50), ("p99", 99), ("max", 100)):
            assert f[key] == np.percentile(img, q, method="inverted_cdf") / scale, key


@pytest.mark.parametrize(
    ("gray8", "names", "match"),
    [
        (np.zeros((4, 4, 3), np.uint8), ("phash",), "2-D uint8"),
        (np.zeros((4, 4), np.uint16), ("phash",), "2-D uint8"),
        (np.zeros((4, 4), np.uint8), ("mhash",), "unknown hash"),
    ],
)
def test_perceptual_hashes_bad_input_is_a_value_error(gray8, names, match):
    with pytest.raises(ValueError, match=match):
        perceptual_hashes(gray8, names)


def _at_offset(a: np.ndarray, offset: int) -> np.ndarray:
    """A copy of ``a`` whose buffer starts ``offset`` bytes after a 64-byte boundary."""
    buf = np.empty(a.nbytes + 128, np.uint8)
    start = -buf.ctypes.data % 64 + offset
    out = buf[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def test_sums_do_not_depend_on_where_the_buffer_lies(tiny_demo):
    """Issue 14 item 11: OpenCV's reductions sum in an order set by the buffer's address, which
    made structure_snr differ by an ulp between clean runs. Every level that structure_snr and
    the blur measures sum over (the 128 px copy, its smoothed copy, the residual) must give the
    same mean and std wherever the array lies in memory."""
    from pipeline.features import _downscale, _mean_std
    from pipeline.images import ImageRejected, read_image

    root, _ = tiny_demo
    n_checked = 0
    for path in sorted((root / "images").rglob("*.png")):
        try:
            image = read_image(path, 10**8)
        except ImageRejected:
            continue
        if image.channels != 1:
            continue
        gray = np.divide(image.pixels, np.float32(2**image.bit_depth - 1), dtype=np.float32)
        level = _downscale(gray, 128)
        smooth = cv2.GaussianBlur(level, (0, 0), 1.0)
        for arr in (level, smooth, cv2.subtract(level, smooth)):
            results = {_mean_std(_at_offset(arr, off)) for off in range(0, 64, 4)}
            assert len(results) == 1, (path.name, results)
            n_checked += 1
    assert n_checked > 100
