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


CAPTION_FONT = cv2.FONT_HERSHEY_PLAIN
CAPTION_SCALE = 0.8
MAX_CAPTION_LINES = 4


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, CAPTION_FONT, CAPTION_SCALE, 1)[0][0]


def caption_lines(caption: str, width_px: int, max_lines: int = MAX_CAPTION_LINES) -> list[str]:
    """Break a caption into lines that each fit ``width_px`` pixels when drawn.

    Lines are split at ``\\n``, then wrapped at spaces, and a word wider than the tile (a long file
    name) is broken between characters, so nothing is cut and nothing spills into the next tile.
    Only past ``max_lines`` lines is the caption shortened, and then the last line ends in ``..``.
    """
    lines: list[str] = []
    for part in caption.split("\n"):
        line = ""
        for word in part.split(" "):
            candidate = f"{line} {word}" if line else word
            if _text_width(candidate) <= width_px:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for ch in word:  # a word wider than the tile is broken between characters
                if line and _text_width(line + ch) > width_px:
                    lines.append(line)
                    line = ""
                line += ch
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and _text_width(last + "..") > width_px:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last + ".."]
    return lines


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
        captions: One text per image; ``\\n`` starts a new line and long lines are wrapped to the
            tile's width (see :func:`caption_lines`), so a caption never overlaps its neighbour.
            ``None`` for no captions.
        tile_px: Side of each square tile in pixels.
        n_cols: Tiles per row.
        caption_px: Height of one caption line in pixels; the caption strip under each row of tiles
            is as many lines high as the longest caption needs.

    Returns:
        uint8 RGB array of shape (rows * (tile_px + n_lines * caption_px), n_cols * tile_px, 3). An
        empty input gives a small sheet that says "nothing to show".
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
    # 2 px margin each side (anti-aliased strokes reach one pixel past the measured width)
    wrapped = [caption_lines(cap, tile_px - 4) if cap else [] for cap in captions]
    cell_h = tile_px + caption_px * max(1, max(len(w) for w in wrapped))
    sheet = np.full((n_rows * cell_h, n_cols * tile_px, 3), 255, np.uint8)
    for i, (img, lines) in enumerate(zip(images, wrapped, strict=True)):
        r, c = divmod(i, n_cols)
        y, x = r * cell_h, c * tile_px
        sheet[y : y + tile_px, x : x + tile_px] = _fit(to_display_uint8(img), tile_px)
        for k, text in enumerate(lines):
            base = (x + 2, y + tile_px + (k + 1) * caption_px - 4)
            cv2.putText(sheet, text, base, CAPTION_FONT, CAPTION_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
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
    """Gallery of flagged images, each captioned ``score <score>`` over its file name (unreadable files
    are skipped). The score is the issue score in [0, 1], lower is worse; 0.00 is the worst image of
    the dataset on that measure, not a missing value.

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
            captions.append(f"score {score:.2f}\n{Path(image_id).name}")
    return make_contact_sheet(images, captions, tile_px=128, n_cols=6)


def pairs_sheet(
    pairs: pd.DataFrame,
    paths: Mapping[str, str],
    root: str | Path,
    max_pixels: int,
    multi_frame: str = "first",
) -> np.ndarray:
    """Candidate duplicate pairs side by side: the two images of pair ``k`` are neighbouring tiles.

    Each tile's caption reads ``pair <k>: copy`` (confirmed near duplicate) or ``pair <k>: not copy``
    (a hash candidate the pixel check rejected), then ``sim <similarity> dist <bits>`` (the aligned
    thumbnail correlation, 1 = identical, and the Hamming distance between the perceptual hashes), then
    the file name.

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
        k = len(images) // 2 + 1
        verdict = "copy" if row.is_confirmed else "not copy"
        for pixels, image_id in zip(pair, ids, strict=True):
            images.append(pixels)
            captions.append(
                f"pair {k}: {verdict}\nsim {row.similarity:.3f} dist {row.distance}\n{Path(image_id).name}"
            )
    return make_contact_sheet(images, captions, tile_px=128, n_cols=6)


def thumbnail(image: np.ndarray, size_px: int = 128) -> np.ndarray:
    """A display copy whose longer side is ``size_px`` (aspect ratio kept, no padding), uint8 RGB."""
    img = to_display_uint8(image)
    h, w = img.shape[:2]
    scale = size_px / max(h, w, 1)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)


def read_thumbnails(
    image_ids: Sequence[str],
    paths: Mapping[str, str],
    root: str | Path,
    max_pixels: int,
    multi_frame: str = "first",
    size_px: int = 128,
) -> dict[str, np.ndarray]:
    """image_id -> :func:`thumbnail` of the file, for the ids in ``paths`` that still decode."""
    out = {}
    for image_id in dict.fromkeys(image_ids):
        if (
            image_id in paths
            and (pixels := read_for_sheet(Path(root) / paths[image_id], max_pixels, multi_frame)) is not None
        ):
            out[image_id] = thumbnail(pixels, size_px)
    return out
