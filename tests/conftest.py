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
