"""The built wheel is complete: installed on its own, `python -m pacl_core segment --model toy` runs from a folder
outside the checkout, offline, with the toy weights shipped as package data (and no test-only files inside)."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs the wheel (python -m pytest -m "not slow" skips it)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"  # build from a copy, so the checkout gets no build/ or *.egg-info
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".venv",
                                                              "runs", "out", ".gradio", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(out), str(src)], check=True, capture_output=True, timeout=300)
    return next(out.glob("pacl_explorer-*.whl"))


def test_wheel_ships_the_toy_weights_and_no_test_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("toy_clip.safetensors", "toy_clip.json", "toy_pacl_head.safetensors", "toy_pacl_head.json"):
        assert f"pacl_core/toy/weights/{f}" in names, f
    assert "pacl_core/model_configs/PACL-Toy.json" in names
    assert not [n for n in names if "PACL-Tiny-Test" in n or n.startswith(("tests/", "demo/"))]


def test_installed_wheel_segments_with_the_toy_model_outside_the_checkout(wheel, tmp_path):
    site, work = tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    shutil.copy(ROOT / "assets" / "examples" / "toy_01.png", work / "scene.png")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "pacl_core", "segment", "scene.png", "--words", "circle, ring, cross",
                          "--model", "toy", "--method", "pacl", "--out", "o"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    where = subprocess.run([sys.executable, "-c", "import pacl_core; print(pacl_core.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where  # the installed copy ran, not the checkout
    result = json.loads((work / "o" / "scene" / "result.json").read_text())
    assert result["method"] == "pacl" and abs(sum(result["pixel_share"].values()) - 1) < 1e-6
