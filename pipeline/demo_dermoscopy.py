"""The demo's RGB modality: dermoscopy-like skin-lesion photographs (``demo.modality: dermoscopy``).

The chest-radiograph demo is grayscale; real datasets are often colour photographs, where the
defaults written for radiographs fail (issue 17: colour ignored by near-duplicate confirmation,
bright but unclipped photographs excluded as overexposed). This module draws an RGB dataset of
the same shape (patients, classes, planted problems: :mod:`pipeline.demo` plans and plants them
the same way) so those paths can be tested and scored:

* each **patient** has a skin tone, a hair density and a dermatoscope (field-of-view vignette,
  illumination tilt, noise) shared by all their images; each **image** is a different lesion, so
  two images of one patient are never near duplicates of each other;
* each **class** is a lesion type whose colour, border and texture vary from lesion to lesion:
  ``naevus`` (brown, round, even, a pigment network), ``melanoma`` (irregular, asymmetric, several
  colours: dark brown, black, blue-grey), ``vascular`` (red to magenta lobules),
  ``keratosis`` (light brown, sharp border, a cerebriform texture).

Colours are drawn in CIELAB (hue and chroma per lesion), so lesions of one class vary in hue and
lesions of different classes can share a shape and differ mainly in colour. Output is BGR uint8
(OpenCV's order, as :func:`pipeline.demo.encode` writes it).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FINDINGS = ("naevus", "melanoma", "vascular", "keratosis")
"""The lesion types the dermoscopy demo can draw (``demo.classes`` names)."""

# Lesion colour per finding: (L range, hue range in degrees, chroma range) in CIELAB.
_COLOUR = {
    "naevus": ((30.0, 50.0), (45.0, 70.0), (18.0, 34.0)),
    "melanoma": ((18.0, 40.0), (35.0, 70.0), (10.0, 28.0)),
    "vascular": ((35.0, 55.0), (-10.0, 25.0), (30.0, 55.0)),
    "keratosis": ((45.0, 62.0), (55.0, 80.0), (16.0, 30.0)),
}
# Border irregularity (amplitude of the radial harmonics) and texture strength per finding.
_SHAPE = {"naevus": 0.06, "melanoma": 0.22, "vascular": 0.12, "keratosis": 0.08}


@dataclass(frozen=True)
class Skin:
    """What a patient's images share: skin, hair and the dermatoscope."""

    light: float  # skin L*
    hue: float  # skin hue angle, degrees
    chroma: float
    hair: int  # number of hair strands
    vignette: float  # darkening of the corners (circular field of view)
    tilt: float  # illumination gradient strength
    noise: float  # sensor noise, grey levels


@dataclass(frozen=True)
class Lesion:
    """Per-image variation: where the lesion sits, its size and orientation, the exposure."""

    dx: float
    dy: float
    radius: float  # fraction of the image side
    angle: float  # radians
    exposure: float


def sample_skin(rng: np.random.Generator) -> Skin:
    """Draw one patient's skin and dermatoscope."""
    return Skin(
        light=rng.uniform(62.0, 82.0),
        hue=rng.uniform(45.0, 70.0),
        chroma=rng.uniform(12.0, 24.0),
        hair=int(rng.integers(0, 6)),
        vignette=rng.uniform(0.1, 0.35),
        tilt=rng.uniform(0.02, 0.1),
        noise=rng.uniform(1.5, 4.0),
    )


def sample_lesion(rng: np.random.Generator) -> Lesion:
    """Draw the per-image variation of one lesion photograph."""
    return Lesion(
        dx=rng.uniform(-0.08, 0.08),
        dy=rng.uniform(-0.08, 0.08),
        radius=rng.uniform(0.2, 0.34),
        angle=float(rng.uniform(0, 2 * np.pi)),
        exposure=rng.uniform(0.94, 1.06),
    )


