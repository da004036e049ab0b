"""Label-issue finding: group-aware out-of-fold predicted probabilities + cleanlab.

Why our own folds: cleanlab's built-in cross-validation splits rows at random, so images of one
patient (or one near-duplicate group) land in both the fitting and the held-out part of a fold;
the auditor then "remembers" the patient and its out-of-fold probabilities agree with the given
label even when it is wrong. Folds here are grouped by ``group_id`` (``StratifiedGroupKFold``).

Two auditor models produce the out-of-fold probabilities:

- ``linear``: cheap hand-made image features (downsampled normalized pixels, HOG, intensity
  quantiles, radial/regional profile, blob responses, bright spots inside enclosed dark fields
  such as lungs) -> standardization -> logistic regression.
  CPU-friendly; seconds on a few thousand 64x64 images.
- ``cnn``: the training architecture (``pipeline.models.build_model``) trained per fold by
  ``pipeline.train.fit_model`` with a short schedule (:func:`auditor_config`), no augmentation, no mixup and no label
  smoothing (soft or mixed targets would blur exactly the disagreement we look for).

``auto`` picks ``cnn`` when CUDA is available, or on CPU when the CNN work
(``n_images * n_folds * cnn_epochs * (image_size / 64) ** 2``) is at most
``cnn_cpu_budget``; otherwise ``linear`` (see :func:`choose_auditor`).

Then ``cleanlab.filter.find_label_issues`` flags the issues and
``cleanlab.rank.get_label_quality_scores`` scores every audited image (in [0, 1], lower is
worse). Images in a duplicate cluster whose members carry different labels are reported too,
with reason ``duplicate_label_conflict`` (whether or not they reached the processed arrays).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
import pandas as pd
import skimage.feature
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from pipeline.errors import InputError
from pipeline.params import LabelIssuesParams, Params
from pipeline.processed import Normalizer

if TYPE_CHECKING:  # torch stays out of the import when the linear auditor is used
    from pipeline.train import TrainConfig

log = logging.getLogger(__name__)

REASON_OOF = "out_of_fold"
REASON_CONFLICT = "duplicate_label_conflict"
QUALITY_METHOD = "self_confidence"
# Flag only what both of cleanlab's pruning rules agree on (per-class and per-noise-rate counts):
# fewer false alarms on classes the auditor finds hard, at almost no cost in recall.
FILTER_BY = "both"

LABEL_ISSUE_COLUMNS = [
    "image_id",
    "split",
    "given_label",
    "suggested_label",
    "label_quality",
    "rank",
    "is_label_issue",
    "is_dropped",
    "reason",
]
CSV_COLUMNS = ["image_id", "split", "given_label", "suggested_label", "label_quality", "rank", "reason"]

Normalize = Callable[[np.ndarray], np.ndarray]
"""Maps a uint NHWC batch to the float NHWC batch the models see (the fitted train normalizer)."""


# --------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------


def make_group_folds(
    labels: np.ndarray, groups: Sequence[str] | np.ndarray, n_folds: int, seed: int
) -> np.ndarray:
    """Assign every row to one of ``n_folds`` folds, never splitting a group.

    Stratified by label as far as the groups allow (``StratifiedGroupKFold`` with shuffling).

    Args:
        labels: Integer class index per row, shape (N,).
        groups: Leakage group per row (``group_id``), shape (N,).
        n_folds: Wanted number of folds (>= 2). Lowered, with a warning, to the number of
            distinct groups when there are fewer groups than folds.
        seed: Seed of the fold shuffle.

    Returns:
        int64 array (N,) with the fold index of each row, in ``0 .. n_folds_used - 1``.

    Raises:
        ValueError: On length mismatch or when there are fewer than 2 groups.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object)
    if labels.shape[0] != groups.shape[0]:
        raise ValueError(
            f"labels and groups must have the same length, got {labels.shape[0]} and {groups.shape[0]}"
        )
    n_groups = len(pd.unique(groups))
    if n_groups < 2:
        raise InputError(
            f"label_issues: need at least 2 groups (group_id) for out-of-fold predictions, got {n_groups}"
        )
    if n_groups < n_folds:
        log.warning("only %d groups for n_folds=%d; using %d folds", n_groups, n_folds, n_groups)
        n_folds = n_groups
    splitter: StratifiedGroupKFold | GroupKFold
    if (np.unique(labels, return_counts=True)[1] < n_folds).all():
        # Every class is smaller than the number of folds: stratification is impossible.
        splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    else:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(labels.shape[0], -1, dtype=np.int64)
    with warnings.catch_warnings():
        # "The least populated class has only k members" is expected for tiny classes.
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            folds[held_out] = k
    return folds


