"""Point at a patch: the first click's backbone pass, then the latency of later clicks, which read the kept pass.

For the embedded toy model and a random-init ViT-B/16 (the real architecture without its weights), side by side:
the first pass (pacl_core.explain.patch_pass), then --clicks clicks at random points, each timed twice: the
report alone (report_from_pass: cosines, probabilities, coherence, attention share) and the demo's whole click
handler (demo.patch.point_at: the image read and checked, the kept pass found, the report and every drawing).

    python bench/patch_click.py                       # toy and ViT-B/16, 20 clicks each
    python bench/patch_click.py --models toy --clicks 50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pacl_core.explain import patch_pass, report_from_pass  # noqa: E402

EXAMPLES = ROOT / "assets" / "examples"
TOY_WORDS = "background, circle, square, triangle, star, heart, cross, ring, moon"
PHOTO_WORDS = "cat, wall, floor, sky, grass, dog, tree, road, water"
MODELS = {  # bench name -> (demo --model, image, words, methods)
    "toy": ("toy", EXAMPLES / "toy_01.png", TOY_WORDS, ["vanilla", "pacl", "scclip"]),
    "vit-random": ("ViT-B-16-quickgelu:none", EXAMPLES / "chelsea.jpg", PHOTO_WORDS, ["vanilla", "sclip", "scclip"]),
}


def percentiles(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def run_model(name: str, clicks: int, seed: int = 0) -> dict:
    from demo.models import choice_for_request, default_registry
    from demo.patch import PassCache, point_at
    from pacl_core.inputs import load_image

    spec, image, words, methods = MODELS[name]
    registry = default_registry(hub_heads="")
    choice = choice_for_request(spec)
    registry.add(choice)
    backbone = registry.backbone(choice.label)
    head = registry.segmenter(choice.label, "pacl").head if "pacl" in methods else None
    rgb = load_image(image)
    H, W = rgb.shape[:2]
    rng = np.random.default_rng(seed)
    points = [(float(rng.uniform(0, W)), float(rng.uniform(0, H))) for _ in range(clicks)]

    patch_pass(backbone, rgb, methods, head=head)  # warm-up: first-call allocations, text cache
    t = time.perf_counter()
    pp = patch_pass(backbone, rgb, methods, head=head)
    first = time.perf_counter() - t
    report_from_pass(pp, words, points[0])  # warm-up: the words' text embeddings, encoded once and cached
    report_times = []
    for p in points:
        t = time.perf_counter()
        report_from_pass(pp, words, p)
        report_times.append(time.perf_counter() - t)

    cache = PassCache()
    t = time.perf_counter()
    point_at(registry, cache, "bench", str(image), words, methods, choice.label, x=points[0][0], y=points[0][1])
    handler_first = time.perf_counter() - t
    handler_times = []
    for x, y in points:
        t = time.perf_counter()
        view = point_at(registry, cache, "bench", str(image), words, methods, choice.label, x=x, y=y)
        handler_times.append(time.perf_counter() - t)
        assert view.data["pass_kept"], "a click after the first must read the kept pass"
    return {"model": name, "methods": [m for m in methods if m in pp.methods], "grid": pp.grid,
            "resized": pp.resized, "first_pass_s": first, "handler_first_s": handler_first,
            "report": percentiles(report_times), "handler": percentiles(handler_times),
            "kept_mb": pp.nbytes / 2**20, "clicks": clicks}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--clicks", type=int, default=20, help="clicks after the first (default: 20)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    print(f"CPU threads: {torch.get_num_threads()}  clicks: {args.clicks}")
    print(f"{'model':<11} {'input':>9} {'grid':>7} {'first pass':>10} {'handler 1st':>11} "
          f"{'report p50':>10} {'p95':>7} {'click p50':>9} {'p95':>7} {'kept':>7}  methods")
    for name in args.models:
        r = run_model(name, args.clicks)
        print(f"{name:<11} {'×'.join(map(str, r['resized'][::-1])):>9} {'×'.join(map(str, r['grid'])):>7} "
              f"{r['first_pass_s']:>9.3f}s {r['handler_first_s']:>10.3f}s {r['report'][0]:>9.4f}s "
              f"{r['report'][1]:>6.4f}s {r['handler'][0]:>8.3f}s {r['handler'][1]:>6.3f}s "
              f"{r['kept_mb']:>5.1f}MB  {', '.join(r['methods'])}", flush=True)
    print("first pass: the backbone pass a click reads (patch_pass); handler 1st: the demo's first click on a new "
          "image (pass + drawing); report: report_from_pass alone; click: the demo's whole click handler")
    return 0


if __name__ == "__main__":
    sys.exit(main())
