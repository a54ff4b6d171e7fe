"""Time of a whole Segmenter call per method vs one bare `model.encode_image`, at the same input size.

Random-init ViT-B-16-quickgelu, 448 px, 20 words with text embeddings cached. Segmenter time includes
preprocessing (resizing the photo inside counts), every method's last block, upsampling to image resolution
and the argmax. The bare reference is open_clip's encode_image on a model created at the input size the
segmenter sees for that photo (its short side at 448 px, aspect ratio kept: 448x448, and 448x597 for 2000x1500).

    python bench/segment_overhead.py [--repeats 5] [--methods vanilla pacl sclip] [--shifts 2] [--refine affinity]

--shifts M times the Segmenter with M x M shifted passes (Segmenter(shifts=M)), still against one bare forward;
--refine times it with a refinement (Segmenter(refine=...)).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._util import median_time  # noqa: E402
from pacl_core.backbone import load_backbone  # noqa: E402
from pacl_core.methods import METHODS  # noqa: E402
from pacl_core.pacl import VisionEmbedder  # noqa: E402
from pacl_core.segment import REFINERS, Segmenter, resized_shape  # noqa: E402

WORDS = ["person", "dog", "cat", "car", "tree", "sky", "grass", "road", "building", "water", "boat", "bird",
         "horse", "chair", "table", "bottle", "plant", "sofa", "train", "bicycle"]


def bare_encoder(backbone, size):
    """open_clip's own model at `size` (a side or (h, w)) with the backbone's weights (positions resized once)."""
    model = open_clip.create_model(backbone.name, pretrained=None, force_image_size=size).eval()
    state = backbone.model.state_dict()
    open_clip.model.resize_pos_embed(state, model)
    model.load_state_dict(state)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--shifts", type=int, default=1, help="shifted passes per axis (default: 1)")
    ap.add_argument("--refine", default="none", choices=("none", *REFINERS),
                    help="a refinement (default: none, also for NACLIP, whose official default is PAMR)")
    args = ap.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone("ViT-B-16-quickgelu:none", image_size=args.size)
    head = VisionEmbedder(backbone.width, backbone.embed_dim).init_from_projection(backbone.model.visual.proj)
    rng = np.random.default_rng(0)
    photos = {f"{args.size}x{args.size}": rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8),
              "2000x1500": rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)}

    bares = {}
    for name, img in photos.items():  # one bare forward per photo, at the input size the segmenter sees
        shape = resized_shape(img.shape, args.size)
        model, x = bare_encoder(backbone, shape), torch.randn(1, 3, *shape)
        bares[name] = lambda model=model, x=x: model.encode_image(x)
    with torch.no_grad():
        t_bare = {name: median_time(fn, args.repeats) for name, fn in bares.items()}
    print("bare encode_image: " + ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in t_bare.items())
          + f" (median of {args.repeats}, {torch.get_num_threads()} threads); ratio = median over {args.repeats} "
          f"back-to-back pairs of Segmenter time ({args.shifts}x{args.shifts} shifted passes, refine "
          f"{args.refine}) / encode_image time at the same input size")
    print(f"{'method':10s} | " + " | ".join(f"{name:>17s}" for name in photos))
    for method in args.methods:
        seg = Segmenter(backbone, method, head=head if method == "pacl" else None, image_size=args.size,
                        mode="whole", shifts=args.shifts, refine=args.refine)
        cells = []
        for name, img in photos.items():
            bare = bares[name]
            seg(img, WORDS)  # caches the text embeddings
            with torch.no_grad():
                bare()
            ratios, times = [], []
            for _ in range(args.repeats):  # pairs measured back to back, so machine noise hits both alike
                t0 = time.perf_counter()
                with torch.no_grad():
                    bare()
                t1 = time.perf_counter()
                seg(img, WORDS)
                t2 = time.perf_counter()
                ratios.append((t2 - t1) / (t1 - t0))
                times.append(t2 - t1)
            cells.append(f"{statistics.median(times) * 1000:6.0f} ms {statistics.median(ratios):5.2f}x")
        print(f"{method:10s} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
