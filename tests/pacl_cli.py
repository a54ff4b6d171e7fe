"""`python -m tests.pacl_cli ARGS` is `python -m pacl_core ARGS` with the tests' own open_clip configs
(tests/model_configs, e.g. PACL-Tiny-Test) registered first: what the tests run in a subprocess (torchrun too)."""

import sys
from pathlib import Path

import open_clip

TEST_CONFIGS = Path(__file__).resolve().parent / "model_configs"


def add_test_configs() -> None:
    """Make the tests' architectures known to open_clip by name, as a user adds their own configs."""
    if "PACL-Tiny-Test" not in open_clip.list_models():
        open_clip.add_model_config(TEST_CONFIGS)


if __name__ == "__main__":
    from pacl_core.cli import main

    add_test_configs()
    sys.exit(main())
