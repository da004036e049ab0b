"""Images that do not belong in the demo's chest-radiograph set, and the site's burned-in marker.

The demo plants, as truth kind ``outlier`` with a ``subtype``, the shapes that most often slip
into a real medical-imaging dataset (issue 15):

* ``lateral``: a lateral chest view among frontal ones (another view);
* ``other_modality``: an axial CT-like slice (another modality / body part);
* ``photo``: an RGB outdoor-like photograph (not medical at all);
* ``document``: a scanned text page (a report or a screenshot saved as an image);
* ``inverted``, ``rotated`` (90, 180 or 270 degrees), ``mirrored`` (left-right): a radiograph
  of the patient stored the wrong way.

And, for the shortcut, :func:`burn_marker`: a bright box with a letter in the top-left corner,
as a site's detector or technologist leaves on every film.

Everything draws from the ``rng`` passed in, so the demo stays byte-reproducible.
"""

from __future__ import annotations

import cv2
import numpy as np

OUTLIER_SUBTYPES = ("lateral", "other_modality", "photo", "document", "inverted", "rotated", "mirrored")
"""Planted outlier subtypes; the last three transform a radiograph of the patient."""
DERIVED_SUBTYPES = ("inverted", "rotated", "mirrored")


def _sig(x: np.ndarray, eps: float) -> np.ndarray:
    t = np.clip(x * np.float32(0.25 / eps) + np.float32(0.5), 0.0, 1.0)
    return t * t * (np.float32(3.0) - np.float32(2.0) * t)


