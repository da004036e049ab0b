"""Planted-defect tests for pipeline.quality (and the quality stage end to end)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.contract import QUALITY_ISSUES, flag_col, score_col
from pipeline.features import compute_features
from pipeline.params import EXCLUDABLE_ISSUES, CurateParams, QualityParams
from pipeline.quality import CHECKS, find_low_quality
from tests.helpers import default_params

PARAMS = QualityParams()


def scene(rng: np.random.Generator, h: int = 64, w: int = 64) -> np.ndarray:
    """A textured float image in [0, 1]: smooth random structure + fine texture + noise."""
    coarse = cv2.resize(
        rng.normal(0.5, 0.18, (6, 6)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    fine = cv2.resize(
        rng.normal(0, 0.08, (h // 4, w // 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR
    )
    return np.clip(coarse + fine + rng.normal(0, 0.02, (h, w)), 0.02, 0.98)


def to_uint(img: np.ndarray, max_value: int = 255) -> np.ndarray:
    dtype = np.uint8 if max_value <= 255 else np.uint16
    return np.rint(np.clip(img, 0, 1) * max_value).astype(dtype)


def score(images: dict[str, np.ndarray], bit_depth: int = 8) -> pd.DataFrame:
    rows, manifest = [], []
    for image_id, pixels in images.items():
        rows.append({"image_id": image_id, **compute_features(pixels, bit_depth)})
        manifest.append(
            {"image_id": image_id, "width": pixels.shape[1], "height": pixels.shape[0], "status": "ok"}
        )
    return find_low_quality(pd.DataFrame(rows), pd.DataFrame(manifest), PARAMS).set_index("image_id")


def flagged(quality: pd.DataFrame) -> dict[str, set[str]]:
    """image_id -> set of issues flagged (only images with at least one)."""
    out = {}
    for image_id, row in quality.iterrows():
        issues = {i for i in CHECKS if row[flag_col(i)]}
        if issues:
            out[image_id] = issues
    return out


def clean_set(n: int, seed: int = 0, h: int = 64, w: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"clean_{i:02d}.png": to_uint(scene(rng, h, w)) for i in range(n)}


def test_planted_defects_flag_exactly_those():
    rng = np.random.default_rng(1)
    images = clean_set(40)
    base = scene(rng)
    gray = to_uint(base)
    color = np.stack([base, np.clip(base * 0.6, 0, 1), np.clip(1 - base, 0, 1)], axis=2)
    images |= {
        "dark.png": to_uint(base * 0.12),
        "overexposed.png": to_uint(base * 2.0 + 0.45),
        "blurry.png": cv2.GaussianBlur(gray, (0, 0), 3.0),
        "blank.png": to_uint(np.full((64, 64), 0.5) + rng.normal(0, 0.002, (64, 64))),
        "low_contrast.png": to_uint(0.5 + (base - 0.5) * 0.15),
        "odd_size.png": to_uint(scene(rng, 200, 200)),
        "odd_aspect.png": to_uint(scene(rng, 40, 110)),
        "color.png": to_uint(color),
        "gray_as_rgb.png": np.repeat(gray[:, :, None], 3, axis=2),
    }
    found = flagged(score(images))
    assert found == {
        "dark.png": {"dark"},
        "overexposed.png": {"overexposed"},
        "blurry.png": {"blurry"},
        "blank.png": {"low_information", "low_contrast"},
        "low_contrast.png": {"low_contrast"},
        "odd_size.png": {"odd_size"},
        "odd_aspect.png": {"odd_aspect_ratio"},
        "color.png": {"channel_mismatch"},
        "gray_as_rgb.png": {"channel_mismatch"},
    }


def test_scores_in_unit_interval_and_flags_follow_thresholds():
    images = clean_set(12)
    images["dark.png"] = (images["clean_00.png"] // 10).astype(np.uint8)
    q = score(images)
    for issue in CHECKS:
        s = q[score_col(issue)]
        assert s.between(0, 1).all(), issue
        assert (q[flag_col(issue)] == (s < getattr(PARAMS, f"{issue}_threshold"))).all()
    assert q.loc["dark.png", score_col("dark")] < q[score_col("dark")].drop("dark.png").min()


@pytest.mark.parametrize("max_value", [4095, 65535])
def test_16bit_dataset_not_flagged_wholesale(max_value):
    rng = np.random.default_rng(2)
    images = {f"img_{i}.png": to_uint(scene(rng), max_value) for i in range(20)}
    images["dark.png"] = to_uint(scene(rng) * 0.1, max_value)
    assert flagged(score(images, bit_depth=16)) == {"dark.png": {"dark"}}


def test_uniformly_dark_modality_not_flagged_wholesale():
    rng = np.random.default_rng(3)
    images = {f"img_{i}.png": to_uint(scene(rng) * 0.3) for i in range(24)}
    assert flagged(score(images)) == {}


def test_near_black_caught_even_when_the_whole_dataset_is_near_black():
    rng = np.random.default_rng(4)
    images = {f"img_{i}.png": to_uint(scene(rng) * 0.03) for i in range(8)}
    found = flagged(score(images))
    assert set(found) == set(images)
    assert all("dark" in issues for issues in found.values())


def test_strong_blur_on_large_images_is_caught():
    rng = np.random.default_rng(5)
    images = {f"img_{i}.png": to_uint(scene(rng, 1024, 1024)) for i in range(10)}
    images["blurry.png"] = cv2.GaussianBlur(images["img_0.png"], (0, 0), 8.0)
    assert flagged(score(images)) == {"blurry.png": {"blurry"}}


def test_one_pixel_size_differences_not_flagged():
    rng = np.random.default_rng(6)
    shapes = [(64, 64)] * 14 + [(65, 64), (64, 63), (63, 63), (66, 65)]
    images = {f"img_{i}.png": to_uint(scene(rng, h, w)) for i, (h, w) in enumerate(shapes)}
    q = score(images)
    assert not q[flag_col("odd_size")].any()
    assert not q[flag_col("odd_aspect_ratio")].any()


def test_rgb_dataset_flags_the_grayscale_image():
    rng = np.random.default_rng(7)
    images = {}
    for i in range(12):
        b = scene(rng)
        images[f"rgb_{i}.png"] = to_uint(
            np.stack([b, np.clip(b * 0.7 + 0.1, 0, 1), np.clip(b * 0.5, 0, 1)], 2)
        )
    images["gray.png"] = to_uint(scene(rng))
    assert flagged(score(images)) == {"gray.png": {"channel_mismatch"}}


def test_missing_columns_and_unknown_images_are_errors():
    images = clean_set(3)
    rows = [{"image_id": k, **compute_features(v, 8)} for k, v in images.items()]
    manifest = pd.DataFrame({"image_id": list(images)[:2], "width": 64, "height": 64})
    with pytest.raises(ValueError, match="no ok manifest row"):
        find_low_quality(pd.DataFrame(rows), manifest, PARAMS)
    with pytest.raises(ValueError, match="missing column"):
        find_low_quality(pd.DataFrame(rows).drop(columns=["entropy"]), manifest, PARAMS)


def test_stage_writes_outputs(tmp_path):
    from pipeline.io import write_parquet
    from stages import quality as stage

    pytest.importorskip("pipeline.images")
    root = tmp_path / "data"
    images = clean_set(10)
    images["dark.png"] = (images["clean_00.png"] // 10).astype(np.uint8)
    rows, manifest = [], []
    for name, px in images.items():
        (root / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / name), px)
        rel = f"images/{name}"
        rows.append({"image_id": rel, **compute_features(px, 8)})
        manifest.append({"image_id": rel, "path": rel, "width": 64, "height": 64, "channels": 1,
                         "bit_depth": 8, "status": "ok"})  # fmt: skip
    manifest.append({"image_id": "images/bad.png", "path": "images/bad.png", "width": 0, "height": 0,
                     "channels": 0, "bit_depth": 0, "status": "rejected"})  # fmt: skip
    write_parquet(pd.DataFrame(rows), tmp_path / "features.parquet")
    write_parquet(pd.DataFrame(manifest), tmp_path / "manifest.parquet")
    params = default_params()
    params["data"]["root"] = str(root)
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    rc = stage.main([
        "--params", str(tmp_path / "params.yaml"), "--manifest", str(tmp_path / "manifest.parquet"),
        "--features", str(tmp_path / "features.parquet"), "--out", str(tmp_path / "quality.parquet"),
        "--sheets", str(tmp_path / "sheets"), "--metrics", str(tmp_path / "quality.json"),
    ])  # fmt: skip
    assert rc == 0
    metrics = json.loads((tmp_path / "quality.json").read_text())
    assert metrics["n_images"] == 11
    assert metrics["flagged"]["dark"] == 1
    q = pd.read_parquet(tmp_path / "quality.parquet")
    assert q.loc[q[flag_col("dark")], "image_id"].tolist() == ["images/dark.png"]
    assert sorted(p.name for p in (tmp_path / "sheets").iterdir()) == sorted(f"{i}.png" for i in CHECKS)


def test_checks_thresholds_and_curate_options_share_the_one_issue_list():
    """pipeline.contract.QUALITY_ISSUES is the vocabulary: a check, a threshold or a curate option
    that is added, renamed or dropped in one place and not the others fails here."""
    assert tuple(CHECKS) == QUALITY_ISSUES  # same names, same order (columns, reasons)
    thresholds = [
        k.removesuffix("_threshold") for k in QualityParams.model_fields if k.endswith("_threshold")
    ]
    assert sorted(thresholds) == sorted(QUALITY_ISSUES)
    assert set(CurateParams().exclude_issues) <= set(QUALITY_ISSUES)
    # curate can exclude every quality issue, and outliers (the outliers stage's one issue)
    assert CurateParams(exclude_issues=list(QUALITY_ISSUES)).exclude_issues == list(QUALITY_ISSUES)
    assert set(EXCLUDABLE_ISSUES) == {*QUALITY_ISSUES, "outlier"}
    with pytest.raises(ValueError, match=r"unknown issue\(s\) \['noisy'\]"):
        CurateParams(exclude_issues=["dark", "noisy"])
    q = score(clean_set(4))
    issue_columns = [c for c in q.columns if c.endswith("_score") or c.endswith("_issue")]
    assert issue_columns == [c for x in QUALITY_ISSUES for c in (score_col(x), flag_col(x))]
