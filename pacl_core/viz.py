"""Drawing: a fixed palette, mask overlays with a legend, per-word heatmaps. numpy/OpenCV/matplotlib only."""

from __future__ import annotations

import colorsys
from functools import lru_cache

import cv2
import numpy as np
from matplotlib import colormaps, font_manager
from PIL import Image, ImageDraw, ImageFont

# 20 well-separated colours (after Kelly's and Glasbey's lists); more are spaced by the golden ratio.
_BASE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 70, 40),
    (0, 0, 128), (128, 128, 128),
]
BACKGROUND_COLOR = (0, 0, 0)
MIN_DISPLAY_SIDE = 320  # overlays of smaller images are enlarged (nearest) so the legend stays legible
MAX_DISPLAY_SIDE = 2048  # ... but never beyond this on their longer side


def save_png(path, image: np.ndarray, compression: int) -> None:
    """Write an (H, W, 3) RGB or (H, W) grey uint8 array as PNG with this zlib level (0-9; 1 is fast)."""
    bgr = image[..., ::-1] if image.ndim == 3 else image
    if not cv2.imwrite(str(path), np.ascontiguousarray(bgr), [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]):
        raise OSError(f"could not write {path}")


def palette(k: int) -> np.ndarray:
    """(k, 3) uint8 colours: the same word index always gets the same colour."""
    colors = list(_BASE[:k])
    for i in range(len(colors), k):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65 + 0.35 * ((i // 7) % 2), 0.95 - 0.3 * ((i // 3) % 2))
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(colors, dtype=np.uint8).reshape(k, 3)


def colorize_mask(mask: np.ndarray, k: int) -> np.ndarray:
    """(H, W) word indices (-1 = background) -> (H, W, 3) uint8 colours."""
    lut = np.vstack([palette(k), np.array([BACKGROUND_COLOR], dtype=np.uint8)])  # index -1 -> last row
    return lookup_rgb(lut, np.where(mask < 0, k, mask))  # (H, W, 3)


def lookup_rgb(lut: np.ndarray, index: np.ndarray) -> np.ndarray:
    """An (N, 3) uint8 colour table indexed by an (H, W) integer map -> (H, W, 3) uint8. Up to 256 entries, with
    OpenCV's per-channel table look-up, several times faster than numpy indexing."""
    if len(lut) > 256:
        return lut[index]
    index = index.astype(np.uint8)
    table = np.zeros((256, 1, 3), np.uint8)
    table[: len(lut), 0] = lut
    return cv2.LUT(cv2.merge([index, index, index]), table)  # (H, W, 3)


def enlarge(image: np.ndarray, min_side: int = MIN_DISPLAY_SIDE, nearest: bool = True,
            max_side: int = MAX_DISPLAY_SIDE) -> np.ndarray:
    """Enlarge by a whole factor until the shorter side is at least min_side, but never past max_side on the
    longer side (a thin image stays thin rather than growing past what an image format can hold)."""
    h, w = image.shape[:2]
    if min(h, w) >= min_side:
        return image
    f = min(int(np.ceil(min_side / max(1, min(h, w)))), max(1, max_side // max(1, h, w)))
    if f == 1:
        return image
    return cv2.resize(image, (w * f, h * f), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def overlay_mask(image: np.ndarray, mask: np.ndarray, k: int, alpha: float = 0.55) -> np.ndarray:
    """Blend mask colours over the image (rounded to uint8) and outline each region in white. Background pixels
    stay as they are."""
    image = np.ascontiguousarray(image, np.uint8)
    out = cv2.addWeighted(image, 1 - alpha, colorize_mask(mask, k), alpha, 0.0)  # (H, W, 3)
    background = mask < 0  # (H, W)
    if background.any():
        out[background] = image[background]
    edges = cv2.morphologyEx((mask + 1).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edges] = 255
    return out


@lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:
        return ImageFont.load_default(size)


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def add_legend(image: np.ndarray, labels: list[str], colors: np.ndarray) -> np.ndarray:
    """Append a panel on the right with one colour swatch and label per entry."""
    h = image.shape[0]
    size = int(np.clip(h / 28, 12, 22))
    row = int(size * 1.6)
    font = _font(size)
    texts = [_short(t) for t in labels]
    width = 2 * size + max(int(font.getlength(t)) for t in texts) + size + 8
    cols = max(1, int(np.ceil(len(texts) * row / max(h - size, row))))
    panel = Image.new("RGB", (width * cols, max(h, row * int(np.ceil(len(texts) / cols)) + size)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    per_col = int(np.ceil(len(texts) / cols))
    for i, (t, c) in enumerate(zip(texts, colors)):
        x, y = (i // per_col) * width + size // 2, size // 2 + (i % per_col) * row
        draw.rectangle([x, y, x + size, y + size], fill=tuple(int(v) for v in c), outline=(0, 0, 0))
        draw.text((x + int(size * 1.5), y - size // 8), t, fill=(0, 0, 0), font=font)
    panel = np.asarray(panel)
    canvas = np.full((panel.shape[0], image.shape[1] + panel.shape[1], 3), 255, np.uint8)
    canvas[:h, : image.shape[1]] = image
    canvas[:, image.shape[1]:] = panel
    return canvas


def draw_overlay(seg, legend: bool = True) -> np.ndarray:
    """A Segmentation -> overlay image with its legend (background listed when present)."""
    k = len(seg.words)
    img = overlay_mask(enlarge(seg.image, nearest=False), enlarge(seg.mask.astype(np.int32)), k)
    if not legend:
        return img
    labels, colors = list(seg.words), palette(k)
    if seg.background is not None:
        labels.append("background")
        colors = np.vstack([colors, np.array([BACKGROUND_COLOR], np.uint8)])
    return add_legend(img, labels, colors)


@lru_cache(maxsize=8)
def colormap_lut(cmap: str) -> np.ndarray:
    """(N, 3) uint8 RGB: the N entries of a matplotlib colormap (256 for turbo, magma, ...)."""
    cm = colormaps[cmap]
    return (cm(np.arange(cm.N))[:, :3] * 255.0).round().astype(np.uint8)


def apply_colormap(heat: np.ndarray, cmap: str = "turbo") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 colours by table look-up, the entries matplotlib itself picks."""
    lut = colormap_lut(cmap)
    index = np.minimum(np.clip(heat, 0, 1) * len(lut), len(lut) - 1).astype(np.int32)  # (H, W): int(x · N)
    return lookup_rgb(lut, index)  # (H, W, 3)


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, cmap: str = "turbo", alpha: float = 0.5,
                    title: str | None = None, min_side: int = MIN_DISPLAY_SIDE) -> np.ndarray:
    """A (H, W) map in [0, 1] coloured with a matplotlib colormap and blended on the image (enlarged when its
    shorter side is below min_side)."""
    colored = apply_colormap(heat, cmap)  # (H, W, 3)
    out = cv2.addWeighted(np.ascontiguousarray(image, np.uint8), 1 - alpha, colored, alpha, 0.0)  # (H, W, 3)
    out = enlarge(out, min_side, nearest=False)
    if title:
        pil = Image.fromarray(out)
        draw = ImageDraw.Draw(pil)
        size = int(np.clip(out.shape[0] / 18, 12, 28))
        draw.text((6, 4), _short(title, 40), fill=(255, 255, 255), font=_font(size), stroke_width=2,
                  stroke_fill=(0, 0, 0))
        out = np.asarray(pil)
    return out


def display_size(shape, max_side: int | None, min_side: int = MIN_DISPLAY_SIDE) -> tuple[int, int]:
    """(H, W) scaled so the shorter side is at least min_side and the longer at most max_side (None: no
    limit; the longer side wins when both cannot hold)."""
    h, w = shape[:2]
    f = max(1.0, min_side / max(1, min(h, w)))
    if max_side is not None:
        f = min(f, max_side / max(h, w))
    return (h, w) if f == 1.0 else (max(1, round(h * f)), max(1, round(w * f)))


def draw_heatmaps(seg, cmap: str = "turbo", max_side: int | None = None,
                  titled: bool = True) -> list[tuple[str, np.ndarray]]:
    """One blended heatmap image per word, titled with the word (unless titled=False); with max_side the maps are
    computed and drawn at that display size, not at the image's full resolution."""
    size = seg.image.shape[:2] if max_side is None else display_size(seg.image.shape, max_side)
    image = seg.image
    if size != image.shape[:2]:
        shrink = size[0] <= image.shape[0]
        image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    heat = seg.heatmaps_at(size)  # (K, h, w)
    min_side = MIN_DISPLAY_SIDE if max_side is None else 0  # else the size is chosen already
    return [(w, heatmap_overlay(image, heat[k], cmap, title=w if titled else None, min_side=min_side))
            for k, w in enumerate(seg.words)]


def sheet_columns(k: int) -> int:
    """Columns of a contact sheet of k tiles: as square as it gets (1, 2, 2, 2, 3 ... 3, 4 ...)."""
    return max(1, int(np.ceil(np.sqrt(k))))


def contact_sheet(tiles: list[np.ndarray], titles: list[str] | None = None, columns: int | None = None,
                  gap: int = 4, fill: int = 255) -> np.ndarray:
    """Tiles (h_i, w_i, 3) uint8 -> one (H, W, 3) grid image, row by row, `gap` pixels apart; each cell is as
    large as the largest tile, and smaller tiles sit in its top-left corner. With titles, each cell has a caption
    strip above its tile, in letters an eighth of the cell's width, so they stay legible when the whole sheet is
    shown small."""
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    if titles is not None and len(titles) != len(tiles):
        raise ValueError(f"contact_sheet got {len(titles)} titles for {len(tiles)} tiles")
    columns = columns or sheet_columns(len(tiles))
    rows = int(np.ceil(len(tiles) / columns))
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    size = int(np.clip(w / 8, 12, 48))  # caption letters
    strip = 0 if titles is None else int(size * 1.4)
    cell = strip + h
    sheet = np.full((rows * cell + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), fill, np.uint8)
    corners = [((i // columns) * (cell + gap), (i % columns) * (w + gap)) for i in range(len(tiles))]  # (y, x)
    for (y, x), tile in zip(corners, tiles):
        sheet[y + strip: y + strip + tile.shape[0], x: x + tile.shape[1]] = tile
    if titles is None:
        return sheet
    pil = Image.fromarray(sheet)
    draw = ImageDraw.Draw(pil)
    font = _font(size)
    for (y, x), title in zip(corners, titles):
        draw.text((x + 2, y + (strip - size) // 2), _short(title, max(4, int(w / (0.6 * size)))), fill=(0, 0, 0),
                  font=font)
    return np.asarray(pil)
