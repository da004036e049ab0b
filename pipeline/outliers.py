"""Outliers: images that do not belong in this dataset, scored relative to the dataset itself.

Three measures, computed from the 32x32 and 64x64 intensity-normalized thumbnails that ingest
already stored in features.parquet (no image is decoded again), all relative to the dataset at hand:

* **Atypicality** (another view, modality or body part, a photo, a document, ...). Each thumbnail
  becomes a vector (a 16x16 copy and its row and column profiles, plus the colour measures of
  features.parquet), standardized; a probabilistic PCA (Tipping & Bishop 1999,
  ``sklearn.decomposition.PCA.score_samples``) fitted on the dataset gives each image a
  log-likelihood, i.e. a Mahalanobis distance inside the main components plus the residual
  outside them (its square root is used). The fit is repeated once without the images the first fit found atypical, so a
  cluster of outliers does not become "normal". The distance is turned into a
  one-sided robust z-score over the dataset (as in ``pipeline.quality``) and into a score in
  [0, 1]: ``0.1 ** (max(0, z) / robust_z)``, so an image ``robust_z`` robust SDs beyond the
  median scores 0.1.
* **Orientation** (rotated by 90/180/270 degrees, mirrored, inverted). A self-supervised model
  (Gidaris et al. 2018, "RotNet", extended to the dihedral group and to intensity inversion) is
  trained on the dataset itself, labels not needed: every typical image is shown in its 16
  versions (4 rotations x mirror x inversion) and a linear discriminant learns which version it
  sees. An image ``x`` stored as ``g(u)`` for an upright ``u`` is scored by how well each
  candidate ``g`` explains all 16 of its own versions, ``log p(g) ~ mean_t log p(t∘g | t(x))``
  (test-time augmentation: 16 opinions instead of one); the orientation score is
  ``p(identity) / max_g p(g)``, 1 for an image that looks upright. Models are cross-fitted (no
  image is scored by a model that saw it). In a dataset without a canonical orientation
  (histology tiles) the model cannot tell the versions apart and nothing is flagged: a transform
  is judged only when the models tell it from the identity on held-out images at least
  ``min_orientation_accuracy`` of the time (pairwise), so a weak cue does not flood the list. This
  linear model does not judge mirroring (a version and its mirror image are one candidate).
* **Mirroring**: an antisymmetric CNN on the 64x64 thumbnails (:mod:`pipeline.mirror`), trained
  and gated the same way, on images the linear model calls upright; score ``exp(-s)`` for its
  mirror log-odds ``s``. A transform that is not judged flags nothing, but the images a model would
  have flagged are named in ``unjudged_orientation`` (a set of which a share is stored turned pulls
  the held-out accuracy down by that share).

``outlier_score = min(atypicality, orientation)``; ``is_outlier_issue = outlier_score <
threshold``. The ``outlier_kind`` of a flagged image: when an orientation model names a
transform ``g``, undoing it gives a typical image and the image's colour is typical of the set
(:func:`colour_z`), ``rotated`` / ``mirrored`` / ``inverted`` (``orientation`` names ``g``, e.g.
``rot90``, ``flip``, ``invert``); otherwise ``atypical``.

Images with no structure at all (quality's ``low_information``: blank, constant) cannot be
judged and are not scored (score 1): they are quality's finding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import pandas as pd
import skimage.feature
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.preprocessing import StandardScaler

from pipeline import mirror
from pipeline.contract import flag_col, score_col
from pipeline.errors import InputError
from pipeline.features import LARGE_THUMB
from pipeline.quality import z_to_score

log = logging.getLogger(__name__)

ISSUE = "outlier"
KINDS = ("rotated", "mirrored", "inverted", "atypical")
OUTLIER_COLUMNS = [
    "image_id",
    score_col(ISSUE),
    flag_col(ISSUE),
    "outlier_kind",
    "orientation",
    "atypicality_score",
    "orientation_score",
    "atypicality_z",
    "unjudged_orientation",
]
FEATURE_COLUMNS = ["image_id", "thumb", "thumb_size", "thumb_large", "colorfulness", "channel_diff"]
"""Columns of features.parquet read by :func:`find_outliers`."""

# The 16 versions of an image: (quarter turns counter-clockwise, mirrored first, inverted).
TRANSFORMS: tuple[tuple[int, int, int], ...] = tuple(
    (k, f, v) for v in (0, 1) for f in (0, 1) for k in range(4)
)
IDENTITY = 0
FLIP = TRANSFORMS.index((0, 1, 0))
_VAR_EXPLAINED = 0.9
_MAX_COMPONENTS = 40
_MIN_ROBUST_SCALE = 1e-6


def transform_name(t: tuple[int, int, int]) -> str:
    """``identity``, ``rot90``, ``flip``, ``flip+rot180``, ``invert``, ``invert+rot270``, ..."""
    k, f, v = t
    parts = (["invert"] if v else []) + (["flip"] if f else []) + ([f"rot{90 * k}"] if k else [])
    return "+".join(parts) or "identity"


def apply_transform(thumbs: np.ndarray, t: tuple[int, int, int]) -> np.ndarray:
    """Apply one of :data:`TRANSFORMS` to a stack of square uint8 images (N, S, S): mirror
    left-right, then rotate counter-clockwise, then invert."""
    k, f, v = t
    x = thumbs[:, :, ::-1] if f else thumbs
    x = np.rot90(x, k, axes=(1, 2))
    return np.ascontiguousarray(255 - x if v else x)


def _composition_table() -> np.ndarray:
    """``table[a, b]`` = index of the transform equal to applying ``b`` and then ``a``."""
    probe = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 7
    views = [apply_transform(probe, t) for t in TRANSFORMS]
    table = np.zeros((len(TRANSFORMS), len(TRANSFORMS)), np.int64)
    for b, vb in enumerate(views):
        for a, ta in enumerate(TRANSFORMS):
            ab = apply_transform(vb, ta)
            table[a, b] = next(i for i, v in enumerate(views) if np.array_equal(v, ab))
    return table


COMPOSE = _composition_table()
INVERSE = np.array([int(np.flatnonzero(COMPOSE[:, g] == IDENTITY)[0]) for g in range(len(TRANSFORMS))])


def kind_of(g: int) -> str:
    """The finding a stored-as-``g`` image is: ``inverted``, ``rotated`` or ``mirrored``."""
    k, f, v = TRANSFORMS[g]
    if v:
        return "inverted"
    if k:
        return "rotated"
    return "mirrored" if f else ""


# ------------------------------------------------------------------------------------ features


def thumbnail_stack(features: pd.DataFrame) -> np.ndarray:
    """The ``thumb`` column as a (N, S, S) uint8 array.

    Raises:
        ValueError: If thumbnails of different sizes are mixed.
    """
    sizes = pd.unique(features["thumb_size"])
    if len(sizes) > 1:
        raise InputError(f"features: thumbnails of several sizes {sorted(sizes)}; re-run ingest")
    s = int(sizes[0]) if len(sizes) else 32
    buf = b"".join(features["thumb"].tolist())
    return np.frombuffer(buf, np.uint8).reshape(len(features), s, s)


def large_thumbnail_stack(features: pd.DataFrame) -> np.ndarray:
    """The ``thumb_large`` column (:data:`pipeline.features.LARGE_THUMB` px) as (N, S, S) uint8.

    Raises:
        InputError: If the column is missing (a features table from an older ingest).
    """
    if "thumb_large" not in features.columns:
        raise InputError("features: no thumb_large column (written by an older ingest); re-run ingest")
    s = LARGE_THUMB
    buf = b"".join(features["thumb_large"].tolist())
    return np.frombuffer(buf, np.uint8).reshape(len(features), s, s)


def restore_aspect(thumbs: np.ndarray, aspect: np.ndarray) -> np.ndarray:
    """Undo the thumbnails' squeeze to a square: resize each to its image's aspect ratio
    (``width / height``) inside the square and pad the rest with the thumbnail's own border
    median (as ``normalize``'s ``pad`` does), so a 2:1 image is not judged by distorted anatomy."""
    out = thumbs.copy()
    s = thumbs.shape[1]
    for i in np.flatnonzero(np.abs(np.log(np.clip(aspect, 1e-3, 1e3))) > np.log(1.05)):
        t = thumbs[i]
        w, h = (s, max(1, round(s / aspect[i]))) if aspect[i] > 1 else (max(1, round(s * aspect[i])), s)
        border = np.concatenate([t[0], t[-1], t[:, 0], t[:, -1]])
        canvas = np.full((s, s), np.median(border), np.uint8)
        y, x = (s - h) // 2, (s - w) // 2
        canvas[y : y + h, x : x + w] = cv2.resize(t, (w, h), interpolation=cv2.INTER_AREA)
        out[i] = canvas
    return out


def center_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """Shift each thumbnail so its intensity centroid is at the centre (patient position varies;
    the orientation model should look at the anatomy, not at where it sits)."""
    n, s, _ = thumbs.shape
    yy, xx = np.mgrid[:s, :s].astype(np.float64)
    out = np.empty_like(thumbs)
    for i, t in enumerate(thumbs):
        w = t.astype(np.float64)
        m = w.sum()
        cy, cx = ((w * yy).sum() / m, (w * xx).sum() / m) if m > 0 else ((s - 1) / 2, (s - 1) / 2)
        shift = np.float32([[1, 0, (s - 1) / 2 - cx], [0, 1, (s - 1) / 2 - cy]])
        out[i] = cv2.warpAffine(t, shift, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out


def pixel_features(thumbs: np.ndarray) -> np.ndarray:
    """Layout features of (N, S, S) uint8 thumbnails: a 16x16 copy and the row/column profiles
    (float32 (N, 256 + 2S), values in [0, 1])."""
    n, s, _ = thumbs.shape
    x = thumbs.astype(np.float32) / 255.0
    if s != 16:
        small = np.stack([cv2.resize(t, (16, 16), interpolation=cv2.INTER_AREA) for t in x]).reshape(n, -1)
    else:
        small = x.reshape(n, -1)
    return np.concatenate([small, x.mean(axis=2), x.mean(axis=1)], axis=1)


def shape_features(thumbs: np.ndarray) -> np.ndarray:
    """Histograms of oriented gradients (Dalal & Triggs 2005) of (N, S, S) uint8 thumbnails, resized
    to 32x32: 3x3 blocks of 2x2 cells of 8 px, 9 orientations (float32 (N, 324)), as
    ``label_issues`` computes them. They describe where edges of which direction lie (the outline
    of lung fields, a spine, a body's edge), block-normalized, so a view or a body part whose
    outlines differ stands apart even where its mean intensities resemble the dataset's, and an
    exposure change or a heel-effect gradient hardly moves them."""
    out = []
    for t in thumbs:
        if t.shape != (32, 32):
            t = cv2.resize(t, (32, 32), interpolation=cv2.INTER_AREA)
        out.append(
            skimage.feature.hog(
                t, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), feature_vector=True
            )
        )
    return np.asarray(out, np.float32).reshape(len(thumbs), -1)


def atypicality_features(thumbs: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """:func:`pixel_features` + :func:`shape_features` + the colour measures (N, F). No intensity
    histogram: exposure is quality's concern, and a burnt-out but otherwise ordinary film must not
    look foreign."""
    if thumbs.shape[0] == 0:
        return np.zeros((0, 0), np.float32)
    return np.concatenate([pixel_features(thumbs), shape_features(thumbs), colour.astype(np.float32)], axis=1)


def colour_z(colour: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """Largest two-sided robust z-score of each image's colour measures (colourfulness, channel
    difference; fractions of full scale) against the dataset's, the scale floored at ``floor`` (the
    channel spread below which an RGB file counts as gray), so the JPEG chroma noise of a gray set
    is not a finding."""
    if colour.shape[0] == 0:
        return np.zeros(0)
    med = np.median(colour, axis=0)
    scale = np.maximum(np.median(np.abs(colour - med), axis=0) * 1.4826, floor)
    return np.abs((colour - med) / scale).max(axis=1)


class Atypicality:
    """Probabilistic PCA of standardized features, fitted on typical images (two passes)."""

    def __init__(self, robust_z_cut: float) -> None:
        self.robust_z_cut = robust_z_cut
        self.scaler: StandardScaler | None = None
        self.pca: PCA | None = None
        self.median = 0.0
        self.scale = 1.0

    def _fit_once(self, x: np.ndarray) -> None:
        self.scaler = StandardScaler().fit(x)
        # Features constant on the fit set (e.g. colour on an all-gray set) would divide by 0.
        self.scaler.scale_ = np.maximum(self.scaler.scale_, 1e-3)
        z = self.scaler.transform(x)
        n_max = max(1, min(_MAX_COMPONENTS, z.shape[0] - 1, z.shape[1] - 1))
        # With many more images than features, the eigendecomposition of the F x F covariance
        # gives the same components as an SVD of the N x F data, ~10x faster; with few images the
        # covariance is rank-deficient and its tiny eigenvalues are noise, so the SVD is kept.
        solver = "covariance_eigh" if z.shape[0] >= 2 * z.shape[1] else "full"
        full = PCA(n_components=n_max, svd_solver=solver).fit(z)
        k = int(np.searchsorted(np.cumsum(full.explained_variance_ratio_), _VAR_EXPLAINED) + 1)
        self.pca = PCA(n_components=max(1, min(k, n_max)), svd_solver=solver).fit(z)
        nll = self._nll(x)
        self.median = float(np.median(nll))
        self.scale = max(float(np.median(np.abs(nll - self.median)) * 1.4826), _MIN_ROBUST_SCALE)

    def _nll(self, x: np.ndarray) -> np.ndarray:
        """The Mahalanobis distance under the PPCA model, sqrt(-2 log-likelihood + const): its
        square is roughly chi-square, the root roughly normal, so robust z-scores are not ruled by
        a heavy right tail."""
        assert self.scaler is not None and self.pca is not None
        d = self.scaler.transform(x) - self.pca.mean_
        return np.sqrt(np.einsum("ij,jk,ik->i", d, self.pca.get_precision(), d))

    def fit(self, x: np.ndarray) -> Atypicality:
        """Fit, then refit on the images the first fit does not call atypical."""
        self._fit_once(x)
        typical = self.z(x) < self.robust_z_cut
        if typical.sum() >= 3 and not typical.all():
            self._fit_once(x[typical])
        return self

    def z(self, x: np.ndarray) -> np.ndarray:
        """Robust z-score of the negative log-likelihood (high = atypical)."""
        return (self._nll(x) - self.median) / self.scale


# -------------------------------------------------------------------------------- orientation


def _views(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features of all 16 versions of every thumbnail: (16 N, F) and the version index (16 N,)."""
    feats = [pixel_features(apply_transform(thumbs, t)) for t in TRANSFORMS]
    labels = np.repeat(np.arange(len(TRANSFORMS)), thumbs.shape[0])
    return np.concatenate(feats), labels


def _orientation_model(thumbs: np.ndarray) -> Any:
    # Linear discriminant analysis with Ledoit-Wolf shrinkage: closed form, a few seconds for
    # thousands of images (a logistic regression needs minutes), no tuning.
    x, y = _views(thumbs)
    return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, y)


def orientation_log_posterior(model: Any, thumbs: np.ndarray) -> np.ndarray:
    """``post[i, g]`` = mean over the 16 versions ``t`` of ``log p(t∘g | t(x_i))`` (N, 16)."""
    n = thumbs.shape[0]
    post = np.zeros((n, len(TRANSFORMS)))
    for t_idx, t in enumerate(TRANSFORMS):
        logp = np.log(np.clip(model.predict_proba(pixel_features(apply_transform(thumbs, t))), 1e-12, None))
        post += logp[:, COMPOSE[t_idx]]  # column g holds log p(t∘g | t(x))
    return post / len(TRANSFORMS)


def orientation_scores(
    thumbs: np.ndarray,
    train: np.ndarray,
    *,
    max_train: int,
    min_accuracy: float,
    seed: int,
    would_flag_below: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, dict[str, float], np.ndarray]:
    """Cross-fitted orientation posterior of every thumbnail.

    Args:
        thumbs: (N, S, S) uint8 (centred with :func:`center_thumbs`).
        train: Boolean (N,): images the model may learn from (the typical ones).
        max_train: Most images the models learn from (a seeded sample), so the cost is bounded.
        min_accuracy: A transform is judged only if the models tell it from the identity at least
            this often on held-out images (pairwise accuracy); others keep score 1.
        seed: Sampling seed.
        would_flag_below: The flag threshold, for the count of images not judged (below).

    Returns:
        ``(best, score, accuracy, unjudged)``: the most likely stored transform per image among
        the judged ones, none of them mirrored (index into :data:`TRANSFORMS`),
        ``p(identity) / p(best)`` in (0, 1], the held-out pairwise accuracy identity-vs-transform
        per transform name (the 7 rotations and inversions), and per image the transform that is
        not judged but would flag it if it were (:data:`IDENTITY` where none would).
    """
    n = thumbs.shape[0]
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(train)
    if pool.size < 8:
        return np.zeros(n, np.int64), np.ones(n), {}, np.zeros(n, np.int64)
    pool = rng.permutation(pool)[: max(8, max_train)]
    halves = (pool[0::2], pool[1::2])
    models = [_orientation_model(thumbs[h]) for h in halves]
    post = np.zeros((n, len(TRANSFORMS)))
    unseen = np.ones(n, bool)
    unseen[pool] = False
    for k, model in enumerate(models):
        held = halves[1 - k]  # scored by the model that did not see them
        post[held] = orientation_log_posterior(model, thumbs[held])
    if unseen.any():
        post[unseen] = np.mean([orientation_log_posterior(m, thumbs[unseen]) for m in models], axis=0)
    pairwise = np.zeros(len(TRANSFORMS))
    for k, model in enumerate(models):
        x, y = _views(thumbs[halves[1 - k]])
        logp = model.predict_log_proba(x)
        for g in range(len(TRANSFORMS)):
            a, b = y == IDENTITY, y == g
            pairwise[g] += (
                0.5
                * ((logp[a, IDENTITY] > logp[a, g]).mean() + (logp[b, g] > logp[b, IDENTITY]).mean())
                / len(models)
            )
    # Mirroring is the mirror model's to judge (pipeline.mirror): here a version and its mirror
    # image are one candidate, named without the mirror. Otherwise an inverted film would be named
    # "invert+flip" at random, and undoing that would give a mirrored film.
    unmirrored = np.array([f == 0 for _, f, _ in TRANSFORMS])
    post = np.logaddexp(post, post[:, COMPOSE[:, FLIP]])
    judged = (pairwise >= min_accuracy) & unmirrored
    judged[IDENTITY] = True
    # What the model would call turned if every transform were judged: reported, never flagged, so a
    # set of which a large share is stored turned (which pulls the held-out accuracy down) is seen.
    any_best = np.where(unmirrored, post, -np.inf).argmax(axis=1)
    would = (~judged[any_best]) & (
        post[:, IDENTITY] - post[np.arange(n), any_best] < np.log(max(would_flag_below, 1e-300))
    )
    unjudged = np.where(would, any_best, IDENTITY)
    post[:, ~judged] = -np.inf
    best = post.argmax(axis=1)
    score = np.exp(np.clip(post[:, IDENTITY] - post[np.arange(n), best], -700, 0))
    accuracy = {
        transform_name(t): round(float(a), 4)
        for t, a, keep in zip(TRANSFORMS, pairwise, unmirrored, strict=True)
        if keep and t != TRANSFORMS[IDENTITY]
    }
    return best, score, accuracy, unjudged


# -------------------------------------------------------------------------------------- stage


def find_outliers(
    features: pd.DataFrame,
    *,
    threshold: float,
    robust_z_cut: float,
    max_orientation_images: int,
    min_orientation_accuracy: float,
    seed: int,
    mirror_epochs: int = 8,
    device: Any = None,
    aspect: pd.Series | None = None,
    skip: Sequence[str] = (),
) -> tuple[pd.DataFrame, dict]:
    """Score every image for not belonging to the dataset (see the module docstring).

    Args:
        features: features.parquet rows (:data:`FEATURE_COLUMNS`), one per ok image.
        threshold: Flag when ``outlier_score < threshold``.
        robust_z_cut: Robust SDs beyond the median that score 0.1.
        max_orientation_images: Most images the orientation model learns from.
        min_orientation_accuracy: See :func:`orientation_scores`; the mirror model's held-out
            accuracy must reach it too.
        seed: Seed of the orientation models' samples and initialization.
        mirror_epochs: Training passes of the mirror model (:mod:`pipeline.mirror`).
        device: torch device of the mirror model (None = CPU).
        aspect: ``width / height`` per image_id (manifest); None = thumbnails taken as square.
        skip: image ids not scored (no structure to judge: quality's ``low_information``).

    Returns:
        ``(table, info)``: the table has :data:`OUTLIER_COLUMNS`, one row per input row, sorted
        by ``image_id``; ``info`` has ``n_scored`` and ``orientation_accuracy`` (held-out
        pairwise accuracy identity-vs-transform, per transform).
    """
    features = features.sort_values("image_id", ignore_index=True)
    n = len(features)
    ids = features["image_id"].astype(str).to_numpy()
    out = pd.DataFrame(
        {
            "image_id": ids,
            score_col(ISSUE): np.ones(n),
            flag_col(ISSUE): np.zeros(n, bool),
            "outlier_kind": np.full(n, "", dtype=object),
            "orientation": np.full(n, "identity", dtype=object),
            "atypicality_score": np.ones(n),
            "orientation_score": np.ones(n),
            "atypicality_z": np.zeros(n),
            "unjudged_orientation": np.full(n, "", dtype=object),
        }
    )
    scored = ~np.isin(ids, np.asarray(list(skip), dtype=object))
    idx = np.flatnonzero(scored)
    info: dict[str, Any] = {"n_scored": int(idx.size), "orientation_accuracy": {}}
    if idx.size < 8:
        log.warning("outliers: only %d images to score; at least 8 are needed, none flagged", idx.size)
        return out, info
    thumbs = thumbnail_stack(features.iloc[idx])
    if aspect is not None:
        ratio = pd.Series(aspect).reindex(ids[idx]).fillna(1.0).to_numpy(np.float64)
        thumbs = restore_aspect(thumbs, ratio)
    colour = features.iloc[idx][["colorfulness", "channel_diff"]].to_numpy(np.float64)
    x = atypicality_features(thumbs, colour)
    model = Atypicality(robust_z_cut).fit(x)
    z = model.z(x)
    atyp = z_to_score(-z, robust_z_cut)

    typical = z < robust_z_cut
    best, orient, info["orientation_accuracy"], unjudged = orientation_scores(
        center_thumbs(thumbs), typical, max_train=max_orientation_images,
        min_accuracy=min_orientation_accuracy, seed=seed, would_flag_below=threshold,
    )  # fmt: skip

    # Mirroring: the mirror model on the larger thumbnail, judged only on films the linear model
    # calls upright (a rotated or inverted film is already named).
    large = large_thumbnail_stack(features.iloc[idx])
    if aspect is not None:
        large = restore_aspect(large, ratio)
    s, mirror_acc = mirror.mirror_scores(
        center_thumbs(large), typical, max_train=max_orientation_images, epochs=mirror_epochs,
        seed=seed, device=device,
    )  # fmt: skip
    info["orientation_accuracy"]["flip"] = None if mirror_acc is None else round(mirror_acc, 4)
    info["mirror_judged"] = mirror_acc is not None and mirror_acc >= min_orientation_accuracy
    mirror_score = np.exp(-np.clip(s, 0, 700))
    if info["mirror_judged"]:
        use = (best == IDENTITY) & (s > 0) & (mirror_score < orient)
        best[use] = FLIP
        orient = np.where(use, mirror_score, orient)
    elif mirror_acc is not None:
        unjudged[(best == IDENTITY) & (unjudged == IDENTITY) & (mirror_score < threshold)] = FLIP
    unjudged[~typical] = IDENTITY  # an atypical image is flagged as such whatever its orientation
    would = {
        transform_name(TRANSFORMS[g]): int((unjudged == g).sum())
        for g in np.unique(unjudged)
        if g != IDENTITY
    }
    info["not_judged_would_flag"] = would
    # A model that cannot see orientation (histology tiles) errs by doubt: its confident calls are a
    # small part of its held-out errors (measured: at most an eighth). A share of the set stored turned
    # shows as errors the model is confident about (measured: over half). A transform is worth a
    # warning when its confident calls are at least a third of its held-out errors.
    n_typical = max(1, int(typical.sum()))
    accuracy = info["orientation_accuracy"]
    info["not_judged_warning"] = sorted(
        name
        for name, count in would.items()
        if count >= 2 and count / n_typical >= (1.0 - (accuracy.get(name) or 0.5)) / 3
    )
    if info["not_judged_warning"]:
        warned = {name: would[name] for name in info["not_judged_warning"]}
        log.warning(
            "outliers: %d typical images (%s) look stored turned to an orientation model whose held-out "
            "accuracy is below outliers.min_orientation_accuracy %.2f, so they are not flagged; they are "
            "a third or more of its held-out errors, as a share of the set stored that way would be: look "
            "at them (outliers.parquet, unjudged_orientation; the report lists them)",
            sum(warned.values()), warned, min_orientation_accuracy,
        )  # fmt: skip
    score = np.minimum(atyp, orient)
    flagged = score < threshold

    # Undo the transform the orientation model names: a typical result means "stored the wrong way".
    # Turning an image does not change its colour, so one whose colour is foreign to the set (a gray
    # CT slice among skin photographs, whose negative may resemble a lesion) stays atypical.
    kind = np.full(idx.size, "", dtype=object)
    turned = flagged & (best != IDENTITY) & (orient < threshold)
    colour_typical = colour_z(colour) < robust_z_cut
    for g in np.unique(best[turned]):
        rows = np.flatnonzero(turned & (best == g))
        undone = apply_transform(thumbs[rows], TRANSFORMS[INVERSE[g]])
        z_undone = model.z(atypicality_features(undone, colour[rows]))
        kind[rows] = np.where((z_undone < robust_z_cut) & colour_typical[rows], kind_of(int(g)), "atypical")
    kind[flagged & (kind == "")] = "atypical"

    out.loc[idx, score_col(ISSUE)] = score
    out.loc[idx, flag_col(ISSUE)] = flagged
    out.loc[idx, "outlier_kind"] = kind
    out.loc[idx, "orientation"] = [transform_name(TRANSFORMS[g]) for g in best]
    out.loc[idx, "atypicality_score"] = atyp
    out.loc[idx, "orientation_score"] = orient
    out.loc[idx, "atypicality_z"] = z
    out.loc[idx, "unjudged_orientation"] = [transform_name(TRANSFORMS[g]) if g else "" for g in unjudged]
    return out[OUTLIER_COLUMNS], info


def summarize(table: pd.DataFrame, info: dict, seconds: float) -> dict:
    """Counts for ``metrics/outliers.json``."""
    flagged = table[table[flag_col(ISSUE)]]
    return {
        "n_images": len(table),
        "n_scored": info.get("n_scored"),
        "n_flagged": len(flagged),
        "flagged_by_kind": {k: int((flagged["outlier_kind"] == k).sum()) for k in KINDS},
        "orientation_accuracy": info.get("orientation_accuracy"),
        "mirror_judged": info.get("mirror_judged"),
        "not_judged_would_flag": info.get("not_judged_would_flag") or {},
        "not_judged_warning": list(info.get("not_judged_warning") or []),
        "seconds": round(float(seconds), 2),
    }


def worst_flagged(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` flagged images with the lowest score (ties by image_id)."""
    flagged = table[table[flag_col(ISSUE)]]
    return flagged.sort_values([score_col(ISSUE), "image_id"]).head(n)
