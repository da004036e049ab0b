"""The embedded demo dataset: synthetic chest-radiograph-like images with planted problems.

``dvc repro`` must work on a fresh machine without a download, and the curation stages need a
ground truth to be scored against, so this module draws a small deterministic dataset
(README, ``demo_data`` stage):

* grayscale 8-bit PNGs that look like frontal chest radiographs (dark lung fields, bright
  mediastinum, spine, heart, ribs, clavicles, diaphragm domes, soft-tissue body outline);
* a few classes, each a visible finding that varies in size, contrast and position
  (``normal``: none; ``nodule``: one to three small round opacities in a lung field;
  ``effusion``: a meniscus-shaped basal opacity that blunts a costophrenic angle;
  ``cardiomegaly``: an enlarged heart shadow);
* several images per patient that share the patient's anatomy, exposure, position and noise
  level (so patient leakage between splits visibly inflates scores), with per-image variation
  in pose, inspiration and exposure large enough that two images of one patient are *not*
  near duplicates of each other;
* planted problems, each listed in ``truth.json``: exact duplicates, near duplicates (resized,
  JPEG-recompressed, brightness-shifted, cropped, shifted), duplicates filed under another
  patient, blurry / dark / overexposed / blank images, odd sizes and aspect ratios, truncated
  image files, non-image files with image extensions, flipped labels, and images that do not
  belong (kind ``outlier``: another view, another modality, a photo, a document, an inverted,
  rotated or mirrored radiograph; see :mod:`pipeline.demo_outliers`);
* a shortcut (truth: top-level ``shortcuts``): ``labels.csv`` has ``site``, ``sex`` and ``age``
  columns; one site (:data:`MARKED_SITE`) receives most of its patients from one class (the last
  of ``demo.classes``), and its films are larger and carry a burned-in corner marker, so the
  label can be read off the site, the image size and the image border. ``sex`` and ``age`` are
  drawn independently of the label (they must not be flagged).

Outliers, sites, sex and age are drawn from their own random stream, added after everything
else is planned, so the rest of the demo (patients, labels, planted problems) is the same
whatever their params.

Planted problems never overlap: each file is at most one kind; duplicates are copies of clean
images; flipped labels sit on clean images that are not duplicate sources.

Everything is drawn from ``np.random.default_rng(seed)`` in a fixed order and encoded with
``cv2.imencode`` (no timestamps), so the same seed gives byte-identical files.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import demo_dermoscopy
from pipeline.demo_outliers import OUTLIER_SUBTYPES, RENDERERS, burn_marker, transform_radiograph
from pipeline.errors import InputError
from pipeline.io import write_csv, write_json
from pipeline.params import DemoParams

log = logging.getLogger(__name__)

KINDS = (
    "exact_duplicate",
    "near_duplicate",
    "cross_patient_duplicate",
    "blurry",
    "dark",
    "overexposed",
    "blank",
    "odd_size",
    "odd_aspect_ratio",
    "corrupt",
    "not_an_image",
    "flipped_label",
    "outlier",
)
# Kinds that replace a clean image slot (the others add a copy or relabel a clean image).
_DEFECT_KINDS = (
    "blurry",
    "dark",
    "overexposed",
    "blank",
    "odd_size",
    "odd_aspect_ratio",
    "corrupt",
    "not_an_image",
)
_DUPLICATE_KINDS = ("exact_duplicate", "near_duplicate", "cross_patient_duplicate")
LABELS_COLUMNS = ["image_path", "label", "patient_id", "site", "sex", "age"]
SITES = ("site_a", "site_b", "site_c")
MARKED_SITE = "site_c"
"""The site whose films are larger and carry a corner marker, and that sees mostly one class."""
SHORTCUT_ATTRIBUTES = ("site", "width", "height", "file_size", "border_only")
"""What the shortcut audit must flag on the demo: the site column, the marked site's larger image
size (and so its larger files), and the border-only test (the corner marker)."""


# --------------------------------------------------------------------------------------------
# Anatomy and rendering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """What a patient looks like: shared by all of the patient's images."""

    dx: float  # position offset, fraction of the image side
    dy: float
    scale: float
    body_w: float
    lung_dx: float
    lung_w: float
    lung_h: float
    dome: float  # diaphragm dome height (smaller = higher dome)
    heart_w: float
    heart_h: float
    rib_spacing: float
    rib_contrast: float
    gain: float  # exposure
    offset: float
    gamma: float
    noise: float  # noise standard deviation, grey levels


