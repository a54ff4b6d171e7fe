"""The demo's own pictures (demo/drawing.py): a patch grid as flat blocks, and line plots."""

import numpy as np

from demo.drawing import draw_grid, plot_lines


def test_draw_grid_paints_one_flat_block_per_patch():
    image = np.full((40, 60, 3), 128, np.uint8)
    values = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)
    out = draw_grid(image, values, max_lines=0)
    assert out.dtype == np.uint8 and out.ndim == 3
    H, W = out.shape[:2]
    quads = [out[: H // 2, : W // 2], out[: H // 2, W // 2:], out[H // 2:, : W // 2], out[H // 2:, W // 2:]]
    for q in quads:  # flat inside each patch
        assert np.all(q == q[0, 0])
    colours = {tuple(q[0, 0]) for q in quads}
    assert len(colours) == 4  # four different values, four colours
    lined = draw_grid(image, values)  # grid lines between patches
    assert not np.array_equal(lined, out)


def test_plot_lines_draws_each_curve_into_a_picture():
    one = plot_lines({"loss": ([1, 2, 3], [3.0, 2.0, 1.0])}, "t", "step", "loss", size=(4, 2))
    assert one.shape == (200, 400, 3) and one.dtype == np.uint8
    other = plot_lines({"loss": ([1, 2, 3], [1.0, 2.0, 3.0])}, "t", "step", "loss", size=(4, 2))
    assert not np.array_equal(one, other), "the curve is drawn from the data"
    two = plot_lines({"a": ([0, 1], [0.2, 0.4]), "b": ([0, 1], [0.6, 0.8])}, "t", "step", "", ylim=(0, 1), size=(4, 2))

    def has(img, rgb):  # matplotlib's first two line colours, C0 blue and C1 orange
        return bool((np.abs(img.astype(int) - rgb).sum(-1) < 30).any())

    assert has(one, (31, 119, 180)) and not has(one, (255, 127, 14))
    assert has(two, (31, 119, 180)) and has(two, (255, 127, 14)), "one colour per curve"
