"""A second request with the same words does no text-encoder work: counts text-tower batches and times both calls.

    python bench/text_cache.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pacl_core.backbone import load_backbone  # noqa: E402
from pacl_core.segment import Segmenter  # noqa: E402

WORDS = "person, dog, cat, car, tree, sky, grass, road, building, water"


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    torch.manual_seed(0)
    backbone = load_backbone("ViT-B-16-quickgelu:none")
    seg = Segmenter(backbone, "vanilla", mode="whole")
    img = np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    rows = []
    for label in ("first request", "same words again", "one new word added"):
        words = WORDS + (", boat" if label.startswith("one new") else "")
        calls = backbone.text_encoder_calls
        t = time.perf_counter()
        seg(img, words)
        rows.append((label, backbone.text_encoder_calls - calls, time.perf_counter() - t))
    for label, calls, seconds in rows:
        print(f"{label:20s}: {calls} text-tower batch(es), {seconds * 1000:7.0f} ms")
    if rows[1][1] != 0:
        sys.exit("the second request re-encoded words")


if __name__ == "__main__":
    main()