@dataclass(frozen=True)
class View:
    """Per-image variation of one acquisition of a patient."""

    dx: float
    dy: float
    angle: float  # radians
    scale: float
    inspiration: float
    rib_phase: float
    exposure: float
    noise_scale: float


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's appearance."""
    return Anatomy(
        dx=rng.uniform(-0.04, 0.04),
        dy=rng.uniform(-0.04, 0.04),
        scale=rng.uniform(0.86, 1.06),
        body_w=rng.uniform(0.86, 1.0),
        lung_dx=rng.uniform(0.33, 0.40),
        lung_w=rng.uniform(0.23, 0.29),
        lung_h=rng.uniform(0.52, 0.64),
        dome=rng.uniform(0.45, 0.62),
        heart_w=rng.uniform(0.26, 0.33),
        heart_h=rng.uniform(0.2, 0.26),
        rib_spacing=rng.uniform(0.15, 0.19),
        rib_contrast=rng.uniform(0.6, 1.2),
        gain=rng.uniform(0.85, 1.2),
        offset=rng.uniform(-0.04, 0.05),
        gamma=rng.uniform(0.8, 1.2),
        noise=rng.uniform(1.5, 4.5),
    )


def sample_view(rng: np.random.Generator) -> View:
    """Draw the per-image variation (pose, breathing, exposure) of one acquisition."""
    return View(
        dx=rng.uniform(-0.04, 0.04),
        dy=rng.uniform(-0.04, 0.04),
        angle=float(np.deg2rad(rng.uniform(-4.0, 4.0))),
        scale=rng.uniform(0.95, 1.05),
        inspiration=rng.uniform(0.92, 1.08),
        rib_phase=rng.uniform(0.0, 1.0),
        exposure=rng.uniform(0.93, 1.07),
        noise_scale=rng.uniform(0.8, 1.2),
    )


def _sig(x: np.ndarray, eps: float) -> np.ndarray:
    """Smooth step from 0 (x <= -2 eps) to 1 (x >= 2 eps); a cheap stand-in for a sigmoid."""
    t = np.clip(x * np.float32(0.25 / eps) + np.float32(0.5), 0.0, 1.0)
    return t * t * (np.float32(3.0) - np.float32(2.0) * t)


