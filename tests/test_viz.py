"""Drawing: a stable distinct palette, overlays with a legend, heatmaps."""

import numpy as np
import pytest

from pacl_core.segment import Segmenter
from pacl_core.viz import (
    BACKGROUND_COLOR,
    colorize_mask,
    draw_heatmaps,
    draw_overlay,
    heatmap_overlay,
    overlay_mask,
    palette,
)
from tests.helpers import random_image


def test_palette_is_fixed_and_distinct():
    p = palette(50)
    assert p.shape == (50, 3) and p.dtype == np.uint8
    assert np.array_equal(palette(5), p[:5])  # the same index always gets the same colour
    assert len({tuple(c) for c in p}) == 50
    d = np.abs(p[:20, None].astype(int) - p[None, :20].astype(int)).sum(-1)
    assert d[~np.eye(20, dtype=bool)].min() > 60  # the first 20 are well separated


def test_colorize_and_overlay():
    mask = np.array([[0, 1], [-1, 2]])
    color = colorize_mask(mask, 3)
    assert tuple(color[1, 0]) == BACKGROUND_COLOR and tuple(color[0, 1]) == tuple(palette(3)[1])
    img = np.full((2, 2, 3), 100, np.uint8)
    out = overlay_mask(img, np.full((2, 2), -1), 3)
    assert np.array_equal(out, img)  # background leaves the image as it is
    big = np.zeros((6, 6), int)
    big[:, 3:] = 1
    big[5, 5] = -1
    out = overlay_mask(np.full((6, 6, 3), 100, np.uint8), big, 3, alpha=0.5)
    want = np.round(0.5 * 100 + 0.5 * palette(3)[0].astype(float))
    assert np.abs(out[1, 0].astype(float) - want).max() <= 1  # inside a region: half photo, half its colour
    assert (out[:, 2:4] == 255).all()  # the boundary between the two regions is outlined in white
    many = np.arange(300 * 4).reshape(30, 40) % 300  # more words than the fast table takes
    assert np.array_equal(colorize_mask(many, 300), np.vstack([palette(300), [BACKGROUND_COLOR]])[many])


def test_overlay_with_legend_and_heatmaps(tiny, rng):
    seg = Segmenter(tiny, background="score:0.0")(random_image(rng, 60, 80), "dog, grass, 🐶 sky")
    over = draw_overlay(seg)
    assert over.dtype == np.uint8 and over.shape[0] >= 320 and over.shape[1] > over.shape[0] * 80 / 60
    heat = draw_heatmaps(seg)
    assert [w for w, _ in heat] == seg.words and all(h.ndim == 3 for _, h in heat)
    hot = heatmap_overlay(np.zeros((400, 400, 3), np.uint8), np.ones((400, 400)), alpha=1.0)
    cold = heatmap_overlay(np.zeros((400, 400, 3), np.uint8), np.zeros((400, 400)), alpha=1.0)
    assert hot[..., 0].mean() > cold[..., 0].mean() and cold[..., 2].mean() > hot[..., 2].mean()


def test_colormap_table_equals_matplotlib():
    from matplotlib import colormaps

    from pacl_core.viz import apply_colormap

    heat = np.concatenate([np.random.default_rng(0).random(5000), [0.0, 1.0, 0.5, 255 / 256, -0.2, 1.3]])[None]
    for cmap in ("turbo", "magma"):
        ref = (colormaps[cmap](np.clip(heat, 0, 1))[..., :3] * 255.0).round().astype(np.uint8)
        np.testing.assert_array_equal(apply_colormap(heat, cmap), ref)


def test_heatmaps_at_display_size(tiny):
    from pacl_core.segment import Segmenter
    from pacl_core.viz import display_size, draw_heatmaps

    img = np.random.default_rng(1).integers(0, 256, (600, 900, 3), dtype=np.uint8)
    seg = Segmenter(tiny, image_size=32)(img, "sky, grass")
    small = draw_heatmaps(seg, max_side=300)
    assert [w for w, _ in small] == ["sky", "grass"] and all(im.shape == (200, 300, 3) for _, im in small)
    assert draw_heatmaps(seg)[0][1].shape == (600, 900, 3)  # full resolution without max_side
    # the display-size maps are the full-resolution ones, resized (up to interpolation)
    full = seg.heatmaps  # (K, 600, 900)
    shrunk = seg.heatmaps_at((200, 300))
    ref = full.reshape(2, 200, 3, 300, 3).mean(axis=(2, 4))
    assert np.abs(shrunk - ref).max() < 0.05
    assert display_size((100, 50), 1000) == (640, 320) and display_size((2000, 1000), 500) == (500, 250)


def test_contact_sheet_puts_tiles_row_by_row_in_cells_of_the_largest():
    from pacl_core.viz import contact_sheet, sheet_columns

    assert [sheet_columns(k) for k in (1, 2, 3, 4, 5, 9, 10)] == [1, 2, 2, 2, 3, 3, 4]
    tiles = [np.full((20, 30, 3), v, np.uint8) for v in (10, 20, 30)] + [np.full((10, 30, 3), 40, np.uint8)]
    sheet = contact_sheet(tiles, gap=2)
    assert sheet.shape == (42, 62, 3)
    assert (sheet[:20, :30] == 10).all() and (sheet[:20, 32:] == 20).all() and (sheet[22:, :30] == 30).all()
    assert (sheet[22:32, 32:] == 40).all() and (sheet[32:, 32:] == 255).all()  # the short tile, then white
    assert (sheet[20:22] == 255).all() and (sheet[:, 30:32] == 255).all()  # the gaps
    assert contact_sheet(tiles[:1]).shape == (20, 30, 3)
    titled = contact_sheet(tiles, titles=["a", "b", "c", "d"], gap=2)  # captions of 12 px letters above each
    strip = int(12 * 1.4)
    assert titled.shape == (2 * (strip + 20) + 2, 62, 3)
    assert (titled[strip: strip + 20, :30] == 10).all() and (titled[2 * strip + 22: 2 * strip + 32, 32:] == 40).all()
    assert (titled[:strip, :30] < 128).any() and (titled[:strip, :30] == 255).mean() > 0.5  # dark letters on white
    with pytest.raises(ValueError, match="2 titles for 4 tiles"):
        contact_sheet(tiles, titles=["a", "b"])
    assert contact_sheet(tiles, columns=4, gap=0).shape == (20, 120, 3)