# --------------------------------------------------------------------------------------------
# Linear auditor: features + logistic regression
# --------------------------------------------------------------------------------------------

N_RINGS = 8
N_GRID = 4


def _radial_index(size: int, n_rings: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = (size - 1) / 2
    r = np.sqrt((yy - c) ** 2 + (xx - c) ** 2) / (c * np.sqrt(2) + 1e-6)
    return np.minimum((r * n_rings).astype(np.int64), n_rings - 1)


_FIELD_SE = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (25, 25))


def _dark_fields(img: np.ndarray) -> np.ndarray:
    """Mask of enclosed dark fields (e.g. lung fields in a radiograph) of a 64x64 image.

    A black top-hat finds dark basins narrower than the structuring element; components that
    touch the border (background outside the body) are dropped.
    """
    smooth = cv2.GaussianBlur(img, (0, 0), 2)
    hat = cv2.morphologyEx(smooth, cv2.MORPH_BLACKHAT, _FIELD_SE)
    mask = (hat > 0.2 * max(float(hat.max()), 1e-6)).astype(np.uint8)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    h, w = mask.shape
    x, y, cw, ch, area = (stats[:, i] for i in range(5))
    keep = (x > 0) & (y > 0) & (x + cw < w) & (y + ch < h) & (area >= 20)
    keep[0] = False
    return keep[comp]


def _field_blobs(img: np.ndarray) -> list[float]:
    """Bright-blob strength inside the dark fields: nodule-like spots in lung fields.

    The blob measure is minus the larger Hessian eigenvalue (scale-normalized): large only where
    the image curves down in every direction (a spot), near zero along ridges such as ribs.
    """
    z = (img - img.mean()) / (img.std() + 1e-6)
    mask = _dark_fields(z)
    if mask.sum() < 10:
        mask = np.ones_like(mask)
    out = [float(mask.mean())]
    for sigma in (1.0, 1.5, 2.0):
        g = cv2.GaussianBlur(z, (0, 0), sigma)
        hxx = cv2.Sobel(g, cv2.CV_32F, 2, 0, ksize=3)
        hyy = cv2.Sobel(g, cv2.CV_32F, 0, 2, ksize=3)
        hxy = cv2.Sobel(g, cv2.CV_32F, 1, 1, ksize=3)
        half_trace = (hxx + hyy) / 2
        lmax = half_trace + np.sqrt(np.maximum(half_trace**2 - (hxx * hyy - hxy**2), 0))
        strength = np.sort(np.maximum(-lmax, 0)[mask])[::-1] * sigma**2
        dog = np.sort((g - cv2.GaussianBlur(z, (0, 0), 2.5 * sigma))[mask])[::-1]
        out += [strength[0], strength[:3].mean(), strength[:10].mean(), dog[0], dog[:3].mean()]
    return out