def _lowpass_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth random texture in about [-1, 1] with features about ``cell`` pixels across."""
    small = rng.standard_normal((max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _add_nodules(b: np.ndarray, lungs: np.ndarray, s: float, rng: np.random.Generator) -> None:
    """One to four small round opacities at random places well inside a lung field (in place)."""
    h, w = b.shape
    candidates = np.flatnonzero(lungs.ravel() > 0.9)
    if candidates.size == 0:
        return
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n = int(rng.choice([1, 2, 2, 3]))
    for _ in range(n):
        cy, cx = divmod(int(rng.choice(candidates)), w)
        # Large and dense enough to survive downsampling to 64 px (about 3-6 px radius there),
        # but faint ones overlap the lung texture, so the task is not trivial.
        radius = rng.uniform(0.07, 0.11) * s
        contrast = rng.uniform(0.26, 0.4)
        d = np.hypot(yy - cy, xx - cx) / radius
        b += contrast * np.exp(-(d**4))


def _add_effusion(
    b: np.ndarray,
    lung_sides: list[np.ndarray],
    u: np.ndarray,
    w_: np.ndarray,
    a: Anatomy,
    rng: np.random.Generator,
) -> None:
    """A basal opacity with a meniscus rising towards the lateral chest wall (in place)."""
    sides = [int(rng.integers(0, 2))]
    if rng.random() < 0.35:
        sides = [0, 1]
    for side in sides:
        sign = -1.0 if side == 0 else 1.0
        uc = sign * a.lung_dx
        lung_bottom = -0.1 + a.lung_h * a.dome
        height = rng.uniform(0.2, 0.5) * a.lung_h
        lateral = np.clip(sign * (u - uc) / a.lung_w, -1.0, 1.5)
        level = lung_bottom - height - 0.22 * height * (lateral + 1.0) ** 2
        fluid = lung_sides[side] * _sig(w_ - level, 0.035)
        b += rng.uniform(0.3, 0.42) * fluid


def render_radiograph(
    anatomy: Anatomy,
    view: View,
    finding: str,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw one frontal chest-radiograph-like image.

    Args:
        anatomy: The patient's appearance.
        view: This acquisition's pose, breathing and exposure.
        finding: One of :data:`FINDINGS` (the class's visible sign).
        height: Image height in pixels.
        width: Image width in pixels. The anatomy is scaled to ``min(height, width)``.
        rng: Source of the noise, texture and finding placement.

    Returns:
        uint8 array of shape (height, width).
    """
    a, v = anatomy, view
    s = float(min(height, width))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx = width / 2 + (a.dx + v.dx) * s
    cy = height / 2 + (a.dy + v.dy) * s
    gx, gy = (xx - cx) / (s / 2), (yy - cy) / (s / 2)
    # Python floats keep the arrays float32 (numpy scalars would promote them to float64).
    cos, sin = float(np.cos(v.angle)), float(np.sin(v.angle))
    sc = float(a.scale * v.scale)
    u = (gx * cos + gy * sin) / sc
    w_ = (-gx * sin + gy * cos) / sc
    e = 0.03

    body = _sig(1.0 - (u / a.body_w) ** 2 - ((w_ - 0.4) / 2.1) ** 2, 0.06)
    lung_h = a.lung_h * v.inspiration
    heart_scale = 1.38 if finding == "cardiomegaly" else 1.0
    heart = _sig(1.0 - ((u - 0.1) / (a.heart_w * heart_scale)) ** 2 - ((w_ - 0.3) / a.heart_h) ** 2, e)
    lung_sides = []
    for sign in (-1.0, 1.0):
        uc = sign * a.lung_dx
        ell = ((u - uc) / a.lung_w) ** 2 + ((w_ + 0.1) / lung_h) ** 2
        # Diaphragm dome: highest mid-lung, lower laterally, so the costophrenic angle is sharp.
        dome = (
            -0.1
            + lung_h * (a.dome + (0.02 if sign > 0 else 0.0))
            + 0.35 * lung_h * ((u - uc) / a.lung_w) ** 2
        )
        # The heart shows as a silhouette: it displaces lung air where they overlap.
        lung_sides.append(_sig(1.0 - ell, e) * _sig(dome - w_, e) * (1.0 - 0.9 * heart))
    lungs = lung_sides[0] + lung_sides[1]
    mediastinum = _sig(0.13 - np.abs(u), e) * _sig(0.4 - w_, e)
    vertebrae = 0.85 + 0.15 * np.cos(2 * np.pi * w_ / 0.11)
    spine = _sig(0.075 - np.abs(u), 0.015) * vertebrae
    # Posterior ribs: bands that slope down laterally, visible over the thorax.
    t = (w_ - 0.25 * np.abs(u) - 0.35 * u**2) / a.rib_spacing + v.rib_phase
    ribs = _sig(np.cos(2 * np.pi * t) - 0.55, 0.12) * _sig(0.8 - np.abs(u), 0.05) * _sig(0.5 - w_, 0.05)
    ribs *= _sig(w_ + 0.8, 0.05)
    clav = _sig(0.028 - np.abs(w_ + 0.66 + 0.16 * np.abs(u) - 0.2 * u**2), 0.01) * _sig(0.6 - np.abs(u), 0.03)
    texture = _lowpass_noise(rng, height, width, max(2, int(s / 20)))
    # Coarse overlying soft-tissue density and the anode heel effect: low-frequency structure
    # unique to each acquisition, so that two images are only near duplicates if one was made
    # from the other.
    overlay = _lowpass_noise(rng, height, width, max(2, int(s / 5)))
    heel_dir = float(rng.uniform(0, 2 * np.pi))
    heel = float(rng.uniform(0.06, 0.2)) * (np.cos(heel_dir) * gx + np.sin(heel_dir) * gy)

    b = 0.05 + 0.52 * body
    b -= 0.34 * lungs * body
    b += 0.035 * lungs * texture
    b += 0.03 * heart + 0.1 * mediastinum + 0.12 * spine
    b += 0.05 * a.rib_contrast * ribs * body + 0.1 * clav * body
    b += 0.07 * overlay * body * (1.0 - 0.5 * lungs)
    if finding == "nodule":
        _add_nodules(b, lungs, s, rng)
    elif finding == "effusion":
        _add_effusion(b, lung_sides, u, w_, a, rng)

    b = np.clip(b * (1.0 + heel), 0.0, 1.0) ** a.gamma
    img = 255.0 * (a.offset + a.gain * v.exposure * b)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.5 * s / 128)
    img += rng.normal(0.0, a.noise * v.noise_scale, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


FINDINGS = ("normal", "nodule", "effusion", "cardiomegaly")


@dataclass(frozen=True)
class Modality:
    """How the demo draws one modality (``demo.modality``): its findings (the ``demo.classes``
    names it accepts), a patient's shared appearance, one image's variation, the renderer, whether
    it is colour, and the outlier subtypes that make sense for it."""

    findings: tuple[str, ...]
    patient: Callable[[np.random.Generator], object]
    view: Callable[[np.random.Generator], object]
    render: Callable[..., np.ndarray]
    is_colour: bool
    outlier_subtypes: tuple[str, ...]


MODALITIES = {
    "chest_xray": Modality(FINDINGS, sample_anatomy, sample_view, render_radiograph, False, OUTLIER_SUBTYPES),
    # A lesion has no up, down, left or right: rotated or mirrored lesions are not outliers.
    "dermoscopy": Modality(
        demo_dermoscopy.FINDINGS,
        demo_dermoscopy.sample_skin,
        demo_dermoscopy.sample_lesion,
        demo_dermoscopy.render_lesion,
        True,
        tuple(s for s in OUTLIER_SUBTYPES if s not in ("rotated", "mirrored")),
    ),
}


def _mark(img: np.ndarray) -> np.ndarray:
    """:func:`burn_marker` on a gray or a colour (per channel: a white box) image."""
    if img.ndim == 2:
        return burn_marker(img)
    return np.ascontiguousarray(np.stack([burn_marker(img[..., c]) for c in range(img.shape[2])], axis=-1))


# --------------------------------------------------------------------------------------------
# Planted problems
# --------------------------------------------------------------------------------------------


def make_blurry(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A strong Gaussian blur (sigma 2.5 to 4 px at 128 px)."""
    sigma = rng.uniform(2.5, 4.0) * min(img.shape) / 128
    return np.clip(cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma).round(), 0, 255).astype(np.uint8)


def make_dark(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Severe underexposure: grey levels scaled by 0.1 to 0.2."""
    return np.rint(img.astype(np.float32) * rng.uniform(0.1, 0.2)).astype(np.uint8)


def make_overexposed(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Burnt out: most of the image is pushed to (near) white."""
    out = img.astype(np.float32) * rng.uniform(1.6, 2.2) + rng.uniform(90, 130)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def make_blank(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A near-constant image (mid grey, faint gradient and noise), as from a failed exposure."""
    level = rng.uniform(100, 170)
    ramp = np.linspace(-1.5, 1.5, width, dtype=np.float32)[None, :]
    img = level + ramp + rng.normal(0.0, 0.6, (height, width))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    interp = cv2.INTER_AREA if width * height < img.shape[0] * img.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def make_near_duplicate(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str, int, str]:
    """A visually identical variant of ``img``.

    One change: resize to within 12.5 % of the size, a crop of 1-2 px per side resized back, a
    shift of 1 px, a brightness shift of 8-18 grey levels, or JPEG recompression alone;
    40 % of the others are also JPEG-recompressed (quality 70-92, saved as ``.jpg``).

    Returns:
        (pixels, file extension ".png" or ".jpg", JPEG quality (0 for PNG), short description).
    """
    h, w = img.shape[:2]
    op = str(rng.choice(["resize", "crop", "shift", "brightness", "jpeg"]))
    if op == "resize":
        f = float(rng.choice([0.875, 0.9375, 1.0625, 1.125]))
        out, desc = _resize(img, round(w * f), round(h * f)), f"resize x{f:g}"
    elif op == "crop":
        m = [int(rng.integers(1, 3)) for _ in range(4)]
        out = _resize(img[m[0] : h - m[1], m[2] : w - m[3]], w, h)
        desc = f"crop {m[0]},{m[1]},{m[2]},{m[3]} px"
    elif op == "shift":
        tx, ty = ((int(rng.integers(0, 2)), 1), (1, int(rng.integers(0, 2))))[int(rng.integers(2))]
        tx, ty = tx * int(rng.choice([-1, 1])), ty * int(rng.choice([-1, 1]))
        mat = np.float32([[1, 0, tx], [0, 1, ty]])
        out = cv2.warpAffine(img, mat, (w, h), borderMode=cv2.BORDER_REPLICATE)
        desc = f"shift {tx},{ty} px"
    elif op == "brightness":
        delta = int(rng.integers(8, 19)) * int(rng.choice([-1, 1]))
        out = np.clip(img.astype(np.int16) + delta, 0, 255).astype(np.uint8)
        desc = f"brightness {delta:+d}"
    else:
        out, desc = img, "jpeg"
    if op == "jpeg" or rng.random() < 0.4:
        quality = int(rng.integers(70, 93))
        desc = f"{desc} + jpeg q{quality}" if op != "jpeg" else f"jpeg q{quality}"
        return out, ".jpg", quality, desc
    return out, ".png", 0, desc


def encode(img: np.ndarray, ext: str, jpeg_quality: int = 90) -> bytes:
    """Encode deterministically with OpenCV (no timestamps or metadata)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise ValueError(f"could not encode a {img.shape} {img.dtype} image as {ext}")
    return buf.tobytes()


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    """Keep the header and cut the file at 30-65 % of its length (a half-written transfer)."""
    cut = max(64, int(len(data) * rng.uniform(0.3, 0.65)))
    return data[:cut]


_NOT_AN_IMAGE_TEMPLATES = (
    "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    "<body><h1>Not Found</h1><p>The requested image {name} was not found on this server.</p></body></html>\n",
    "Access denied: you are not authorised to download {name}.\nRequest id: {token}\n",
    "patient_id,study,series,instance\n{patient},{token},1,1\n",
    '{{"error": "export failed", "file": "{name}", "code": {token}}}\n',
)


def make_not_an_image(index: int, name: str, patient: str, rng: np.random.Generator) -> bytes:
    """Text (an HTML error page, a message, a CSV, JSON) that was saved with an image extension."""
    template = _NOT_AN_IMAGE_TEMPLATES[index % len(_NOT_AN_IMAGE_TEMPLATES)]
    token = int(rng.integers(10_000, 99_999))
    return template.format(name=name, patient=patient, token=token).encode("utf-8")


# --------------------------------------------------------------------------------------------
# Planning and writing
# --------------------------------------------------------------------------------------------


@dataclass
class _Slot:
    """One file to write."""

    patient: str
    label: str  # the label written to labels.csv
    true_label: str  # the finding drawn
    seed: int
    kind: str = "clean"  # "clean", a defect kind, or a duplicate kind
    source: int | None = None  # index of the source slot, for duplicates
    name: str = ""
    flipped: bool = False
    subtype: str = ""  # outlier subtype
    site: str = ""
    sex: str = ""
    age: int = 0


def _odd_shapes(size: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(height, width) choices for odd_size (square, far from ``size``) and odd_aspect_ratio
    (about the usual area, aspect 2 to 2.5)."""
    sizes = [(max(16, size * 3 // 8),) * 2, (size * 5 // 2,) * 2, (size * 3,) * 2]
    aspects = [(size * 3 // 4, size * 3 // 2), (size * 5 // 8, size * 25 // 16)]
    aspects += [(w, h) for h, w in aspects]
    return sizes, aspects


def _check_counts(
    n_clean: int, n_room: int, needed: dict[str, int], n_images: int, params: DemoParams
) -> None:
    n_needed = sum(needed.values())
    if n_needed > n_clean:
        detail = ", ".join(f"demo.{k}={v}" for k, v in needed.items() if v)
        raise InputError(
            f"demo: the planted problems need {n_needed} distinct clean images ({detail}) but only "
            f"{n_clean} images were drawn (demo.n_patients={params.n_patients}, "
            f"demo.images_per_patient_range={list(params.images_per_patient_range)}); raise demo.n_patients "
            f"or lower the demo.n_* counts"
        )
    n_dups = params.n_exact_duplicates + params.n_near_duplicates + params.n_cross_patient_duplicates
    if n_dups > n_room:
        raise InputError(
            f"demo: {n_dups} duplicates (demo.n_exact_duplicates + demo.n_near_duplicates + "
            f"demo.n_cross_patient_duplicates) do not fit: patients have room for only {n_room} more images "
            f"under demo.images_per_patient_range={list(params.images_per_patient_range)} "
            f"({n_images} images drawn); raise demo.n_patients or the upper end of the range"
        )
    if params.n_cross_patient_duplicates and params.n_patients < 2:
        raise InputError(
            f"demo: demo.n_cross_patient_duplicates={params.n_cross_patient_duplicates} needs at least 2 "
            f"patients, got demo.n_patients={params.n_patients}"
        )


def plan_demo(params: DemoParams, seed: int) -> list[_Slot]:
    """Decide every file of the demo dataset (patients, labels, planted problems, names).

    Pure and cheap: nothing is rendered. Per-image seeds are drawn here so rendering is
    deterministic whatever order it runs in.

    Raises:
        ValueError: If the planted counts do not fit in the drawn images (the message names the
            ``demo.*`` keys involved).
    """
    findings = MODALITIES[params.modality].findings
    unknown = [c for c in params.classes if c not in findings]
    if unknown:
        raise InputError(
            f"demo.classes: no synthetic finding for {unknown} in demo.modality={params.modality!r}; "
            f"expected names from {list(findings)}"
        )
    rng = np.random.default_rng(seed)
    classes = list(params.classes)
    hi = params.images_per_patient_range[1]
    draw = _label_drawer(classes, params.class_proportions, rng)

    slots, by_patient = _plan_patients(params, rng, draw)
    n_base = len(slots)

    defect_counts = {
        "blurry": params.n_blurry,
        "dark": params.n_dark,
        "overexposed": params.n_overexposed,
        "blank": params.n_blank,
        "odd_size": params.n_odd_size,
        "odd_aspect_ratio": params.n_odd_aspect_ratio,
        "corrupt": params.n_corrupt,
        "not_an_image": params.n_not_an_image,
    }
    dup_counts = {
        "exact_duplicate": params.n_exact_duplicates,
        "near_duplicate": params.n_near_duplicates,
        "cross_patient_duplicate": params.n_cross_patient_duplicates,
    }
    n_flipped = int(round(params.flipped_label_fraction * n_base))
    room = {p: hi - len(ix) for p, ix in by_patient.items()}
    needed = {f"n_{k}": v for k, v in {**defect_counts, **dup_counts}.items()}
    needed["flipped_label_fraction"] = n_flipped
    _check_counts(n_base, sum(room.values()), needed, n_base, params)

    # Disjoint roles over a random order of the original images.
    order = [int(i) for i in rng.permutation(n_base)]
    pos = 0
    for kind, count in defect_counts.items():
        for i in order[pos : pos + count]:
            slots[i].kind = kind
        pos += count
    for i in order[pos : pos + n_flipped]:
        s = slots[i]
        s.flipped = True
        s.label = draw([c for c in classes if c != s.true_label])
    pos += n_flipped
    sources = order[pos:]

    _plan_duplicates(slots, by_patient, room, sources, dup_counts, rng)

    _plan_outliers_and_sites(slots, by_patient, room, params, seed)

    # File names: shuffle within each patient so the name does not give the kind away.
    for patient in sorted(by_patient):
        idx = by_patient[patient]
        for k, i in enumerate(rng.permutation(len(idx))):
            slots[idx[int(i)]].name = f"images/{patient}/{patient}_{k:02d}"
    return slots


def _plan_patients(
    params: DemoParams, rng: np.random.Generator, draw: Callable[[list[str]], str]
) -> tuple[list[_Slot], dict[str, list[int]]]:
    """Patients and their original images: a main label that most images carry; a
    ``mixed_patient_fraction`` of patients have mixed findings."""
    classes = list(params.classes)
    lo, hi = params.images_per_patient_range
    width = max(4, len(str(params.n_patients - 1)))
    slots: list[_Slot] = []
    by_patient: dict[str, list[int]] = {}
    for p in range(params.n_patients):
        patient = f"p{p:0{width}d}"
        n = int(rng.integers(lo, hi + 1))
        main = draw(classes)
        mixed = rng.random() < params.mixed_patient_fraction
        by_patient[patient] = []
        for _ in range(n):
            label = draw(classes) if mixed else main
            by_patient[patient].append(len(slots))
            slots.append(_Slot(patient=patient, label=label, true_label=label, seed=int(rng.integers(2**63))))
    return slots, by_patient


def _plan_duplicates(
    slots: list[_Slot],
    by_patient: dict[str, list[int]],
    room: dict[str, int],
    sources: list[int],
    dup_counts: dict[str, int],
    rng: np.random.Generator,
) -> None:
    """Duplicates (in place): each from its own clean source, filed under a patient with room left
    (its own, or another for ``cross_patient_duplicate``).

    Raises:
        InputError: The clean sources run out before every duplicate is placed.
    """
    src_iter = iter(sources)
    for kind, count in dup_counts.items():
        for _ in range(count):
            for src in src_iter:  # skip sources whose target patient has no room
                home = slots[src].patient
                if kind == "cross_patient_duplicate":
                    others = sorted(p for p, r in room.items() if r > 0 and p != home)
                    target = str(rng.choice(others)) if others else None
                else:
                    target = home if room[home] > 0 else None
                if target is not None:
                    break
            else:
                raise InputError(
                    f"demo: ran out of clean images with room for duplicates while placing {kind}; "
                    f"raise demo.n_patients or lower demo.n_{kind}s"
                )
            room[target] -= 1
            dup = replace(slots[src], patient=target, kind=kind, source=src, seed=int(rng.integers(2**63)))
            by_patient[target].append(len(slots))
            slots.append(dup)


def _label_drawer(
    classes: list[str], proportions: list[float] | None, rng: np.random.Generator
) -> Callable[[list[str]], str]:
    """A function drawing one label among some of ``classes``: uniformly (``proportions`` None), or
    in proportion to their ``demo.class_proportions`` (renormalized over the options offered, so a
    flipped label lands on a rare class as rarely as a drawn one)."""
    if proportions is None:
        return lambda options: str(rng.choice(options))
    weight = dict(zip(classes, proportions, strict=True))

    def draw(options: list[str]) -> str:
        w = np.array([weight[c] for c in options], dtype=np.float64)
        return str(rng.choice(options, p=w / w.sum()))

    return draw


def _plan_outliers_and_sites(
    slots: list[_Slot], by_patient: dict[str, list[int]], room: dict[str, int], params: DemoParams, seed: int
) -> None:
    """Add the outlier slots and give every patient a site, a sex and an age (in place).

    Drawn from their own stream ``default_rng([seed, 15])`` so that the rest of the plan does not
    depend on these params. The marked site receives ``shortcut_site_fraction`` of the patients
    whose main label is the last class and a twentieth of that share of the others.
    """
    rng = np.random.default_rng([seed, 15])
    shortcut_class = params.classes[-1]
    info: dict[str, tuple[str, str, int]] = {}
    for patient in sorted(by_patient):
        own = [slots[i].true_label for i in by_patient[patient] if slots[i].source is None]
        main = Counter(own).most_common(1)[0][0] if own else ""
        share = params.shortcut_site_fraction * (1.0 if main == shortcut_class else 0.05)
        u, other = rng.random(), str(rng.choice(SITES[:2]))
        site = MARKED_SITE if u < share else other
        info[patient] = (site, str(rng.choice(["F", "M"])), int(rng.integers(18, 91)))
    subtypes = MODALITIES[params.modality].outlier_subtypes
    n_outliers = params.n_outliers_per_subtype * len(subtypes)
    if n_outliers > sum(room.values()):
        raise InputError(
            f"demo: {n_outliers} outliers (demo.n_outliers_per_subtype={params.n_outliers_per_subtype} x "
            f"{len(subtypes)} subtypes) do not fit: patients have room for only {sum(room.values())} more "
            f"images under demo.images_per_patient_range={list(params.images_per_patient_range)}; raise "
            f"demo.n_patients or lower demo.n_outliers_per_subtype"
        )
    for subtype in subtypes:
        for _ in range(params.n_outliers_per_subtype):
            target = str(rng.choice(sorted(p for p, r in room.items() if r > 0)))
            room[target] -= 1
            label = slots[by_patient[target][0]].true_label
            by_patient[target].append(len(slots))
            slots.append(
                _Slot(
                    patient=target, label=label, true_label=label, seed=int(rng.integers(2**63)),
                    kind="outlier", subtype=subtype,
                )
            )  # fmt: skip
    for s in slots:
        s.site, s.sex, s.age = info[s.patient]


def _extension(rng: np.random.Generator) -> str:
    return ".jpg" if rng.random() < 0.5 else ".png"


DEGRADE: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "blurry": make_blurry,
    "dark": make_dark,
    "overexposed": make_overexposed,
}


@dataclass
class _Renderer:
    """Renders the planned slots one by one; keeps what duplicates need of their sources."""

    slots: list[_Slot]
    anatomies: dict[str, object]  # Anatomy, or demo_dermoscopy.Skin
    size: int
    marked_size: int  # the marked site's larger films, yet within quality's size tolerance
    odd_sizes: list[tuple[int, int]]
    odd_aspects: list[tuple[int, int]]
    modality: Modality
    encoded: dict[int, bytes] = field(default_factory=dict)
    pixels: dict[int, np.ndarray] = field(default_factory=dict)
    paths: dict[int, str] = field(default_factory=dict)
    n_not_image: int = 0

    def render(self, i: int) -> tuple[str, bytes, dict]:
        """``(extension, file bytes, truth item)`` of slot ``i`` (its source must be rendered first)."""
        slot = self.slots[i]
        rng = np.random.default_rng(slot.seed)
        item: dict = {"kind": slot.kind}
        if slot.source is not None:
            src = self.slots[slot.source]
            item["source"] = self.paths[slot.source]
            if slot.kind == "near_duplicate":
                img, ext, quality, desc = make_near_duplicate(self.pixels[slot.source], rng)
                data = encode(img, ext, quality)
                item["transform"] = desc
            else:
                ext, data = Path(self.paths[slot.source]).suffix, self.encoded[slot.source]
            slot.label = src.label
        elif slot.kind == "not_an_image":
            ext = _extension(rng)
            data = make_not_an_image(self.n_not_image, Path(slot.name).name + ext, slot.patient, rng)
            self.n_not_image += 1
        elif slot.kind == "blank":
            side = self.marked_size if slot.site == MARKED_SITE else self.size
            blank = make_blank(side, side, rng)
            if self.modality.is_colour:
                blank = demo_dermoscopy.colour_blank(blank, self.anatomies[slot.patient])
            ext, data = ".png", encode(blank, ".png")
        elif slot.kind == "outlier":
            side = self.marked_size if slot.site == MARKED_SITE else self.size
            item["subtype"] = slot.subtype
            if slot.subtype in RENDERERS:
                img = RENDERERS[slot.subtype](side, side, rng)
            else:
                img = self.modality.render(
                    self.anatomies[slot.patient], self.modality.view(rng), slot.true_label, side, side, rng
                )
                if slot.site == MARKED_SITE:
                    img = _mark(img)
                img, item["transform"] = transform_radiograph(img, slot.subtype, rng)
            ext = ".jpg" if slot.subtype == "photo" else ".png"
            data = encode(img, ext)
            self.pixels[i], self.encoded[i] = img, data
        else:
            h = w = self.marked_size if slot.site == MARKED_SITE else self.size
            if slot.kind == "odd_size":
                h, w = self.odd_sizes[int(rng.integers(len(self.odd_sizes)))]
            elif slot.kind == "odd_aspect_ratio":
                h, w = self.odd_aspects[int(rng.integers(len(self.odd_aspects)))]
            img = self.modality.render(
                self.anatomies[slot.patient], self.modality.view(rng), slot.true_label, h, w, rng
            )
            if slot.site == MARKED_SITE:
                img = _mark(img)
            if slot.kind in DEGRADE:
                img = DEGRADE[slot.kind](img, rng)
            ext = ".png"
            if slot.kind == "corrupt":
                ext = _extension(rng)
                data = truncate(encode(img, ext, 90), rng)
            else:
                data = encode(img, ext)
                self.pixels[i] = img
            self.encoded[i] = data
        return ext, data, item


def generate_demo(out_dir: Path, params: DemoParams, seed: int) -> dict:
    """Write the demo dataset and return its ground truth.

    Writes ``out_dir/images/<patient>/<patient>_<nn>.png|.jpg``, ``out_dir/labels.csv``
    (``image_path,label,patient_id,site,sex,age``; every file, including the corrupt and non-image ones, so
    that ingest rejects them with a reason) and ``out_dir/truth.json``. ``out_dir/images`` is
    emptied first so the output is exactly the generated set.

    Args:
        out_dir: Destination folder (created).
        params: The ``demo`` section of params.
        seed: Top-level seed; the same seed gives byte-identical files.

    Returns:
        The truth: ``{"items": [{"path", "kind", "source"?, "true_label"?, "transform"?,
        "subtype"?}], "shortcuts": [attribute, ...]}``, one item per planted problem, sorted by
        path; ``shortcuts`` names what the shortcut audit should flag (empty without a marked site).

    Raises:
        ValueError: If the params ask for more planted problems than the drawn images allow.
    """
    out_dir = Path(out_dir)
    slots = plan_demo(params, seed)
    size = params.image_size
    images_dir = out_dir / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)

    modality = MODALITIES[params.modality]
    anatomies: dict[str, object] = {}
    for patient in sorted({s.patient for s in slots}):
        prng = np.random.default_rng([seed, int(patient[1:])])
        anatomies[patient] = modality.patient(prng)
    renderer = _Renderer(slots, anatomies, size, size * 17 // 16, *_odd_shapes(size), modality)
    items: list[dict] = []
    paths = renderer.paths
    # Originals first (duplicates need their source's bytes), in slot order.
    order = sorted(range(len(slots)), key=lambda i: (slots[i].source is not None, i))
    for i in tqdm(order, desc="demo images", unit="img", mininterval=1.0):
        slot = slots[i]
        ext, data, item = renderer.render(i)
        path = slot.name + ext
        paths[i] = path
        # Plain writes: the images folder was emptied and is rewritten as a whole.
        (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / path).write_bytes(data)
        if slot.flipped:
            items.append({"path": path, "kind": "flipped_label", "true_label": slot.true_label})
        elif slot.kind != "clean":
            items.append({"path": path, **item})

    labels = pd.DataFrame(
        [(paths[i], s.label, s.patient, s.site, s.sex, s.age) for i, s in enumerate(slots)],
        columns=LABELS_COLUMNS,
    ).sort_values("image_path", ignore_index=True)
    write_csv(labels, out_dir / "labels.csv")
    marked = any(s.site == MARKED_SITE for s in slots)
    truth = {
        "items": sorted(items, key=lambda it: it["path"]),
        "shortcuts": list(SHORTCUT_ATTRIBUTES) if marked else [],
    }
    write_json(truth, out_dir / "truth.json")
    return truth


def summarize(truth: dict) -> dict[str, int]:
    """Count planted problems per kind (every kind present, zero when none)."""
    counts = Counter(it["kind"] for it in truth["items"])
    return {k: counts.get(k, 0) for k in KINDS}
