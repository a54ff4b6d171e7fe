"""`python -m pacl_core segment IMG... --words "dog, grass, sky"`: overlay, mask, heatmaps and a JSON per image.

Outputs go to a staging folder first and move into --out only when every image has succeeded, so a bad
input never leaves partial files behind.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tqdm import tqdm

from pacl_core.cli.args import (
    HEAD_HELP,
    add_model_args,
    add_shifts_arg,
    backbone_from_args,
    check_head_arg,
    check_shifts_arg,
)
from pacl_core.export import write_outputs
from pacl_core.inputs import MAX_SIDE, check_image_file, check_out_folder, load_image, parse_words
from pacl_core.methods import default_method, parse_methods
from pacl_core.segment import REFINERS, Segmenter, segment_many


def add_parser(sub) -> None:
    p = sub.add_parser("segment", help="segment images with a list of words",
                       description="Segment images: each pixel gets the word whose text embedding is closest.")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--words", required=True, help='comma-separated words, e.g. "dog, grass, sky"')
    p.add_argument("--method", default=None,
                   help="vanilla, pacl, or a training-free method: maskclip, sclip, clearclip, naclip, scclip; "
                        "comma-separated for several (one backbone pass per input geometry, one output folder "
                        "per method: OUT/METHOD/IMAGE) (default: pacl when the model has a PACL head (--head, or "
                        "the toy model's own), else scclip)")
    p.add_argument("--head", default=None, help=HEAD_HELP + "; default: the one shipped with --model")
    p.add_argument("--mode", default=None, choices=("whole", "slide"),
                   help="whole-image or sliding-window (default: the method's own; whole for vanilla and pacl)")
    p.add_argument("--window", type=int, default=None,
                   help="sliding window size (default: the method's own, else the native size)")
    p.add_argument("--stride", type=int, default=None, help="sliding window stride (default: window/2)")
    p.add_argument("--background", default="none",
                   help="none, score:T (background where the best cosine < T), entropy:T (where the word "
                        "distribution's entropy > T) or prob:T (where the best word's probability < T)")
    p.add_argument("--refine", default=None, choices=("none", *REFINERS),
                   help="post-processing of the score maps: affinity (a random walk over the patches, weighted by "
                        "their own embeddings), pamr (guided by the colours, as SCLIP / NACLIP use it) or none "
                        "(default: the method's official setting, PAMR for NACLIP)")
    add_shifts_arg(p)
    p.add_argument("--out", required=True, help="output folder (one subfolder per image)")
    add_model_args(p)
    p.set_defaults(run=run)


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}_{n + 1}")
    return stems


def run(args) -> int:
    words, notes = parse_words(args.words)
    methods = None if args.method is None else parse_methods(args.method)  # unknown methods fail before loading
    check_shifts_arg(args.shifts)
    check_head_arg(args.head)
    out = check_out_folder(args.out)
    paths = [Path(p) for p in args.images]
    sizes = [check_image_file(p) for p in paths]  # fail on bad files before loading any model
    backbone = backbone_from_args(args)
    if methods is None:
        methods = [default_method(args.head is not None or backbone.default_head is not None)]
        if methods[0] != "pacl":
            notes.append(f"method {methods[0]}: this model has no PACL head (pass --head FILE.safetensors for pacl)")
    segmenters = [Segmenter(backbone, method=m, head=args.head if m == "pacl" else None, mode=args.mode,
                            window=args.window, stride=args.stride, background=args.background,
                            image_size=args.image_size, refine=args.refine,
                            shifts=args.shifts) for m in methods]
    for n in notes:
        print(f"note: {n}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    several = len(methods) > 1
    try:
        jobs = list(zip(paths, _unique_stems(paths), sizes))
        for path, stem, original in tqdm(jobs, desc="segmenting", unit="img", disable=len(paths) < 2 or None):
            image = load_image(path)
            results = segment_many(segmenters, image, words)
            for segmenter in segmenters:
                info = {"image": str(path), "original_size": original, "model": args.model,
                        "backbone": backbone.name, "pretrained": backbone.pretrained, "shifts": segmenter.shifts,
                        "refine": segmenter.refine or "none", "notes": []}
                if max(original) > MAX_SIDE:
                    info["notes"].append(f"downscaled from {original[0]}x{original[1]} to at most {MAX_SIDE} px")
                folder = staging / segmenter.method / stem if several else staging / stem
                write_outputs(folder, results[segmenter.method], info)
        for folder in sorted(staging.glob("*/*" if several else "*")):  # one result folder per (method,) image
            target = out / folder.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            folder.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    n = len(paths) * len(methods)
    print(f"wrote {n} result folder{'s' if n > 1 else ''} to {out}"
          + (f" ({', '.join(methods)}: one folder per method)" if several else ""))
    return 0
