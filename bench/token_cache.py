"""Training epochs with and without the token cache (--cache-tokens), side by side, on the CPU, and the cache's size.

    OMP_NUM_THREADS=2 flock /tmp/heavy.lock python bench/token_cache.py [--model ViT-B-16-quickgelu:none]
        [--image-size 224] [--pairs 32] [--batch 16] [--epochs 3]

Trains the same run three times from the same seed: without a cache, with a new cache (its first epoch fills it),
and per epoch reports the wall time (from log.csv), the ratio uncached / cached, the loss difference, and the
cache's bytes per sample measured on disk, then the disk arithmetic for COCO (118k images, 5 captions each) and
CC3M (3.3M pairs) at ViT-B/16 224 px and 448 px.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pacl_core.cli import main as cli  # noqa: E402
from pacl_core.train.loop import read_log  # noqa: E402

DATASETS = {"COCO captions (118,287 images, 591,753 captions)": (118_287, 591_753),
            "CC3M (3.3M pairs)": (3_300_000, 3_300_000)}


def make_data(root: Path, n: int) -> str:
    """n JPEG photos-like images (smooth colour fields with shapes, 320x256) and captions, as a TSV."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    words = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
    yy, xx = np.mgrid[0:256, 0:320]
    with open(root / "pairs.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["filepath", "title"])
        for i in range(n):
            a, b = rng.choice(len(words), 2, replace=False)
            img = (rng.random(3) * 255 * (0.5 + 0.5 * np.sin(xx[..., None] / (20 + 10 * rng.random()) +
                                                             yy[..., None] / 37))).astype(np.uint8)
            y, x = rng.integers(0, 150), rng.integers(0, 200)
            img[y:y + 90, x:x + 110] = rng.integers(0, 256, 3)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            (root / "img" / f"{i:05d}.jpg").write_bytes(buf.getvalue())
            w.writerow([f"img/{i:05d}.jpg", f"a {words[a]} box on a {words[b]} field, photo {i % 7}"])
    return str(root / "pairs.tsv")


def epoch_times(out: Path, per_epoch: int) -> list[float]:
    log = read_log(out)
    ends = [r["elapsed_s"] for r in log if int(r["step"]) % per_epoch == 0]
    return [b - a for a, b in zip([0.0, *ends], ends)]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16-quickgelu:none")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    per_epoch = args.pairs // args.batch
    root = Path(tempfile.mkdtemp(prefix="bench-token-cache-"))
    data = make_data(root / "data", args.pairs)

    def train(out: Path, *extra) -> None:
        torch.manual_seed(0)
        argv = ["train", "--train-data", data, "--model", args.model, "--image-size", str(args.image_size),
                "--batch-size", str(args.batch), "--max-steps", str(per_epoch * args.epochs), "--warmup", "1",
                "--save-every", "1000000", "--log-every", "1", "--workers", "2", "--no-progress", "--out", str(out),
                *extra]
        assert cli(argv) == 0

    train(root / "plain")
    train(root / "cached", "--cache-tokens", str(root / "cache"))
    plain, cached = epoch_times(root / "plain", per_epoch), epoch_times(root / "cached", per_epoch)
    dloss = max(abs(a["loss"] - b["loss"]) for a, b in zip(read_log(root / "plain"), read_log(root / "cached")))
    print(f"\n{args.model} at {args.image_size} px, {args.pairs} pairs, batch {args.batch}, "
          f"{torch.get_num_threads()} CPU threads, fp16 cache")
    print("epoch | uncached s | cached s | uncached / cached")
    for e, (a, b) in enumerate(zip(plain, cached)):
        print(f"{e:5d} | {a:10.2f} | {b:8.2f} | {a / b:6.1f}x" + ("   (fills the cache)" if e == 0 else ""))
    later = sum(plain[1:]) / max(sum(cached[1:]), 1e-9)
    print(f"later epochs: {later:.1f}x faster with the cache; largest loss difference {dloss:.2e}")
    total = folder_bytes(root / "cache")
    print(f"cache on disk: {total / 2**20:.1f} MiB for {args.pairs} images = {total / args.pairs / 1024:.1f} KiB "
          "per sample (tokens + caption + index)")
    print("\ndisk for a full cache at ViT-B/16 (D_v = 768, D = 512), fp16 (fp32 doubles it):")
    for name, (images, captions) in DATASETS.items():
        for size in (224, 448):
            tokens = (size // 16) ** 2
            gb = (images * tokens * 768 * 2 + captions * 512 * 2) / 1e9
            print(f"  {name}, {size} px ({tokens} tokens x 768 x 2 B = {tokens * 768 * 2 / 1e6:.2f} MB per image): "
                  f"{gb:,.0f} GB")


if __name__ == "__main__":
    main()
