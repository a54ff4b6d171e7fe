"""Helpers shared by the tests: synthetic images and datasets, the CLI in a subprocess, a live demo
server on a free port, a Hugging Face cache laid out by hand."""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from demo import launch_options
from demo.models import TOY_LABEL
from pacl_core.backbone import Backbone


def random_image(rng, h, w, channels=3, dtype=np.uint8):
    top = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, top + 1, size=shape).astype(dtype)


H, W = 24, 32


def _save_label(path: Path, raw: np.ndarray, palette: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(raw.astype(np.uint8), mode="L")
    if palette:  # VOC-style indexed PNG: pixel values are palette indices
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    img.save(path)


def _save_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=95)


def raw_label(seed: int, values: list[int]) -> np.ndarray:
    """(H, W) raw annotation: vertical bands of the given values, so every value is present."""
    raw = np.zeros((H, W), dtype=np.uint8)
    for j, v in enumerate(values):
        raw[:, j * W // len(values):(j + 1) * W // len(values)] = v
    return np.roll(raw, seed, axis=1)


RAW_VALUES = {
    "voc": [0, 255, 1, 20, 7], "context": [0, 1, 59, 33], "cocostuff": [255, 0, 170, 91], "ade": [0, 1, 150, 42],
}


def write_layout(root: Path, kind: str, n: int = 3, values=None) -> tuple[Path, list[np.ndarray]]:
    """Write n images + labels of one benchmark in its standard layout under root; returns (root, raw labels)."""
    values = values or RAW_VALUES[kind]
    raws = [raw_label(i, values) for i in range(n)]
    ids = [f"2008_{i:06d}" if kind in ("voc", "context") else f"{i:012d}" for i in range(n)]
    if kind == "voc":
        base = root / "VOCdevkit" / "VOC2012"
        img_dir, lab_dir, suffix, palette = base / "JPEGImages", base / "SegmentationClass", ".png", True
        split = base / "ImageSets" / "Segmentation" / "val.txt"
    elif kind == "context":
        base = root / "VOCdevkit" / "VOC2010"
        img_dir, lab_dir, suffix, palette = base / "JPEGImages", base / "SegmentationClassContext", ".png", False
        split = base / "ImageSets" / "SegmentationContext" / "val.txt"
    elif kind == "cocostuff":
        base = root / "coco_stuff164k"
        img_dir, lab_dir = base / "images" / "val2017", base / "annotations" / "val2017"
        suffix, palette, split = "_labelTrainIds.png", False, None
    else:
        base = root / "ADEChallengeData2016"
        img_dir, lab_dir = base / "images" / "validation", base / "annotations" / "validation"
        suffix, palette, split = ".png", False, None
        ids = [f"ADE_val_{i + 1:08d}" for i in range(n)]
    for i, (iid, raw) in enumerate(zip(ids, raws)):
        _save_image(img_dir / f"{iid}.jpg", i)
        _save_label(lab_dir / f"{iid}{suffix}", raw, palette)
    if split is not None:
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("\n".join(ids) + "\n")
    return root, raws


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 220), "yellow": (230, 220, 30),
           "purple": (140, 40, 170), "orange": (240, 140, 20), "white": (245, 245, 245), "black": (10, 10, 10)}


def make_pairs(n: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """n (PNG bytes, caption) pairs: a square of one colour on another, captioned with both colours."""
    rng, names, out = np.random.default_rng(seed), list(COLOURS), []
    for _ in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        img = np.full((40, 48, 3), COLOURS[names[b]], np.uint8)
        y, x = rng.integers(0, 20), rng.integers(0, 24)
        img[y:y + 20, x:x + 24] = COLOURS[names[a]]
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append((buf.getvalue(), f"a {names[a]} square on {names[b]}"))
    return out


def write_csv(root: Path, pairs, missing: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "pairs.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["filepath", "title"])
        for i, (data, cap) in enumerate(pairs):
            (root / "img").mkdir(exist_ok=True)
            (root / "img" / f"{i:05d}.png").write_bytes(data)
            w.writerow([f"img/{i:05d}.png", cap])
        if missing:
            w.writerow(["img/missing.png", "a file that does not exist"])
    return root / "pairs.tsv"


PACL = [sys.executable, "-m", "tests.pacl_cli"]  # `python -m pacl_core` that also knows the tests' configs


def run_cli(*args):
    """Run in a real subprocess: the exit code and the streams a user sees."""
    return subprocess.run([*PACL, *map(str, args)], capture_output=True, text=True, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_model(folder) -> tuple[str, str]:
    """(model request, dropdown label) the live-server tests start the demo on: the embedded toy model, which
    ships a PACL head. `folder` is unused; it keeps the fixture's signature."""
    return "toy", TOY_LABEL


@contextmanager
def serving(demo):
    """Launch `demo` on a free loopback port; yields its URL and closes it afterwards."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def cache_repo(hub_cache: Path, repo: str, files: dict[str, Path], revision: str = "main",
               absent: tuple[str, ...] = ()) -> Path:
    """Put `files` ({name in repo: local file}) into the cache as revision `revision` of model repo `repo`;
    `absent` names files the Hub answered 404 for (recorded under .no_exist, as huggingface_hub does)."""
    folder = Path(hub_cache) / ("models--" + repo.replace("/", "--"))
    sha = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()  # 40 hex digits, like a commit
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / revision).write_text(sha)
    snap = folder / "snapshots" / sha
    for name, src in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, snap / name)
    for name in absent:
        (folder / ".no_exist" / sha / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / ".no_exist" / sha / name).touch()
    return snap


def small_vit(layers: int, seed: int, heads: int = 4):
    """A small random open_clip ViT Backbone (32 px, patch 8, width 64) with `layers` blocks of `heads` heads."""
    torch.manual_seed(seed)
    vision = {"image_size": 32, "layers": layers, "width": 64, "head_width": 64 // heads, "patch_size": 8}
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    model = open_clip.model.CLIP(32, vision, text, quick_gelu=True)
    return Backbone(model, open_clip.get_tokenizer("ViT-B-16"), f"small-vit-{layers}", None)
