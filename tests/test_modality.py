"""One modality mechanism (issue 17 items 8 and 10): inferred from the images, per-modality quality
checks (a bright colour photograph is overexposed only when it clips), a warning for an
augmentation domain made for the other modality, and exclusions that fall on one class reported."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.accounting import class_losses
from pipeline.demo_dermoscopy import render_lesion, sample_lesion, sample_skin
from pipeline.features import compute_features
from pipeline.modality import domain_mismatch, resolve_modality
from pipeline.params import QualityParams
from pipeline.quality import find_low_quality
from pipeline.report import AuditInputs, build_report


def _features(images: dict[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    feats = pd.DataFrame([{"image_id": k, **compute_features(v, 8)} for k, v in images.items()])
    manifest = pd.DataFrame(
        [
            {"image_id": k, "width": v.shape[1], "height": v.shape[0], "status": "ok"}
            for k, v in images.items()
        ]
    )
    return feats, manifest


def _photos(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"img{k:02d}": render_lesion(sample_skin(rng), sample_lesion(rng), "naevus", 64, 64, rng)
        for k in range(n)
    }


def test_modality_is_inferred_from_the_images_and_a_disagreeing_setting_is_warned_about() -> None:
    colour, _ = _features(_photos(6, seed=1))
    gray, _ = _features({k: v.mean(axis=2).astype(np.uint8) for k, v in _photos(6, seed=2).items()})
    as_rgb, _ = _features(
        {k: np.repeat(v.mean(axis=2, keepdims=True), 3, 2).astype(np.uint8) for k, v in _photos(6, 3).items()}
    )
    assert resolve_modality("auto", colour)["modality"] == "colour"
    assert resolve_modality("auto", gray)["modality"] == "gray"
    assert resolve_modality("auto", as_rgb)["modality"] == "gray"  # gray stored as RGB is gray
    assert resolve_modality("auto", colour)["warnings"] == []
    set_gray = resolve_modality("gray", colour)
    assert set_gray["modality"] == "gray" and set_gray["inferred"] == "colour"
    assert "data.modality is 'gray'" in set_gray["warnings"][0]


def test_an_augmentation_domain_for_the_other_modality_is_a_warning() -> None:
    assert "chest_xray" in domain_mismatch("chest_xray", "colour")
    assert "dermoscopy" in domain_mismatch("dermoscopy", "gray")
    assert domain_mismatch("dermoscopy", "colour") is None
    assert domain_mismatch("chest_xray", "gray") is None
    assert domain_mismatch("generic", "colour") is None


def test_a_bright_unclipped_photograph_is_overexposed_only_under_the_gray_rules() -> None:
    images = _photos(30, seed=4)
    base = images["img00"].astype(np.float32)
    # brighter than every other image, yet nothing clips (max < 250 of 255)
    images["bright"] = np.rint(245.0 - (245.0 - np.minimum(base, 245.0)) * 0.25).astype(np.uint8)
    # burnt out: most of the image at white
    images["clipped"] = np.clip(base * 1.8 + 110, 0, 255).astype(np.uint8)
    feats, manifest = _features(images)
    assert feats.set_index("image_id").loc["bright", "p99"] < 250 / 255
    gray_rules = find_low_quality(feats, manifest, QualityParams(), "gray").set_index("image_id")
    colour_rules = find_low_quality(feats, manifest, QualityParams(), "colour").set_index("image_id")
    assert gray_rules.loc["bright", "is_overexposed_issue"]  # the radiograph rule: brighter than the rest
    assert not colour_rules.loc["bright", "is_overexposed_issue"]
    assert (
        colour_rules.loc["clipped", "is_overexposed_issue"]
        and gray_rules.loc["clipped", "is_overexposed_issue"]
    )
    assert set(colour_rules.index[colour_rules["is_overexposed_issue"]]) == {"clipped"}


def _states(excluded: dict[str, int], n: dict[str, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, final = [], []
    for label, count in n.items():
        for k in range(count):
            image_id = f"{label}{k}"
            rows.append({"image_id": image_id, "label": label, "status": "ok"})
            final.append(
                {"image_id": image_id, "final_state": "excluded" if k < excluded[label] else "train"}
            )
    rows.append({"image_id": "bad", "label": "b", "status": "rejected"})
    final.append({"image_id": "bad", "final_state": "excluded"})
    return pd.DataFrame(final), pd.DataFrame(rows)


def test_exclusions_that_fall_on_one_class_are_counted_and_named() -> None:
    final, manifest = _states({"a": 3, "b": 12, "c": 2}, {"a": 60, "b": 40, "c": 50})
    out = class_losses(final, manifest)
    assert out["excluded_by_class"]["b"] == {"n_images": 40, "n_excluded": 12, "share_excluded": 0.3}
    assert (
        len(out["class_loss_warnings"]) == 1 and "class 'b' loses 12 of 40" in out["class_loss_warnings"][0]
    )
    even, manifest = _states({"a": 6, "b": 4, "c": 5}, {"a": 60, "b": 40, "c": 50})
    assert class_losses(even, manifest)["class_loss_warnings"] == []


def test_the_report_carries_the_modality_and_the_warnings() -> None:
    final, manifest = _states({"a": 3, "b": 12}, {"a": 60, "b": 40})
    acc = {"n_files": 101, **class_losses(final, manifest)}
    quality = {
        "n_images": 100, "flagged": {},
        "modality": {"modality": "colour", "param": "auto", "colour_share": 0.98, "n_images": 100},
        "warnings": [domain_mismatch("chest_xray", "colour")],
    }  # fmt: skip
    page = build_report(AuditInputs(accounting=acc, quality_metrics=quality))
    top = page[: page.index("<nav>")]
    assert "augment.domain is &#x27;chest_xray&#x27;" in top and "class &#x27;b&#x27; loses 12 of 40" in top
    assert "Modality: <b>colour</b> (inferred from the images" in page
    assert "Exclusions per class" in page
