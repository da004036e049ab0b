"""Contact-sheet captions fit their own tile: never cut mid-name, never drawn over the neighbour."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.sheets import CAPTION_FONT, CAPTION_SCALE, caption_lines, make_contact_sheet


def _width(text: str) -> int:
    return cv2.getTextSize(text, CAPTION_FONT, CAPTION_SCALE, 1)[0][0]


@pytest.mark.parametrize(
    "caption",
    [
        "dup 0.980 d6 p0083_04_near_2.png",  # the caption that used to overlap its neighbour
        "pair 12: not copy\nsim 0.955 dist 10\nsite_b/p0417_03_lateral_view_extra_long_name.dcm",
        "x" * 120,
        "#7 a\neffusion -> nodule",
    ],
)
def test_caption_lines_fit_the_width_and_keep_every_character(caption):
    lines = caption_lines(caption, 124, max_lines=10)
    assert all(_width(line) <= 124 for line in lines)
    # wrapping only moves text to the next line: nothing is cut
    assert "".join(lines).replace(" ", "") == caption.replace("\n", "").replace(" ", "")


def test_caption_lines_mark_a_shortened_caption():
    lines = caption_lines("y" * 500, 60, max_lines=2)
    assert len(lines) == 2 and lines[-1].endswith("..") and _width(lines[-1]) <= 60


def test_sheet_captions_stay_inside_their_tile():
    """Dark caption pixels never sit on a tile's first or last column, where a neighbour's text would."""
    tile = 128
    images = [np.full((50, 80), 200, np.uint8) for _ in range(6)]
    captions = ["dup 0.980 d6 p0083_04_near_2.png" + "W" * 30] * 6
    sheet = make_contact_sheet(images, captions, tile_px=tile, n_cols=3)
    cell_h = sheet.shape[0] // 2  # two rows of tiles, each with its caption strip
    strip = cv2.cvtColor(sheet, cv2.COLOR_RGB2GRAY)[tile:cell_h, :]  # first row's caption strip
    assert (strip < 250).any(), "the captions were drawn"
    edges = [c * tile + d for c in range(3) for d in (0, tile - 1)]
    assert (strip[:, edges] >= 250).all(), "caption text reaches a tile edge"
    # the strip grew to hold the wrapped lines instead of cutting them
    assert cell_h > tile + 14