def _lowpass(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _lab(light: float, hue_deg: float, chroma: float) -> np.ndarray:
    h = np.deg2rad(hue_deg)
    return np.array([light, chroma * np.cos(h), chroma * np.sin(h)], np.float32)


def _shape(rng: np.random.Generator, irregular: float) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes and phases of the radial harmonics 2..6 of a lesion border."""
    amp = rng.uniform(0.3, 1.0, 5).astype(np.float32) * irregular / np.arange(1, 6, dtype=np.float32) ** 0.5
    return amp, rng.uniform(0, 2 * np.pi, 5).astype(np.float32)


def render_lesion(
    skin: Skin, lesion: Lesion, finding: str, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw one dermoscopy-like image of a lesion on the patient's skin.

    Args:
        skin: The patient's skin and dermatoscope.
        lesion: This image's lesion placement and exposure.
        finding: One of :data:`FINDINGS`.
        height, width: Image size in pixels; the lesion scales with ``min(height, width)``.
        rng: Source of the lesion's shape, colours, texture, hair and noise.

    Returns:
        uint8 array of shape (height, width, 3), BGR.
    """
    if finding not in FINDINGS:
        raise ValueError(f"render_lesion: unknown finding {finding!r}; expected one of {list(FINDINGS)}")
    s = float(min(height, width))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gx = (xx - width / 2) / (s / 2)
    gy = (yy - height / 2) / (s / 2)
    lx, ly = gx - lesion.dx * 2, gy - lesion.dy * 2
    r = np.hypot(lx, ly)
    theta = np.arctan2(ly, lx) - lesion.angle
    amp, phase = _shape(rng, _SHAPE[finding])
    k = np.arange(2, 7, dtype=np.float32)
    border = 1.0 + (amp[:, None, None] * np.cos(k[:, None, None] * theta + phase[:, None, None])).sum(0)
    radius = 2 * lesion.radius * border
    soft = 0.04 if finding == "keratosis" else (0.12 if finding == "melanoma" else 0.08)
    inside = np.clip((radius - r) / (soft * 2 * lesion.radius) + 0.5, 0.0, 1.0)
    inside = inside * inside * (3 - 2 * inside)

    # Skin: the patient's tone with a faint texture.
    skin_lab = _lab(skin.light, skin.hue, skin.chroma)
    lab = np.broadcast_to(skin_lab, (height, width, 3)).copy()
    lab[..., 0] += 1.5 * _lowpass(rng, height, width, max(2, int(s / 10)))

    # Lesion: one colour per lesion (hue and chroma drawn within the class's range), a texture.
    (l_lo, l_hi), (h_lo, h_hi), (c_lo, c_hi) = _COLOUR[finding]
    main = _lab(rng.uniform(l_lo, l_hi), rng.uniform(h_lo, h_hi), rng.uniform(c_lo, c_hi))
    colour = np.broadcast_to(main, (height, width, 3)).copy()
    fine = _lowpass(rng, height, width, max(2, int(s / 24)))
    if finding == "naevus":  # pigment network: a reticular darkening
        colour[..., 0] -= 6.0 * np.clip(fine, 0, None)
    elif finding == "melanoma":  # blotches of black and blue-grey
        blotch = _lowpass(rng, height, width, max(2, int(s / 8)))
        colour[..., 0] -= 10.0 * np.clip(blotch, 0, None)
        colour += np.clip(-blotch, 0, None)[..., None] * np.array([8.0, -6.0, -14.0], np.float32)
    elif finding == "vascular":  # red lobules
        colour[..., 0] -= 8.0 * np.clip(fine, 0, None)
        colour[..., 1] += 8.0 * np.clip(fine, 0, None)
    else:  # keratosis: cerebriform ridges
        colour[..., 0] += 7.0 * np.sin(6.0 * fine)
    lab = lab * (1.0 - inside[..., None]) + colour * inside[..., None]

    # Hair: thin dark curves across the field.
    for _ in range(skin.hair):
        p0 = rng.uniform(0, 1, 2) * (width, height)
        d = rng.uniform(-1, 1, 2)
        pts = np.array([p0 + t * d * s * 0.6 + rng.normal(0, s * 0.02, 2) for t in np.linspace(-1, 1, 6)])
        mask = np.zeros((height, width), np.float32)
        cv2.polylines(mask, [pts.astype(np.int32)], False, 1.0, max(1, round(s / 128)), cv2.LINE_AA)
        lab[..., 0] -= 35.0 * mask

    # The dermatoscope: exposure, a tilt of the illumination, a dark circular vignette.
    tilt_dir = rng.uniform(0, 2 * np.pi)
    light = lesion.exposure * (1.0 + skin.tilt * (np.cos(tilt_dir) * gx + np.sin(tilt_dir) * gy))
    light *= 1.0 - skin.vignette * np.clip(np.hypot(gx, gy) - 0.85, 0.0, None) ** 1.5 * 2.0
    lab[..., 0] = np.clip(lab[..., 0] * light, 0.0, 100.0)
    bgr = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2BGR) * 255.0
    bgr = cv2.GaussianBlur(bgr, (0, 0), 0.5 * s / 128)
    bgr += rng.normal(0.0, skin.noise, bgr.shape).astype(np.float32)
    return np.clip(np.rint(bgr), 0, 255).astype(np.uint8)


def colour_blank(gray: np.ndarray, skin: Skin) -> np.ndarray:
    """A near-constant frame tinted with the patient's skin colour (BGR), from a gray blank."""
    tint = cv2.cvtColor(_lab(skin.light, skin.hue, skin.chroma)[None, None], cv2.COLOR_Lab2BGR)[0, 0]
    tint = tint / max(float(tint.mean()), 1e-3)
    return np.clip(np.rint(gray[..., None].astype(np.float32) * tint), 0, 255).astype(np.uint8)
