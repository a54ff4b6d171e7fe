"""Pictures only the demo shows: a patch grid as flat blocks over the image (the teaching view) and line plots
(the training tab's curves). Built on pacl_core.viz; nothing here imports gradio."""

from __future__ import annotations

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from pacl_core.viz import enlarge, heatmap_overlay


def _grid_lines(image: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Thin translucent lines between patches, so a student can count them."""
    H, W = image.shape[:2]
    h, w = grid
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil, "RGBA")
    for i in range(1, h):
        y = round(i * H / h)
        draw.line([(0, y), (W, y)], fill=(255, 255, 255, 90), width=1)
    for j in range(1, w):
        x = round(j * W / w)
        draw.line([(x, 0), (x, H)], fill=(255, 255, 255, 90), width=1)
    return np.asarray(pil)


def draw_grid(image: np.ndarray, values: np.ndarray, title: str | None = None, cmap: str = "viridis",
              scale: str = "minmax", max_lines: int = 40) -> np.ndarray:
    """A (h, w) patch grid drawn over the image as flat blocks, one per patch.

    scale "minmax" stretches the grid's own range to the colormap (for cosines), "max" divides by the
    largest value (for attention, so 0 stays dark). Grid lines are drawn when the grid is small enough.
    """
    values = np.asarray(values, dtype=np.float32)
    lo, hi = (0.0, float(values.max())) if scale == "max" else (float(values.min()), float(values.max()))
    unit = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    image = enlarge(image, nearest=False)  # small images are enlarged first, so the blocks stay sharp
    H, W = image.shape[:2]
    blocks = cv2.resize(unit, (W, H), interpolation=cv2.INTER_NEAREST)  # (H, W), each patch one flat block
    out = heatmap_overlay(image, blocks, cmap=cmap, alpha=0.65, title=title)
    if max(values.shape) <= max_lines:
        out = _grid_lines(out, values.shape)
    return out


def plot_lines(lines: dict, title: str, xlabel: str, ylabel: str, ylim=None, size=(5.0, 2.6)) -> np.ndarray:
    """Curves {name: (xs, ys)} on one set of axes -> an (H, W, 3) uint8 picture (matplotlib, no window)."""
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (xs, ys) in lines.items():
        ax.plot(xs, ys, label=name, marker="o" if len(xs) < 30 else None, markersize=3)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)
