"""Contact sheets: a grid of captioned thumbnails, for humans reviewing flagged images.

The quality stage's per-issue galleries (:func:`issue_sheet`), dedup's pair sheet (:func:`pairs_sheet`) and
the label-issue sheet are all built here, from files under the data root or from arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def to_display_uint8(image: np.ndarray) -> np.ndarray:
    """Map any decoded image (uint8/uint16/float, gray or RGB) to uint8 RGB for display.

    uint16 images are stretched from their own 0.5th to 99.5th percentile so that 12- and
    16-bit radiographs are visible; uint8 images are shown as they are.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = img.astype(np.float32)
        lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
        img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
        img = (img * 255).round().astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img[:, :, :3]


def _fit(image: np.ndarray, tile_px: int) -> np.ndarray:
    """Resize keeping the aspect ratio and pad to a square tile (grey background)."""
    h, w = image.shape[:2]
    scale = tile_px / max(h, w, 1)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    tile = np.full((tile_px, tile_px, 3), 64, np.uint8)
    y, x = (tile_px - nh) // 2, (tile_px - nw) // 2
    tile[y : y + nh, x : x + nw] = small
    return tile


def make_contact_sheet(
    images: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    tile_px: int = 128,
    n_cols: int = 6,
    caption_px: int = 14,
) -> np.ndarray:
    """Lay images out in a grid with a caption under each.

    Args:
        images: Decoded images of any size, dtype and channel count.
        captions: One short text per image (cut to fit the tile); ``None`` for no captions.
        tile_px: Side of each square tile in pixels.
        n_cols: Tiles per row.
        caption_px: Height of the caption strip under each tile.

    Returns:
        uint8 RGB array of shape (rows * (tile_px + caption_px), n_cols * tile_px, 3). An empty
        input gives a small sheet that says "nothing to show".
    """
    if len(images) == 0:
        sheet = np.full((40, 320, 3), 255, np.uint8)
        cv2.putText(
            sheet, "nothing to show", (8, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA
        )
        return sheet
    captions = list(captions) if captions is not None else [""] * len(images)
    if len(captions) != len(images):
        raise ValueError(f"expected one caption per image, got {len(captions)} for {len(images)} images")
    n_cols = max(1, min(n_cols, len(images)))
    n_rows = -(-len(images) // n_cols)
    cell_h = tile_px + caption_px
    sheet = np.full((n_rows * cell_h, n_cols * tile_px, 3), 255, np.uint8)
    max_chars = max(4, tile_px // 6)
    for i, (img, cap) in enumerate(zip(images, captions, strict=True)):
        r, c = divmod(i, n_cols)
        y, x = r * cell_h, c * tile_px
        sheet[y : y + tile_px, x : x + tile_px] = _fit(to_display_uint8(img), tile_px)
        if cap:
            text = cap if len(cap) <= max_chars else cap[: max_chars - 2] + ".."
            cv2.putText(
                sheet,
                text,
                (x + 2, y + tile_px + caption_px - 4),
                cv2.FONT_HERSHEY_PLAIN,
                0.8,
                (0, 0, 0),
                1,
                cv2.LINE_AA,
            )
    return sheet


def read_for_sheet(path: str | Path, max_pixels: int, multi_frame: str = "first") -> np.ndarray | None:
    """Decode one image to show on a sheet, or ``None`` (with a warning) when it no longer decodes.

    Sheets are drawn after ingest; a file changed on disk since then must not stop the stage,
    the sheet just shows the others.
    """
    from pipeline.images import ImageRejected, read_image

    try:
        return read_image(Path(path), max_pixels, multi_frame).pixels
    except ImageRejected as err:
        log.warning("%s: cannot decode for the sheet: %s", path, err)
        return None


def issue_sheet(
    image_ids: Sequence[str],
    scores: Sequence[float],
    paths: Mapping[str, str],
    root: str | Path,
    max_pixels: int,
    multi_frame: str = "first",
) -> np.ndarray:
    """Gallery of flagged images, each captioned ``<score> <file name>`` (unreadable files are skipped).

    Args:
        image_ids: The images, in the order to show them (worst first).
        scores: Their issue scores in [0, 1] (lower is worse).
        paths: image_id -> path relative to ``root``.
        root: The data root.
        max_pixels, multi_frame: Decoding limits (ingest params).
    """
    images, captions = [], []
    for image_id, score in zip(image_ids, scores, strict=True):
        pixels = read_for_sheet(Path(root) / paths[image_id], max_pixels, multi_frame)
        if pixels is not None:
            images.append(pixels)
            captions.append(f"{score:.2f} {Path(image_id).name}")
    return make_contact_sheet(images, captions, tile_px=128, n_cols=6)


def pairs_sheet(
    pairs: pd.DataFrame,
    paths: Mapping[str, str],
    root: str | Path,
    max_pixels: int,
    multi_frame: str = "first",
) -> np.ndarray:
    """Candidate duplicate pairs side by side, each tile captioned ``<dup|no> <similarity> d<bits> <stem>``.

    Args:
        pairs: ``image_id_a, image_id_b, is_confirmed, similarity, distance`` rows to show.
        paths, root, max_pixels, multi_frame: As in :func:`issue_sheet`.
    """
    images, captions = [], []
    for row in pairs.itertuples():
        ids = (row.image_id_a, row.image_id_b)
        pair = [read_for_sheet(Path(root) / paths[x], max_pixels, multi_frame) for x in ids]
        if any(p is None for p in pair):
            continue
        verdict = "dup" if row.is_confirmed else "no"
        for pixels, image_id in zip(pair, ids, strict=True):
            images.append(pixels)
            captions.append(f"{verdict} {row.similarity:.3f} d{row.distance} {Path(image_id).stem}")
    return make_contact_sheet(images, captions, tile_px=128, n_cols=6)
