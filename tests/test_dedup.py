"""Dedup: the Hamming index equals brute force; planted copies cluster, look-alikes do not."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from imagededup.methods import PHash

from pipeline import io, similarity
from pipeline.dedup import exact_links, find_duplicates, ok_images
from pipeline.demo import render_radiograph, sample_anatomy, sample_view
from pipeline.errors import InputError
from pipeline.features import compute_features
from pipeline.hamming_index import bruteforce_pairs, hex_to_uint64, plan_chunks, search_pairs
from pipeline.params import DedupParams
from pipeline.similarity import Thumbnails


def _hashes_with_near_pairs(n: int, max_flip: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    for src, dst in rng.integers(0, n, size=(n // 5, 2)):
        flips = rng.choice(64, size=int(rng.integers(0, max_flip + 1)), replace=False)
        codes[dst] = codes[src] ^ np.uint64(sum(1 << int(b) for b in flips))
    return codes


@pytest.mark.parametrize("max_distance", [0, 1, 4, 7, 10])
def test_index_equals_bruteforce(max_distance: int) -> None:
    codes = _hashes_with_near_pairs(3000, max_distance + 3, seed=max_distance)
    expected = bruteforce_pairs(codes, max_distance)
    assert expected[0].size > 0
    for n_chunks in (None, max_distance + 1, min(max_distance + 1, 4)):
        got = search_pairs(codes, max_distance, n_chunks=n_chunks)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(g, e)


def test_plan_obeys_pigeonhole() -> None:
    for n in (10, 10_000, 1_000_000):
        for d in (0, 3, 10, 20):
            chunks = plan_chunks(n, d)
            assert sum(c.radius + 1 for c in chunks) == d + 1
            assert sum(c.n_bits for c in chunks) == 64


def test_index_matches_imagededup_find_duplicates() -> None:
    codes = _hashes_with_near_pairs(400, 12, seed=3)
    keys = [f"img_{k:04d}" for k in range(codes.size)]
    encoding_map = {k: f"{int(c):016x}" for k, c in zip(keys, codes, strict=True)}
    theirs = PHash(verbose=False).find_duplicates(
        encoding_map=encoding_map, max_distance_threshold=10, search_method="brute_force", num_dist_workers=0
    )
    expected = {tuple(sorted((a, b))) for a, dups in theirs.items() for b in dups}
    i, j, _ = search_pairs(hex_to_uint64(encoding_map.values()), 10)
    assert {(keys[a], keys[b]) for a, b in zip(i, j, strict=True)} == expected
    assert expected


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(
        cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE
    )


def _planted_set() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, set[str]]]:
    """Originals of 6 patients, planted copies of two of them, and same-anatomy look-alikes."""
    rng = np.random.default_rng(0)
    anatomy = [sample_anatomy(rng) for _ in range(6)]
    images: dict[str, tuple[np.ndarray, str, str, str]] = {}  # id -> pixels, patient, label, sha
    for p, a in enumerate(anatomy):
        # two acquisitions per patient, and a "twin" with the same anatomy filed as another patient
        for v in range(2):
            images[f"p{p}/img{v}.png"] = (
                render_radiograph(a, sample_view(rng), "normal", 128, 128, rng),
                f"p{p}",
                "normal",
                "",
            )
        images[f"twin{p}/img0.png"] = (
            render_radiograph(a, sample_view(rng), "normal", 128, 128, rng),
            f"twin{p}",
            "normal",
            "",
        )
    src = images["p0/img0.png"][0]
    h, w = src.shape
    copies = {
        "p0/exact_copy.png": src.copy(),
        "p0/resized.png": cv2.resize(src, (112, 112), interpolation=cv2.INTER_AREA),
        "p0/jpeg.png": _jpeg(src, 75),
        "p0/brighter.png": np.clip(src.astype(np.int16) + 15, 0, 255).astype(np.uint8),
        "p0/cropped.png": cv2.resize(src[3 : h - 2, 2 : w - 3], (w, h), interpolation=cv2.INTER_LINEAR),
    }
    for k, img in copies.items():
        images[k] = (img, "p0", "normal", "same-bytes" if k == "p0/exact_copy.png" else "")
    # a byte copy of p1's image filed under p5 with another label: cross-patient + label conflict
    images["p5/copy_of_p1.png"] = (images["p1/img1.png"][0].copy(), "p5", "nodule", "")
    rows, feats = [], []
    for image_id in sorted(images):
        pixels, patient, label, _ = images[image_id]
        sha = {"p0/exact_copy.png": "sha-p0", "p0/img0.png": "sha-p0"}.get(image_id, f"sha-{image_id}")
        rows.append(
            {
                "image_id": image_id,
                "path": image_id,
                "label": label,
                "patient_id": patient,
                "sha256": sha,
                "width": pixels.shape[1],
                "height": pixels.shape[0],
                "status": "ok",
            }
        )
        feats.append({"image_id": image_id, **compute_features(pixels, 8)})
    expected = {
        "p0/img0.png": {"p0/img0.png", *copies},
        "p1/img1.png": {"p1/img1.png", "p5/copy_of_p1.png"},
    }
    return pd.DataFrame(rows), pd.DataFrame(feats), expected


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, set[str]]]:
    return _planted_set()


def test_exactly_the_planted_copies_cluster(planted) -> None:
    manifest, features, expected = planted
    result = find_duplicates(manifest, features, pd.DataFrame({"image_id": []}), DedupParams())
    dup = result.duplicates
    clusters = {frozenset(g["image_id"]) for _, g in dup.groupby("cluster_id")}
    assert clusters == {frozenset(v) for v in expected.values()}
    # the look-alikes (same anatomy, other acquisition or other patient id) were hash
    # candidates at least sometimes, and confirmation turned them away
    assert result.metrics["n_candidates_rejected"] > 0
    kinds = dup.set_index("image_id")["kind"]
    assert kinds[["p0/exact_copy.png", "p0/img0.png"]].eq("exact").all()
    assert kinds["p5/copy_of_p1.png"] == "exact"
    assert (kinds[["p0/resized.png", "p0/jpeg.png", "p0/brighter.png", "p0/cropped.png"]] == "near").all()
    flags = dup.groupby("cluster_id")[["is_cross_patient", "is_label_conflict"]].first()
    by_member = dup.set_index("image_id")["cluster_id"]
    assert flags.loc[by_member["p5/copy_of_p1.png"]].tolist() == [True, True]
    assert flags.loc[by_member["p0/img0.png"]].tolist() == [False, False]
    assert result.metrics["n_exact"] + result.metrics["n_near"] == 6
    assert dup.groupby("cluster_id")["is_representative"].sum().eq(1).all()


def test_representative_is_deterministic(planted) -> None:
    manifest, features, _ = planted
    quality = pd.DataFrame({"image_id": manifest["image_id"], "is_blurry_issue": False, "blurry_score": 1.0})
    quality.loc[quality["image_id"] == "p0/img0.png", ["is_blurry_issue", "blurry_score"]] = [True, 0.0]
    reps = []
    for seed in range(3):  # row order must not matter
        perm = np.random.default_rng(seed).permutation(len(manifest))
        dup = find_duplicates(
            manifest.iloc[perm], features.iloc[perm[::-1]], quality, DedupParams()
        ).duplicates
        reps.append(dup.loc[dup["is_representative"], "image_id"].tolist())
        pd.testing.assert_frame_equal(
            dup, find_duplicates(manifest, features, quality, DedupParams()).duplicates
        )
    assert reps[0] == reps[1] == reps[2]
    # best quality wins (img0 is "blurry"), then the largest (the 112 px copy loses), then image_id
    assert "p0/img0.png" not in reps[0] and "p0/resized.png" not in reps[0]
    assert "p0/brighter.png" in reps[0]


def test_thumbnails_streamed_from_parquet_and_chunked_pairs_give_the_in_memory_result(
    planted, tmp_path, monkeypatch
) -> None:
    manifest, features, _ = planted
    features = features.copy()
    lost = features.index[features["image_id"] == "p0/jpeg.png"]
    features.loc[lost, ["thumb", "thumb_size"]] = None  # a row without a thumbnail takes no part
    monkeypatch.setattr(io, "ROW_GROUP_ROWS", 3)  # requested rows spread over many row groups
    io.write_parquet(features, tmp_path / "features.parquet")
    quality = pd.DataFrame({"image_id": []})
    in_memory = find_duplicates(manifest, features, quality, DedupParams())
    monkeypatch.setattr(similarity, "_CHUNK_IMAGES", 3)  # and pairs scored a few images at a time
    streamed = find_duplicates(
        manifest,
        features.drop(columns=["thumb", "thumb_size"]),
        quality,
        DedupParams(),
        Thumbnails.from_parquet(tmp_path / "features.parquet"),
    )
    pd.testing.assert_frame_equal(streamed.duplicates, in_memory.duplicates)
    pd.testing.assert_frame_equal(streamed.pairs, in_memory.pairs)
    assert "p0/jpeg.png" not in set(in_memory.duplicates["image_id"])
    assert in_memory.metrics["n_near"] > 0


def _clustered_hashes(n_families: int, family_size: int, max_flip: int, seed: int) -> np.ndarray:
    """Families of near copies (incl. exact repeats), so chunk keys repeat in long runs."""
    rng = np.random.default_rng(seed)
    roots = rng.integers(0, 2**64, size=n_families, dtype=np.uint64)
    codes = np.repeat(roots, family_size)
    flips = rng.integers(0, max_flip + 1, size=codes.size)
    for k in np.flatnonzero(flips):
        bits = rng.choice(64, size=int(flips[k]), replace=False)
        codes[k] ^= np.uint64(sum(1 << int(b) for b in bits))
    noise = rng.integers(0, 2**64, size=codes.size // 2, dtype=np.uint64)
    return rng.permutation(np.concatenate([codes, noise]))


@pytest.mark.parametrize("max_distance", [0, 2, 5, 10])
def test_index_equals_bruteforce_with_repeated_keys_threads_and_long_chunks(max_distance: int) -> None:
    codes = _clustered_hashes(60, 12, max_distance + 2, seed=max_distance)
    expected = bruteforce_pairs(codes, max_distance)
    assert expected[0].size > 0
    plans = {None, max_distance + 1}
    if max_distance <= 2:  # 1-2 chunks of > 24 bits: binary search instead of the dense table
        plans |= {1, min(2, max_distance + 1)}
    for n_chunks in plans:
        for n_threads in (1, 2):
            got = search_pairs(codes, max_distance, n_chunks=n_chunks, n_threads=n_threads)
            for g, e in zip(got, expected, strict=True):
                np.testing.assert_array_equal(g, e)


def test_a_damaged_thumbnail_is_named_by_its_row(planted, tmp_path) -> None:
    manifest, features, _ = planted
    features = features.reset_index(drop=True)
    row = int(features.index[features["image_id"] == "p0/resized.png"][0])  # a near copy: confirmed
    features.loc[row, "thumb"] = b"\x00" * 10
    io.write_parquet(features, tmp_path / "features.parquet")
    with pytest.raises(ValueError, match=rf"features.parquet row {row}: thumb has 10 bytes, expected 1024"):
        find_duplicates(
            manifest,
            features.drop(columns=["thumb", "thumb_size"]),
            pd.DataFrame({"image_id": []}),
            DedupParams(),
            Thumbnails.from_parquet(tmp_path / "features.parquet"),
        )


def test_exact_links_one_per_pair_of_same_bytes_or_same_pixels() -> None:
    ids = ["a.png", "b.png", "c.png", "d.png", "e.png"]
    manifest = pd.DataFrame({"image_id": ids, "sha256": ["s1", "s1", "s2", "s3", "s4"], "status": "ok"})
    features = pd.DataFrame({"image_id": ids[::-1], "pixel_sha256": [None, "p2", "p2", "p1", "p1"]})
    images = ok_images(manifest, features)
    assert images["image_id"].tolist() == ids  # sorted by image_id, whatever the input order
    i, j = exact_links(images)
    # a-b share bytes and pixels (one link), c-d share only pixels, e has no pixel hash
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (2, 3)]


def test_a_missing_column_names_the_table(planted) -> None:
    manifest, features, _ = planted
    with pytest.raises(
        InputError, match=r"features: missing column\(s\) \['pixel_sha256'\]; dedup.hash_method"
    ):
        find_duplicates(
            manifest, features.drop(columns="pixel_sha256"), pd.DataFrame({"image_id": []}), DedupParams()
        )
    with pytest.raises(InputError, match=r"manifest: missing column\(s\) \['sha256'\]"):
        find_duplicates(
            manifest.drop(columns="sha256"), features, pd.DataFrame({"image_id": []}), DedupParams()
        )
