"""Cost of comparing k methods on one image over one bare forward, and where a demo request's time goes.

Random-init ViT-B-16-quickgelu, a 640x512 photo, 10 words (text embeddings cached). For k = 1..all of
vanilla + the training-free methods, side by side in one run, each as the median over back-to-back pairs of
(this call) / (one bare `encode_image` at 448 px):

- "shared, 448": `segment_many` with every method whole-image at 448 px (the demo's explicit resolution):
  one trunk, k last blocks.
- "demo, 448": `demo.handlers.compare(..., resolution="448", package=False)`: the same plus drawing.
- "one at a time, 448": each Segmenter called alone (the old path), for comparison.
- "demo, model default": compare with each method's official protocol (sliding windows for the training-free
  methods), sharing the trunk among methods whose protocols coincide.

Then the server-side split of one request (model / drawing / packaging the archive) for the toy model
(vanilla + PACL, 9 words, chelsea.jpg) and for random ViT-B/16 (vanilla + every training-free method, 448 px).

    python bench/compare_methods.py [--repeats 3] [--skip-default] [--split-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.segment_overhead import bare_encoder  # noqa: E402
from demo import handlers as h  # noqa: E402
from demo.models import ModelChoice, ModelRegistry, default_registry, pick_default  # noqa: E402
from pacl_core.segment import resized_shape, segment_many  # noqa: E402
from pacl_core.viz import draw_overlay  # noqa: E402

VIT = "ViT-B-16-quickgelu:none"
METHODS = ["vanilla", "maskclip", "sclip", "clearclip", "naclip", "scclip"]  # vanilla + every training-free method
WORDS = "person, dog, cat, car, tree, sky, grass, road, building, water"
TOY_WORDS = "cat, wall, floor, sky, grass, dog, tree, road, water"
PHOTO = ROOT / "assets" / "examples" / "chelsea.jpg"


def paired_ratio(bare, fn, repeats: int) -> tuple[float, float]:
    """(median seconds of fn, median of fn's time / bare's time over back-to-back pairs)."""
    fn()
    ratios, times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        bare()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
        times.append(t2 - t1)
    return statistics.median(times), statistics.median(ratios)


def split(registry, label, image, words, methods, resolution, repeats: int) -> dict:
    """Median seconds of a compare() request's parts: model (segment_many), drawing (panels), packaging."""
    parts = {"model": [], "drawing": [], "packaging": [], "request (no archive)": []}
    h.compare(registry, image, words, methods, label, 0.0, resolution, package=False)  # warm caches
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = h.compare(registry, image, words, methods, label, 0.0, resolution, package=False)
        t1 = time.perf_counter()
        h.package_comparison(result)
        t2 = time.perf_counter()
        ok = [p for p in result.panels if p.ok]
        segmenters = [registry.segmenter(label, p.method, h.check_resolution(resolution)) for p in ok]
        rgb, _ = h.check_image(image)
        t3 = time.perf_counter()
        segment_many(segmenters, rgb, result.words)  # the model's share of the request (one group at 448)
        t4 = time.perf_counter()
        for p in ok:  # what the page shows: the overlay with its legend and the heatmap sheet
            draw_overlay(p.segmentation)
            h.heatmap_sheet(p.segmentation)
        t5 = time.perf_counter()
        parts["request (no archive)"].append(t1 - t0)
        parts["packaging"].append(t2 - t1)
        parts["model"].append(t4 - t3)
        parts["drawing"].append(t5 - t4)
    return {k: statistics.median(v) for k, v in parts.items()}


def k_methods_table(registry, photo: np.ndarray, repeats: int, skip_default: bool) -> None:
    """The table of k = 1..all methods over one bare forward of the same input size (the photo at a 448 px short
    side, its aspect ratio kept, as the segmenters see it), one row per k."""
    backbone = registry.backbone("vit-random")
    shape = resized_shape(photo.shape, 448)  # (448, 560) for the 512x640 photo
    model = bare_encoder(backbone, shape)
    x = torch.randn(1, 3, *shape)
    words = [w.strip() for w in WORDS.split(",")]

    def bare():
        with torch.no_grad():
            model.encode_image(x)

    bare()
    t_bare = statistics.median([paired_ratio(bare, bare, 1)[0] for _ in range(repeats)])
    print(f"bare encode_image at {shape[0]}x{shape[1]} px: {t_bare * 1000:.0f} ms; {torch.get_num_threads()} threads; "
          f"640x512 photo, {len(words)} words; ratios = median over {repeats} back-to-back pairs of "
          "(call time) / (bare forward time)")
    cols = ["shared, 448", "demo, 448", "one at a time, 448"] + ([] if skip_default else ["demo, model default"])
    print(f"{'k':>2} {'methods':<38} | " + " | ".join(f"{c:>20}" for c in cols) + " | target")
    for k in range(1, len(METHODS) + 1):
        methods = METHODS[:k]
        segs448 = [registry.segmenter("vit-random", m, 448) for m in methods]
        calls = {
            "shared, 448": lambda segs=segs448: segment_many(segs, photo, words),
            "demo, 448": lambda ms=methods: h.compare(registry, photo, WORDS, ms, "vit-random", 0.0, "448",
                                                      package=False),
            "one at a time, 448": lambda segs=segs448: [s(photo, words) for s in segs],
            "demo, model default": lambda ms=methods: h.compare(registry, photo, WORDS, ms, "vit-random", 0.0,
                                                                "model default", package=False),
        }
        cells = []
        for c in cols:
            t, r = paired_ratio(bare, calls[c], repeats)
            cells.append(f"{t * 1000:7.0f} ms {r:6.2f}x")
        print(f"{k:>2} {','.join(methods):<38} | " + " | ".join(f"{c:>20}" for c in cells)
              + f" | <= {1.2 + 0.1 * k:.1f}x", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-default", action="store_true", help="leave out the 'model default' column")
    ap.add_argument("--split-only", action="store_true", help="only the server-side split of one request")
    args = ap.parse_args()
    torch.manual_seed(0)
    registry = ModelRegistry([ModelChoice("vit-random", VIT)])
    photo = np.random.default_rng(0).integers(0, 256, (512, 640, 3), dtype=np.uint8)
    if not args.split_only:
        k_methods_table(registry, photo, args.repeats, args.skip_default)

    print("\nserver-side split of one request (median seconds; the archive is made after the results are shown)")
    toy = default_registry()
    toy_label, _ = pick_default(toy, "toy")
    rows = [("toy, vanilla+pacl, 9 words, chelsea.jpg", split(toy, toy_label, str(PHOTO), TOY_WORDS,
                                                             ["vanilla", "pacl"], "model default", args.repeats)),
            ("ViT-B/16, vanilla + 5 training-free, 448 px", split(registry, "vit-random", photo, WORDS, METHODS,
                                                               "448", args.repeats))]
    keys = ["request (no archive)", "model", "drawing", "packaging"]
    print(f"{'request':<44} | " + " | ".join(f"{k:>20}" for k in keys))
    for name, parts in rows:
        print(f"{name:<44} | " + " | ".join(f"{parts[k]:>18.3f} s" for k in keys), flush=True)


if __name__ == "__main__":
    main()