def _grid(h: int, w: int, rng: np.random.Generator, jitter: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
    s = float(min(h, w))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = w / 2 + rng.uniform(-jitter, jitter) * s
    cy = h / 2 + rng.uniform(-jitter, jitter) * s
    return (xx - cx) / (s / 2), (yy - cy) / (s / 2)


def _texture(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _finish(b: np.ndarray, rng: np.random.Generator, noise: float = 3.0) -> np.ndarray:
    """Coarse overlying density and a heel-effect gradient unique to the acquisition (so two of
    these images are never near duplicates of each other), exposure, a slight blur and noise, as
    :func:`pipeline.demo.render_radiograph` does."""
    h, w = b.shape
    b = b + 0.08 * _texture(rng, h, w, max(2, min(h, w) // 5)) * (b > 0.08)
    gx, gy = _grid(h, w, rng, jitter=0.0)
    angle = rng.uniform(0, 2 * np.pi)
    b = b * (1.0 + rng.uniform(0.08, 0.25) * (np.cos(angle) * gx + np.sin(angle) * gy))
    img = 255.0 * (rng.uniform(-0.03, 0.05) + rng.uniform(0.85, 1.15) * np.clip(b, 0, 1))
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.5 * min(b.shape) / 128)
    img += rng.normal(0.0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_lateral(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A lateral chest view: the X-rays cross the whole chest, so the field is brighter; one lung
    field behind the heart, the spine at the back, the sternum in front, the raised arms above."""
    gx, gy = _grid(h, w, rng, jitter=0.08)
    sc = rng.uniform(0.85, 1.12)
    gx, gy = gx / sc, gy / sc
    lw, lh, ly = rng.uniform(0.34, 0.5), rng.uniform(0.45, 0.65), rng.uniform(-0.12, 0.08)
    body = _sig(1.0 - (gx / rng.uniform(0.85, 1.05)) ** 2 - ((gy - 0.1) / 1.4) ** 2, 0.05)
    lung = _sig(1.0 - ((gx - 0.12) / lw) ** 2 - ((gy - ly) / lh) ** 2, 0.05)
    lung *= _sig(0.4 + 0.35 * gx - gy, 0.05)  # the diaphragm slopes down towards the back
    heart = _sig(1.0 - ((gx + 0.3) / 0.32) ** 2 - ((gy - 0.3) / 0.3) ** 2, 0.05)
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * gy / 0.14)
    spine = _sig(0.1 - np.abs(gx - 0.62 - 0.1 * gy), 0.02) * vertebrae
    sternum = _sig(0.03 - np.abs(gx + 0.7 + 0.05 * gy), 0.01) * _sig(0.55 - np.abs(gy + 0.05), 0.05)
    arms = _sig(1.0 - ((gx - 0.05) / 0.7) ** 2 - ((gy + 0.9) / 0.3) ** 2, 0.05)
    b = 0.1 + 0.62 * body - 0.22 * lung * body * (1.0 - 0.8 * heart)
    b += 0.2 * spine + 0.12 * sternum + 0.2 * arms * body
    b += 0.04 * _texture(rng, h, w, max(2, min(h, w) // 20)) * lung
    return _finish(b, rng)


def render_ct_slice(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An axial CT-like chest slice: round body on black air, two lungs, a vertebra, the table."""
    gx, gy = _grid(h, w, rng, jitter=0.08)
    a, c = rng.uniform(0.65, 0.92), rng.uniform(0.45, 0.7)
    body = _sig(1.0 - (gx / a) ** 2 - (gy / c) ** 2, 0.02)
    fat = body * (1.0 - _sig(1.0 - (gx / (a - 0.07)) ** 2 - (gy / (c - 0.07)) ** 2, 0.02))
    lx, lw, lh = rng.uniform(0.28, 0.42), rng.uniform(0.18, 0.3), rng.uniform(0.25, 0.42)
    lungs = sum(_sig(1.0 - ((gx - sx * lx) / lw) ** 2 - ((gy + 0.02) / lh) ** 2, 0.02) for sx in (-1.0, 1.0))
    heart = _sig(1.0 - ((gx + 0.08) / 0.24) ** 2 - ((gy + 0.12) / 0.2) ** 2, 0.02)
    vertebra = _sig(1.0 - (gx / 0.1) ** 2 - ((gy - 0.38) / 0.1) ** 2, 0.015)
    ring = np.hypot(gx / (a - 0.1), gy / (c - 0.1))
    ribs = _sig(0.04 - np.abs(ring - 1.0), 0.01) * _sig(np.cos(10 * np.arctan2(gy, gx)) - 0.3, 0.1)
    table = _sig(0.03 - np.abs(gy - c - 0.12 - 0.05 * gx**2), 0.01) * _sig(0.95 - np.abs(gx), 0.03)
    b = 0.45 * body - 0.07 * fat - 0.38 * lungs * (1.0 - heart) + 0.08 * heart
    b += 0.5 * vertebra + 0.4 * ribs * body + 0.35 * table
    return _finish(b, rng, noise=4.0)


def render_photo(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB (BGR order, as OpenCV writes) outdoor-like picture: sky, ground, coloured objects."""
    horizon = int(h * rng.uniform(0.35, 0.65))
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    sky_top = np.array([rng.uniform(150, 230), rng.uniform(90, 160), rng.uniform(30, 90)], np.float32)
    sky_low = np.array([rng.uniform(200, 250), rng.uniform(180, 230), rng.uniform(150, 210)], np.float32)
    img = np.broadcast_to(sky_top + (sky_low - sky_top) * yy, (h, w, 3)).copy()
    ground = np.array([rng.uniform(20, 80), rng.uniform(80, 150), rng.uniform(40, 110)], np.float32)
    img[horizon:] = ground + 25.0 * _texture(rng, h - horizon, w, max(2, w // 16))[:, :, None]
    for _ in range(int(rng.integers(3, 7))):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        centre = (int(rng.integers(0, w)), int(rng.integers(h // 4, h)))
        axes = (int(rng.integers(w // 16, w // 5)), int(rng.integers(h // 16, h // 5)))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    img += rng.normal(0.0, 4.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_document(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A scanned text page: light paper, margins, a title, lines of dark word blocks."""
    img = np.full((h, w), rng.uniform(225, 250), np.float32)
    margin = int(w * rng.uniform(0.08, 0.14))
    line_h = max(3, int(h * rng.uniform(0.04, 0.06)))
    y = int(h * rng.uniform(0.06, 0.12))
    ink = float(rng.uniform(20, 70))
    cv2.rectangle(img, (margin, y), (int(w * rng.uniform(0.4, 0.7)), y + line_h), ink, -1)  # the title
    y += 2 * line_h
    while y + line_h < h - margin:
        x, end = margin, w - margin - int(rng.integers(0, w // 4))
        while x < end:
            word = int(rng.integers(max(2, w // 40), max(3, w // 9)))
            cv2.rectangle(img, (x, y), (min(x + word, end), y + max(1, line_h // 2)), ink, -1)
            x += word + max(2, w // 60)
        y += line_h
    img = cv2.GaussianBlur(img, (0, 0), 0.6 * min(h, w) / 128)
    img += rng.normal(0.0, 3.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def transform_radiograph(img: np.ndarray, subtype: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Store a radiograph the wrong way: ``inverted`` (negative), ``rotated`` or ``mirrored``.

    Returns:
        (pixels, short description such as ``"rotated 90"``).
    """
    if subtype == "inverted":
        return 255 - img, "inverted"
    if subtype == "rotated":
        k = int(rng.integers(1, 4))
        return np.ascontiguousarray(np.rot90(img, k)), f"rotated {90 * k}"
    if subtype == "mirrored":
        return np.ascontiguousarray(img[:, ::-1]), "mirrored left-right"
    raise ValueError(f"transform_radiograph: unknown subtype {subtype!r}; expected one of {DERIVED_SUBTYPES}")


RENDERERS = {
    "lateral": render_lateral,
    "other_modality": render_ct_slice,
    "photo": render_photo,
    "document": render_document,
}


def burn_marker(img: np.ndarray) -> np.ndarray:
    """A bright box with a dark letter burned into the top-left corner (a site's film marker)."""
    out = img.copy()
    s = min(img.shape[:2])
    side = max(6, round(s * 0.11))
    x0 = y0 = max(1, round(s * 0.03))
    cv2.rectangle(out, (x0, y0), (x0 + side, y0 + side), 245, -1)
    scale = side / 24.0
    cv2.putText(
        out, "A", (x0 + max(1, side // 6), y0 + side - max(1, side // 6)), cv2.FONT_HERSHEY_SIMPLEX,
        scale, 30, max(1, round(side / 10)), cv2.LINE_AA,
    )  # fmt: skip
    return out
