"""The demo dataset: determinism, planted counts, truth consistency, bad files, params errors."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline.demo import (
    KINDS,
    MARKED_SITE,
    generate_demo,
    make_near_duplicate,
    plan_demo,
    render_radiograph,
    sample_anatomy,
    sample_view,
)
from pipeline.demo_outliers import OUTLIER_SUBTYPES
from pipeline.params import DemoParams
from stages import demo_data


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def items_of(truth: dict, kind: str) -> list[dict]:
    return [it for it in truth["items"] if it["kind"] == kind]


def test_same_seed_gives_identical_bytes_and_different_seed_differs(tiny_demo, tmp_path, tiny_demo_params):
    params, seed = tiny_demo_params
    root, _ = tiny_demo
    again = tmp_path / "again"
    generate_demo(again, params, seed)
    assert tree_digest(again) == tree_digest(root)

    other = tmp_path / "other"
    generate_demo(other, params, seed + 1)
    assert tree_digest(other) != tree_digest(root)
    assert (other / "labels.csv").read_bytes() != (root / "labels.csv").read_bytes()


def test_stale_files_are_removed(tmp_path, tiny_demo_params):
    params = tiny_demo_params[0].model_copy(update={"n_patients": 20})
    stale = tmp_path / "images" / "p9999" / "old.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    generate_demo(tmp_path, params, 1)
    assert not stale.exists()
    listed = set(pd.read_csv(tmp_path / "labels.csv").image_path)
    on_disk = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "images").rglob("*") if p.is_file()}
    assert on_disk == listed


def test_labels_table_lists_every_file_once(tiny_demo, tiny_demo_params):
    params, seed = tiny_demo_params
    root, _ = tiny_demo
    labels = pd.read_csv(root / "labels.csv", dtype=str)
    assert list(labels.columns) == ["image_path", "label", "patient_id", "site", "sex", "age"]
    assert (labels.groupby("patient_id")[["site", "sex", "age"]].nunique() == 1).all().all()
    assert labels.image_path.is_unique
    on_disk = {p.relative_to(root).as_posix() for p in (root / "images").rglob("*") if p.is_file()}
    assert set(labels.image_path) == on_disk
    assert set(labels.label) == set(params.classes)
    assert labels.patient_id.nunique() == params.n_patients
    assert all(
        p.startswith(f"images/{pid}/{pid}_")
        for p, pid in zip(labels.image_path, labels.patient_id, strict=True)
    )
    lo, hi = params.images_per_patient_range
    assert labels.groupby("patient_id").size().between(lo, hi).all()


def test_planted_counts_and_truth_consistency(tiny_demo, tiny_demo_params):
    params, seed = tiny_demo_params
    root, truth = tiny_demo
    labels = pd.read_csv(root / "labels.csv", dtype=str).set_index("image_path")
    counts = Counter(it["kind"] for it in truth["items"])
    assert set(counts) <= set(KINDS)
    expected = {
        "exact_duplicate": params.n_exact_duplicates,
        "near_duplicate": params.n_near_duplicates,
        "cross_patient_duplicate": params.n_cross_patient_duplicates,
        "blurry": params.n_blurry,
        "dark": params.n_dark,
        "overexposed": params.n_overexposed,
        "blank": params.n_blank,
        "odd_size": params.n_odd_size,
        "odd_aspect_ratio": params.n_odd_aspect_ratio,
        "corrupt": params.n_corrupt,
        "not_an_image": params.n_not_an_image,
        "outlier": params.n_outliers_per_subtype * len(OUTLIER_SUBTYPES),
    }
    for kind, n in expected.items():
        assert counts[kind] == n, kind
    assert counts["flipped_label"] >= 1

    paths = [it["path"] for it in truth["items"]]
    assert len(paths) == len(set(paths)), "an image is at most one planted kind"
    assert paths == sorted(paths)
    assert all(p in labels.index and (root / p).is_file() for p in paths)

    sources = set()
    for it in truth["items"]:
        if it["kind"] in ("exact_duplicate", "near_duplicate", "cross_patient_duplicate"):
            src = it["source"]
            assert src not in paths, f"{it['path']}: source {src} is not a clean image"
            assert src not in sources, "one duplicate per source"
            sources.add(src)
            assert labels.loc[it["path"], "label"] == labels.loc[src, "label"]
            same_patient = labels.loc[it["path"], "patient_id"] == labels.loc[src, "patient_id"]
            assert same_patient == (it["kind"] != "cross_patient_duplicate")
            if it["kind"] != "near_duplicate":
                assert (root / it["path"]).read_bytes() == (root / src).read_bytes()
        elif it["kind"] == "outlier":
            assert it["subtype"] in OUTLIER_SUBTYPES and "source" not in it
        elif it["kind"] == "flipped_label":
            assert it["true_label"] in params.classes
            assert it["true_label"] != labels.loc[it["path"], "label"]
        else:
            assert "source" not in it


def test_near_duplicates_are_visually_the_same_image(tiny_demo):
    root, truth = tiny_demo
    for it in items_of(truth, "near_duplicate"):
        a = cv2.imread(str(root / it["path"]), cv2.IMREAD_GRAYSCALE)
        b = cv2.imread(str(root / it["source"]), cv2.IMREAD_GRAYSCALE)
        assert a is not None and b is not None
        assert (root / it["path"]).read_bytes() != (root / it["source"]).read_bytes()
        ta, tb = (
            cv2.resize(x, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64).ravel() for x in (a, b)
        )
        ta, tb = ta - ta.mean(), tb - tb.mean()
        corr = ta @ tb / np.linalg.norm(ta) / np.linalg.norm(tb)
        assert corr > 0.96, f"{it['path']} ({it['transform']}): thumbnail correlation {corr:.3f}"


def test_near_duplicate_transforms_keep_the_picture():
    rng = np.random.default_rng(0)
    img = render_radiograph(sample_anatomy(rng), sample_view(rng), "nodule", 128, 128, rng)
    for _ in range(30):
        out, ext, quality, _desc = make_near_duplicate(img, rng)
        assert ext in (".png", ".jpg") and (quality > 0) == (ext == ".jpg")
        assert out.dtype == np.uint8 and out.ndim == 2
        assert abs(out.shape[0] - 128) <= 16 and out.shape[0] == out.shape[1]


def test_bad_files_do_not_decode(tiny_demo):
    root, truth = tiny_demo
    for it in items_of(truth, "not_an_image"):
        data = (root / it["path"]).read_bytes()
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is None
        with pytest.raises(OSError):
            Image.open(io.BytesIO(data))
    for it in items_of(truth, "corrupt"):
        data = (root / it["path"]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff", "keeps a valid header"
        with Image.open(io.BytesIO(data)) as im, pytest.raises(OSError):
            im.load()


def test_defective_images_are_what_they_say(tiny_demo, tiny_demo_params):
    params, seed = tiny_demo_params
    root, truth = tiny_demo
    labels = pd.read_csv(root / "labels.csv", dtype=str)
    planted = {it["path"] for it in truth["items"]}
    marked = set(labels.image_path[labels.site == MARKED_SITE])
    clean = [cv2.imread(str(root / p), cv2.IMREAD_UNCHANGED) for p in labels.image_path if p not in planted]
    sizes = {
        p: params.image_size * 17 // 16 if p in marked else params.image_size
        for p in labels.image_path
        if p not in planted
    }
    clean_paths = [p for p in labels.image_path if p not in planted]
    assert all(
        im.shape == (sizes[p],) * 2 and im.dtype == np.uint8 for p, im in zip(clean_paths, clean, strict=True)
    )
    clean_means = np.array([im.mean() for im in clean])
    clean_sharpness = np.array([cv2.Laplacian(im.astype(np.float32), cv2.CV_32F).var() for im in clean])

    def load(kind):
        return [cv2.imread(str(root / it["path"]), cv2.IMREAD_UNCHANGED) for it in items_of(truth, kind)]

    assert max(im.mean() for im in load("dark")) < clean_means.min() / 2
    assert min(im.mean() for im in load("overexposed")) > clean_means.max()
    assert min(im.std() for im in clean) > 20 > 3 > max(im.std() for im in load("blank"))
    blurry = [cv2.Laplacian(im.astype(np.float32), cv2.CV_32F).var() for im in load("blurry")]
    assert max(blurry) < clean_sharpness.min() / 5
    for im in load("odd_size"):
        assert im.shape[0] == im.shape[1] and abs(im.shape[0] / params.image_size - 1) > 0.5
    for im in load("odd_aspect_ratio"):
        assert max(im.shape) / min(im.shape) >= 2


def test_impossible_counts_fail_with_the_key(tiny_demo_params):
    params, seed = tiny_demo_params
    with pytest.raises(ValueError, match=r"demo\.n_blurry"):
        generate_demo(Path("unused"), params.model_copy(update={"n_blurry": 200}), 0)
    with pytest.raises(ValueError, match=r"images_per_patient_range"):
        generate_demo(Path("unused"), params.model_copy(update={"images_per_patient_range": (2, 2)}), 0)
    with pytest.raises(ValueError, match="n_patients"):
        DemoParams(n_patients=10, images_per_patient_range=(1, 2))
    with pytest.raises(ValueError, match="classes"):
        DemoParams(classes=["normal", "pneumonia"])


def test_class_proportions_make_an_imbalanced_set():
    """demo.class_proportions 24:5:1 draws the classes about in that ratio (flips included); unset,
    the classes are about equal."""
    base = DemoParams(n_patients=600, images_per_patient_range=(1, 3), mixed_patient_fraction=0.1)
    imbalanced = base.model_copy(update={"class_proportions": [24.0, 5.0, 1.0]})
    counts = Counter(s.label for s in plan_demo(imbalanced, 0))
    n = sum(counts.values())
    assert counts["normal"] / n == pytest.approx(24 / 30, abs=0.05)
    assert counts["nodule"] / n == pytest.approx(5 / 30, abs=0.04)
    assert 0 < counts["effusion"] / n < 2.5 / 30
    equal = Counter(s.label for s in plan_demo(base, 0))
    assert max(equal.values()) / min(equal.values()) < 1.3
    with pytest.raises(ValueError, match="class_proportions has 2 entries but classes has 3"):
        DemoParams(class_proportions=[1.0, 2.0])


def test_stage_writes_the_dataset(tmp_path, caplog, tiny_demo_params):
    params, _ = tiny_demo_params
    params_file = tmp_path / "params.yaml"
    small = params.model_copy(update={"n_patients": 16, "n_near_duplicates": 2, "n_exact_duplicates": 2})
    raw = {"seed": 3, "data": {"root": "data/demo"}, "demo": small.model_dump(mode="json")}
    params_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "demo"
    with caplog.at_level("INFO"):
        assert demo_data.main(["--params", str(params_file), "--out", str(out)]) == 0
    assert (out / "labels.csv").is_file() and (out / "truth.json").is_file()
    assert "planted near_duplicate" in caplog.text


def test_outliers_and_the_site_shortcut_are_planted(tiny_demo, tiny_demo_params):
    params, _ = tiny_demo_params
    root, truth = tiny_demo
    labels = pd.read_csv(root / "labels.csv", dtype=str).set_index("image_path")
    subtypes = Counter(it["subtype"] for it in items_of(truth, "outlier"))
    assert subtypes == dict.fromkeys(OUTLIER_SUBTYPES, params.n_outliers_per_subtype)
    for it in items_of(truth, "outlier"):
        im = cv2.imread(str(root / it["path"]), cv2.IMREAD_UNCHANGED)
        assert im is not None and im.dtype == np.uint8
        assert (im.ndim == 3) == (it["subtype"] == "photo")
    assert truth["shortcuts"] == ["site", "width", "height", "file_size", "border_only"]
    # the marked site sees mostly the last class; the other sites do not
    share = (labels.label == params.classes[-1]).groupby(labels.site).mean()
    assert share[MARKED_SITE] > 0.6 > share.drop(MARKED_SITE).max()


def test_outlier_params_do_not_change_the_rest_of_the_demo(tmp_path, tiny_demo_params):
    params, seed = tiny_demo_params
    a = generate_demo(tmp_path / "a", params, seed)
    b = generate_demo(tmp_path / "b", params.model_copy(update={"n_outliers_per_subtype": 0}), seed)
    kinds = Counter(it["kind"] for it in b["items"])
    assert kinds == Counter(it["kind"] for it in a["items"] if it["kind"] != "outlier")
    la, lb = (pd.read_csv(tmp_path / d / "labels.csv") for d in ("a", "b"))
    planted = {it["path"] for it in a["items"] if it["kind"] == "outlier"}
    la = la[~la.image_path.isin(planted)]
    rows_a = sorted(zip(la.patient_id, la.label, la.site, strict=True))
    assert rows_a == sorted(zip(lb.patient_id, lb.label, lb.site, strict=True))


def test_dermoscopy_modality_writes_rgb_lesions_with_the_same_planted_problems(tmp_path, tiny_demo_params):
    base, seed = tiny_demo_params
    params = DemoParams(
        **{**base.model_dump(), "modality": "dermoscopy", "classes": ["naevus", "melanoma", "vascular"]}
    )
    truth = generate_demo(tmp_path, params, seed)
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert set(labels["label"]) <= {"naevus", "melanoma", "vascular"}
    kinds = Counter(it["kind"] for it in truth["items"])
    assert (
        kinds["near_duplicate"] == params.n_near_duplicates and kinds["overexposed"] == params.n_overexposed
    )
    # lesions have no orientation: no rotated or mirrored outlier is planted
    subtypes = {it["subtype"] for it in truth["items"] if it["kind"] == "outlier"}
    assert subtypes and not subtypes & {"rotated", "mirrored"}
    planted = {it["path"] for it in truth["items"]}
    clean = [p for p in labels["image_path"] if p not in planted]
    img = cv2.imread(str(tmp_path / clean[0]), cv2.IMREAD_UNCHANGED)
    assert img.ndim == 3 and img.shape[2] == 3
    assert np.abs(img[..., 2].astype(int) - img[..., 0]).mean() > 5  # colour, not gray stored as RGB


def test_modality_and_classes_must_agree():
    with pytest.raises(ValueError, match="not findings of modality 'dermoscopy'"):
        DemoParams(modality="dermoscopy")  # the chest classes are the default
    assert DemoParams(image_size=28).image_size == 28  # a low-resolution demo is allowed