def _image_features(gray: np.ndarray, rings: np.ndarray) -> np.ndarray:
    """Features of one normalized grayscale image (float32 HxW, resized to 64x64)."""
    img = cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA)
    small = cv2.resize(img, (16, 16), interpolation=cv2.INTER_AREA).ravel()
    # HOG on a 32x32 copy: 3x3 blocks of 2x2 cells of 8 px, 9 orientations (324 values).
    hog = skimage.feature.hog(
        cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA),
        orientations=9,
        pixels_per_cell=(8, 8),
        cells_per_block=(2, 2),
        feature_vector=True,
    )
    quantiles = np.percentile(img, [1, 5, 10, 25, 50, 75, 90, 95, 99])
    ring_sum = np.bincount(rings.ravel(), weights=img.ravel(), minlength=N_RINGS)
    ring_n = np.bincount(rings.ravel(), minlength=N_RINGS)
    radial = ring_sum / np.maximum(ring_n, 1)
    grid = img.reshape(N_GRID, 64 // N_GRID, N_GRID, 64 // N_GRID)
    regional = np.concatenate([grid.mean(axis=(1, 3)).ravel(), grid.std(axis=(1, 3)).ravel()])
    # Blob responses (difference of Gaussians) at a few scales: position-invariant evidence of
    # small bright/dark spots such as nodules.
    blobs = []
    for sigma in (1.5, 3.0, 6.0):
        dog = cv2.GaussianBlur(img, (0, 0), sigma) - cv2.GaussianBlur(img, (0, 0), 2 * sigma)
        blobs.extend(
            [dog.max(), dog.min(), np.abs(dog).mean(), np.percentile(dog, 99), np.percentile(dog, 1)]
        )
    blobs.extend(_field_blobs(img))
    lap = cv2.Laplacian(img, cv2.CV_32F)
    texture = [img.std(), np.abs(lap).mean(), lap.std()]
    return np.concatenate(
        [small, hog, quantiles, radial, regional, np.asarray(blobs), np.asarray(texture)]
    ).astype(np.float32)


def extract_features(
    images: np.ndarray, normalize: Normalize | None = None, batch_size: int = 256
) -> np.ndarray:
    """Compute the linear auditor's features for every image.

    Args:
        images: NHWC array (uint8/uint16, C = 1 or 3); may be a memmap, read in batches.
        normalize: The fitted normalizer (uint NHWC -> float NHWC); ``None`` scales to [0, 1].
        batch_size: Images normalized at a time (bounds memory).

    Returns:
        float32 array (N, F); F does not depend on the input size or channels.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, H, W, C), got {images.shape}")
    rings = _radial_index(64, N_RINGS)
    out = []
    for start in tqdm(range(0, images.shape[0], batch_size), desc="label_issues features", leave=False):
        batch = np.asarray(images[start : start + batch_size])
        if normalize is not None:
            x = np.asarray(normalize(batch), dtype=np.float32)
        else:
            x = batch.astype(np.float32) / float(
                np.iinfo(batch.dtype).max if batch.dtype.kind == "u" else 1.0
            )
        gray = x.mean(axis=3)
        out.extend(_image_features(np.ascontiguousarray(g), rings) for g in gray)
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.stack(out)


def _full_proba(proba: np.ndarray, seen: np.ndarray, n_classes: int) -> np.ndarray:
    """Expand probabilities over the classes a fold's model saw to all ``n_classes`` columns."""
    full = np.zeros((proba.shape[0], n_classes), np.float64)
    full[:, seen] = proba
    return full


def oof_linear(
    features: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    n_classes: int,
    c: float = 0.01,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold probabilities of a standardized logistic regression.

    Args:
        features: (N, F) features from :func:`extract_features`.
        labels: (N,) class indices.
        folds: (N,) fold index per row (:func:`make_group_folds`).
        n_classes: K; classes absent from a fold's fitting part get probability 0 there.
        c: Inverse L2 regularization strength of the logistic regression.
        seed: Seed of the solver (lbfgs is deterministic; kept for solver changes).

    Returns:
        float64 (N, K) probabilities, rows summing to 1.
    """
    pred = np.zeros((features.shape[0], n_classes), np.float64)
    for k in np.unique(folds):
        held = folds == k
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
        model.fit(features[~held], labels[~held])
        pred[held] = _full_proba(model.predict_proba(features[held]), model[-1].classes_, n_classes)
    return pred


# --------------------------------------------------------------------------------------------
# CNN auditor
# --------------------------------------------------------------------------------------------


def oof_cnn(
    images: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    n_classes: int,
    normalizer: Normalizer,
    *,
    arch: str,
    width: int,
    dropout: float,
    config: TrainConfig,
    device: str,
    seed: int,
) -> np.ndarray:
    """Out-of-fold probabilities of the training architecture, trained briefly per fold.

    No augmentation, mixup or label smoothing; no early stopping (the held-out fold is never
    used for model selection, so its probabilities stay honest).

    Args:
        images: NHWC uint array (N, H, W, C).
        labels: (N,) class indices.
        folds: (N,) fold index per row.
        n_classes: K.
        normalizer: The fitted train normalizer.
        arch, width, dropout: ``params.model``.
        config: The short training schedule (:func:`auditor_config`); its seed is replaced per fold.
        device: "cpu", "cuda" or "mps".
        seed: Base seed; fold k uses ``seed + k``.

    Returns:
        float64 (N, K) probabilities.
    """
    import torch

    from pipeline.inference import predict_proba
    from pipeline.models import build_model
    from pipeline.train import fit_model

    pred = np.zeros((images.shape[0], n_classes), np.float64)
    for k in tqdm(np.unique(folds), desc="label_issues cnn folds", leave=False):
        held = np.flatnonzero(folds == k)
        fit = np.flatnonzero(folds != k)
        fold_seed = int(seed) + int(k)
        torch.manual_seed(fold_seed)  # initial weights: fit_model leaves them to the caller
        model = build_model(
            arch, in_channels=images.shape[3], n_classes=n_classes, width=width, dropout=dropout
        )
        fold_config = dataclasses.replace(config, seed=fold_seed)
        model = fit_model(model, np.asarray(images[fit]), labels[fit], normalizer, fold_config, device=device)
        pred[held] = predict_proba(
            model, np.asarray(images[held]), normalizer, device, config.eval_batch_size
        )
    return pred


def auditor_config(params: Params) -> TrainConfig:
    """The CNN auditor's short schedule: ``label_issues.cnn_epochs`` epochs with the train stage's
    batch size, learning rate and weight decay, and no mixup, cutmix or label smoothing (soft or
    mixed targets would blur the very disagreement we look for)."""
    from pipeline.train import TrainConfig

    epochs = params.label_issues.cnn_epochs
    t = params.train
    return TrainConfig(
        epochs=epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        weight_decay=t.weight_decay,
        warmup_epochs=1 if epochs > 2 else 0,
        seed=params.seed,
    )


def choose_auditor(
    requested: Literal["auto", "cnn", "linear"],
    n_images: int,
    image_size: int,
    n_folds: int,
    cnn_epochs: int,
    has_cuda: bool,
    cnn_cpu_budget: int,
) -> Literal["cnn", "linear"]:
    """Resolve ``auditor: auto``.

    ``cnn`` when CUDA is available; on CPU ``cnn`` only when the CNN work in 64x64-image-epochs,
    ``n_images * n_folds * cnn_epochs * (image_size / 64) ** 2``, is at most ``cnn_cpu_budget``
    (0 = never on CPU); otherwise ``linear``. An explicit ``cnn``/``linear`` is returned as is.
    """
    if requested != "auto":
        return requested
    if has_cuda:
        return "cnn"
    work = n_images * n_folds * cnn_epochs * (image_size / 64) ** 2
    return "cnn" if work <= cnn_cpu_budget else "linear"


# --------------------------------------------------------------------------------------------
# cleanlab and the report table
# --------------------------------------------------------------------------------------------


def rank_label_issues(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flag label issues with confident learning and score every row.

    Args:
        labels: (N,) given class indices.
        pred_probs: (N, K) out-of-fold probabilities.

    Returns:
        ``(is_issue, quality)``: bool (N,) from ``cleanlab.filter.find_label_issues``
        (``filter_by="both"``: prune_by_class and prune_by_noise_rate agree) and float (N,) self-confidence quality in [0, 1]
        from ``cleanlab.rank.get_label_quality_scores`` (lower = more likely mislabelled).
    """
    n = labels.shape[0]
    if n == 0:
        return np.zeros(0, bool), np.zeros(0, float)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*too few examples.*")
        issue_idx = find_label_issues(
            labels, pred_probs, filter_by=FILTER_BY, return_indices_ranked_by=QUALITY_METHOD, n_jobs=1
        )
    is_issue = np.zeros(n, bool)
    is_issue[np.asarray(issue_idx, dtype=np.int64)] = True
    quality = get_label_quality_scores(labels, pred_probs, method=QUALITY_METHOD)
    return is_issue, np.asarray(quality, dtype=np.float64)


def label_conflicts(duplicates: pd.DataFrame, labels: Mapping[str, str]) -> pd.DataFrame:
    """Images of duplicate clusters whose members carry different labels.

    Args:
        duplicates: ``duplicates.parquet`` (image_id, cluster_id, is_label_conflict, ...).
        labels: image_id -> given label (from the manifest).

    Returns:
        DataFrame (image_id, given_label, suggested_label, label_quality): suggested_label is
        the most common label among the *other* members of the cluster (ties: alphabetical),
        label_quality the fraction of the other members that agree with the image's own label.
    """
    cols = ["image_id", "given_label", "suggested_label", "label_quality"]
    if duplicates.empty or "is_label_conflict" not in duplicates:
        return pd.DataFrame(columns=cols)
    conf = duplicates.loc[duplicates["is_label_conflict"].astype(bool), ["image_id", "cluster_id"]]
    rows = []
    for _, members in conf.groupby("cluster_id", sort=True):
        ids = [i for i in members["image_id"].astype(str) if i in labels]
        for image_id in ids:
            own = labels[image_id]
            others = pd.Series([labels[i] for i in ids if i != image_id], dtype=object)
            if others.empty:
                continue
            counts = others.value_counts()
            best = sorted(counts.index[counts == counts.max()])
            suggested = next((c for c in best if c != own), best[0])
            rows.append((image_id, own, suggested, float((others == own).mean())))
    return pd.DataFrame(rows, columns=cols)


def build_label_issue_table(
    index: pd.DataFrame,
    classes: Sequence[str],
    pred_probs: np.ndarray,
    is_issue: np.ndarray,
    quality: np.ndarray,
    conflicts: pd.DataFrame,
    split_of: Mapping[str, str],
    action: Literal["flag", "drop"],
) -> pd.DataFrame:
    """Assemble ``label_issues.parquet``: one row per audited image plus conflict-only rows.

    Args:
        index: Audited rows in order: image_id, split, label_index.
        classes: Class names by index.
        pred_probs, is_issue, quality: Aligned with ``index``.
        conflicts: From :func:`label_conflicts`.
        split_of: image_id -> split for every image in the processed data (conflict rows
            that are not there get split "").
        action: ``flag`` or ``drop``; with ``drop`` flagged train rows get ``is_dropped``.

    Returns:
        DataFrame with :data:`LABEL_ISSUE_COLUMNS`, sorted by rank. ``rank`` is 1..n over all
        rows: issues first (lowest label_quality first), then the rest by label_quality.
    """
    classes = list(classes)
    given = np.asarray(index["label_index"], dtype=np.int64)
    audited = pd.DataFrame(
        {
            "image_id": index["image_id"].astype(str).to_numpy(),
            "split": index["split"].astype(str).to_numpy(),
            "given_label": [classes[i] for i in given],
            "suggested_label": [classes[i] for i in pred_probs.argmax(axis=1)] if len(given) else [],
            "label_quality": quality,
            "is_label_issue": is_issue,
            "reason": np.where(is_issue, REASON_OOF, ""),
        }
    )
    conflicts = conflicts.copy()
    in_audit = conflicts["image_id"].isin(audited["image_id"])
    # Audited images in a conflicting cluster: keep the model's numbers, add the reason.
    both = audited["image_id"].isin(conflicts["image_id"])
    audited.loc[both, "reason"] = [
        f"{r};{REASON_CONFLICT}" if r else REASON_CONFLICT for r in audited.loc[both, "reason"]
    ]
    audited.loc[both, "is_label_issue"] = True
    extra = conflicts.loc[~in_audit].assign(
        split=lambda d: [split_of.get(i, "") for i in d["image_id"]],
        is_label_issue=True,
        reason=REASON_CONFLICT,
    )
    table = pd.concat([audited, extra[audited.columns]], ignore_index=True) if len(extra) else audited
    table["is_label_issue"] = table["is_label_issue"].astype(bool)
    table["label_quality"] = table["label_quality"].astype(np.float64)
    table = table.sort_values(
        ["is_label_issue", "label_quality", "image_id"], ascending=[False, True, True], kind="mergesort"
    ).reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1, dtype=np.int64)
    table["is_dropped"] = table["is_label_issue"] & (table["split"] == "train") & (action == "drop")
    return table[LABEL_ISSUE_COLUMNS]


def auditor_strength(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    is_issue: np.ndarray,
    classes: Sequence[str],
    params: LabelIssuesParams,
) -> dict[str, Any]:
    """How far the audit can be trusted: a near-chance auditor, or one that flags a class wholesale,
    says more about the auditor than about the labels.

    Args:
        labels: (N,) given class indices of the audited images.
        pred_probs: (N, K) out-of-fold probabilities.
        is_issue: (N,) cleanlab's verdict.
        classes: Class names (K).
        params: The ``label_issues`` params (``min_auditor_lift``, ``max_class_flag_share``).

    Returns:
        ``oof_balanced_accuracy``, ``chance`` (1/K), ``auditor_lift`` = (balanced accuracy - chance) /
        (1 - chance), ``classes_flagged_wholesale`` (share of their audited images flagged above
        ``max_class_flag_share``), ``is_auditor_weak`` and ``warnings`` (sentences for the log and report).
    """
    k = len(classes)
    chance = 1.0 / k
    present = [c for c in range(k) if (labels == c).any()]
    recalls = [float((pred_probs[labels == c].argmax(axis=1) == c).mean()) for c in present]
    bacc = float(np.mean(recalls)) if recalls else None
    lift = (bacc - chance) / (1.0 - chance) if bacc is not None else None
    shares = {classes[c]: float(is_issue[labels == c].mean()) for c in present}
    wholesale = sorted(c for c, share in shares.items() if share > params.max_class_flag_share)
    warnings_: list[str] = []
    if lift is not None and lift < params.min_auditor_lift:
        warnings_.append(
            f"the auditor is weak: out-of-fold balanced accuracy {bacc:.3f} against chance {chance:.3f} "
            f"(lift {lift:.2f} < label_issues.min_auditor_lift {params.min_auditor_lift}); its flags say more "
            "about the auditor than about the labels"
        )
    for c in wholesale:
        warnings_.append(
            f"class {c!r} is flagged wholesale: {shares[c]:.0%} of its audited images "
            f"(> label_issues.max_class_flag_share {params.max_class_flag_share}); the auditor has not learned it"
        )
    return {
        "oof_balanced_accuracy": bacc,
        "chance": chance,
        "auditor_lift": lift,
        "flagged_share_per_class": shares,
        "classes_flagged_wholesale": wholesale,
        "is_auditor_weak": bool(warnings_),
        "warnings": warnings_,
    }


def check_drop(
    table: pd.DataFrame, n_train_audited: int, strength: dict[str, Any], params: LabelIssuesParams
) -> None:
    """Refuse ``action: drop`` when it would remove more than ``max_drop_share`` of the audited train
    images, or when the auditor is weak, unless ``allow_large_drop`` says so.

    Raises:
        InputError: Naming the counts, the reason and the override.
    """
    if params.action != "drop" or params.allow_large_drop:
        return
    n_drop = int(table["is_dropped"].sum())
    share = n_drop / max(n_train_audited, 1)
    if share > params.max_drop_share:
        raise InputError(
            f"label_issues.action: drop would remove {n_drop} of {n_train_audited} audited train images "
            f"({share:.0%} > label_issues.max_drop_share {params.max_drop_share}); review "
            "reports/label_issues.csv, or set label_issues.allow_large_drop: true to drop them anyway"
        )
    if n_drop and strength["is_auditor_weak"]:
        raise InputError(
            f"label_issues.action: drop refused: {strength['warnings'][0]}; set "
            "label_issues.allow_large_drop: true to drop anyway"
        )


def summarize(
    table: pd.DataFrame,
    classes: Sequence[str],
    labels: np.ndarray,
    pred_probs: np.ndarray,
    auditor: str,
    n_folds: int,
    seconds: float,
    strength: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics for ``metrics/label_issues.json`` (with :func:`auditor_strength`'s verdict when given)."""
    issues = table[table["is_label_issue"]]
    oof_acc = float((pred_probs.argmax(axis=1) == labels).mean()) if len(labels) else float("nan")
    return {
        "auditor": auditor,
        "n_folds": int(n_folds),
        "n_audited": int(len(labels)),
        "n_issues": int(len(issues)),
        "n_out_of_fold_issues": int(issues["reason"].str.contains(REASON_OOF).sum()),
        "n_duplicate_label_conflicts": int(issues["reason"].str.contains(REASON_CONFLICT).sum()),
        "n_dropped": int(table["is_dropped"].sum()),
        "issues_per_class": {c: int((issues["given_label"] == c).sum()) for c in classes},
        "oof_accuracy": oof_acc,
        **(strength or {}),
        "seconds": round(float(seconds), 2),
    }


def find_label_issues_oof(
    images: np.ndarray | Sequence[np.ndarray],
    index: pd.DataFrame,
    classes: Sequence[str],
    *,
    auditor: Literal["cnn", "linear"],
    n_folds: int,
    seed: int,
    normalize: Normalize | None = None,
    linear_c: float = 0.01,
    cnn_kwargs: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grouped out-of-fold probabilities and cleanlab's verdict for the audited images.

    Args:
        images: NHWC uint array aligned with ``index``, or a list of such arrays (e.g. the
            train and val memmaps) whose concatenation is aligned with ``index``; the linear
            auditor reads them batch by batch, the cnn auditor loads them into memory.
        index: image_id, label_index, group_id per row.
        classes: Class names by index (K = len(classes)).
        auditor: ``linear`` or ``cnn`` (resolve ``auto`` with :func:`choose_auditor`).
        n_folds: Folds (grouped by group_id).
        seed: Seed for folds and models.
        normalize: Normalizer callable for the linear auditor's features.
        linear_c: Logistic regression C.
        cnn_kwargs: Keyword arguments of :func:`oof_cnn` beyond the data (normalizer, arch,
            width, dropout, epochs, batch_size, lr, weight_decay, device).

    Returns:
        ``(folds, pred_probs, is_issue, quality)`` aligned with ``index``.

    Raises:
        ValueError: On misaligned inputs or label indices outside ``0..K-1``.
    """
    parts = [images] if isinstance(images, np.ndarray) else list(images)
    n = len(index)
    n_rows = sum(p.shape[0] for p in parts)
    if n_rows != n:
        raise ValueError(f"images have {n_rows} rows but the index has {n}")
    labels = np.asarray(index["label_index"], dtype=np.int64)
    n_classes = len(classes)
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"row {i} ({index['image_id'].iloc[i]}): label_index {labels[i]} not in 0..{n_classes - 1} ({list(classes)})"
        )
    folds = make_group_folds(labels, index["group_id"].astype(str).to_numpy(), n_folds, seed)
    if auditor == "linear":
        feats = np.concatenate([extract_features(p, normalize) for p in parts if p.shape[0]])
        pred = oof_linear(feats, labels, folds, n_classes, c=linear_c, seed=seed)
    elif auditor == "cnn":
        stacked = np.concatenate([np.asarray(p) for p in parts])
        pred = oof_cnn(stacked, labels, folds, n_classes, seed=seed, **dict(cnn_kwargs or {}))
    else:
        raise InputError(f"label_issues.auditor: expected 'linear' or 'cnn', got {auditor!r}")
    # Guard against zero columns (classes missing from a fold) for cleanlab's log/normalization.
    pred = np.clip(pred, 1e-6, None)
    pred /= pred.sum(axis=1, keepdims=True)
    log.info(
        "out-of-fold accuracy (%s): %.3f", auditor, float((pred.argmax(1) == labels).mean()) if n else 0.0
    )
    is_issue, quality = rank_label_issues(labels, pred)
    return folds, pred, is_issue, quality


def make_top_sheet(
    table: pd.DataFrame,
    lookup: Callable[[str], np.ndarray | None],
    n_top: int,
    tile_px: int = 128,
    n_cols: int = 6,
) -> np.ndarray:
    """Contact sheet of the top-ranked issues in the table's order, captioned ``#<rank> <file name>``
    over ``given -> suggested``.

    Args:
        table: From :func:`build_label_issue_table` (sorted by rank).
        lookup: image_id -> processed image (HxWxC) or ``None`` when it is not in the
            processed arrays (e.g. a label-conflict image that curate excluded); those are skipped.
        n_top: Most tiles shown.
        tile_px: Tile side in pixels (128 fits a ``effusion -> nodule`` caption).
        n_cols: Tiles per row.

    Returns:
        uint8 RGB array (see ``pipeline.sheets.make_contact_sheet``).
    """
    from pipeline.sheets import make_contact_sheet

    images, captions = [], []
    for row in table[table["is_label_issue"]].itertuples(index=False):
        if len(images) >= n_top:
            break
        img = lookup(row.image_id)
        if img is None:
            continue
        images.append(img)
        name = str(row.image_id).rsplit("/", 1)[-1]
        captions.append(f"#{row.rank} {name}\n{row.given_label} -> {row.suggested_label}")
    return make_contact_sheet(images, captions, tile_px=tile_px, n_cols=n_cols)
