"""One source for dependencies: requirements.txt (what a Hugging Face Space installs, before the repository is
there) is pyproject.toml's runtime list plus its [demo] extra, and requirements-dev.txt installs from pyproject."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_requirements_txt_is_the_runtime_and_demo_lists_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = project["dependencies"] + project["optional-dependencies"]["demo"]
    lines = requirement_lines(ROOT / "requirements.txt")
    assert lines == want
    assert all(line[0].isalpha() for line in lines), "names only: a Space has no checkout to install from"
    assert "gradio>=6,<7" in want, "the demo is written for Gradio 6"


def test_requirements_dev_installs_the_checkout_with_its_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert requirement_lines(ROOT / "requirements-dev.txt") == ["-e .[dev,demo]"]
    assert {"dev", "demo"} <= set(project["optional-dependencies"])
