"""Shared fixtures: small random-weight backbones, loaded once per test session.

The tests' own tiny architecture (tests/model_configs/PACL-Tiny-Test.json) is not part of the package: it is added
to open_clip here, as a user adds their own configs; subprocesses (the CLI, torchrun) run `python -m tests.pacl_cli`,
which adds it too.
"""

import numpy as np
import pytest
import torch

from pacl_core.backbone import load_backbone
from tests.pacl_cli import add_test_configs

add_test_configs()


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
