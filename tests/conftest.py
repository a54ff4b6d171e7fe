"""Shared fixtures: small random-weight backbones, loaded once per test session.

The tests' own tiny architecture (tests/model_configs/PACL-Tiny-Test.json) is not part of the package: it reaches
open_clip through PACL_MODEL_CONFIGS, which subprocesses (the CLI, torchrun) inherit.
"""

import os
from pathlib import Path

os.environ["PACL_MODEL_CONFIGS"] = str(Path(__file__).resolve().parent / "model_configs")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pacl_core.backbone import load_backbone  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """A tiny random open_clip ViT from tests/model_configs (32 px, patch 8, D_v=64, D=32)."""
    torch.manual_seed(0)
    return load_backbone("PACL-Tiny-Test:none")


@pytest.fixture(scope="session")
def vitb():
    """Random-init ViT-B-16-quickgelu: the real architecture without its weights."""
    torch.manual_seed(0)
    return load_backbone("ViT-B-16-quickgelu:none")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_image(rng, h, w, channels=3, dtype=np.uint8):
    top = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, top + 1, size=shape).astype(dtype)


def small_vit(layers: int, seed: int, heads: int = 4):
    """A small random open_clip ViT Backbone (32 px, patch 8, width 64) with `layers` blocks of `heads` heads."""
    import open_clip

    from pacl_core.backbone import Backbone

    torch.manual_seed(seed)
    vision = {"image_size": 32, "layers": layers, "width": 64, "head_width": 64 // heads, "patch_size": 8}
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    model = open_clip.model.CLIP(32, vision, text, quick_gelu=True)
    return Backbone(model, open_clip.get_tokenizer("ViT-B-16"), f"small-vit-{layers}", None)
