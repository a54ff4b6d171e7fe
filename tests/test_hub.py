"""Heads from the Hugging Face Hub: the hf-hub: spec, cached downloads through the real huggingface_hub code
(offline, from a cache laid out as huggingface_hub writes it), and one-line errors for every way it can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import huggingface_hub.constants as hf_constants
import numpy as np
import pytest
import torch
from PIL import Image

from demo.models import choice_for_request, default_registry, hub_choices
from pacl_core.checkpoint import load_head, save_head
from pacl_core.cli import main
from pacl_core.errors import PACLError
from pacl_core.hub import HubHead, parse_hub_spec
from pacl_core.pacl import VisionEmbedder
from pacl_core.segment import Segmenter, patch_scores
from tests.helpers import cache_repo

TINY = "PACL-Tiny-Test:none"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline huggingface_hub whose cache is a fresh temporary folder."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def head_files(tiny, tmp_path):
    """A tiny-backbone head with non-trivial weights, saved locally: (head, path)."""
    torch.manual_seed(1)
    head = VisionEmbedder(tiny.width, tiny.embed_dim)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return head, save_head(tmp_path / "local" / "head.safetensors", head, tiny, tau=0.7, logit_scale=30.0)


def _pair(path, name="head"):
    return {f"{name}.safetensors": path, f"{name}.json": path.with_suffix(".json")}


@pytest.mark.parametrize("spec, expected", [
    ("hf-hub:org/repo", HubHead("org/repo")),
    ("hf-hub:org/repo@v1", HubHead("org/repo", "v1")),
    ("hf-hub:org/repo:heads/b16.safetensors", HubHead("org/repo", None, "heads/b16.safetensors")),
    ("hf-hub:my-org/pacl.b16@refs/pr/2:x.safetensors", HubHead("my-org/pacl.b16", "refs/pr/2", "x.safetensors")),
])
def test_spec_forms(spec, expected):
    assert parse_hub_spec(spec) == expected
    assert str(parse_hub_spec(spec)) == spec


@pytest.mark.parametrize("spec", ["hf-hub:", "hf-hub:repo", "hf-hub:org/", "hf-hub:org//repo", "hf-hub:org/repo@",
                                  "hf-hub:org/repo:", "hf-hub:org/repo:head.bin", "hf-hub:org/repo:../x.safetensors",
                                  "hf-hub:org/re po", "hf-hub:a/b/c"])
def test_malformed_specs_are_one_line_errors_before_any_model_loads(spec, tmp_path, capsys):
    with pytest.raises(PACLError, match="not a valid Hub head spec|is not a Hub"):
        parse_hub_spec(spec)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    out = tmp_path / "out"
    argv = ["segment", str(img), "--words", "a,b", "--method", "pacl", "--head", spec, "--model", "no-such-model",
            "--out", str(out)]
    assert main(argv) == 2  # the unknown --model would fail later: the spec is checked first
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hf-hub:" in err[0] and "Hub" in err[0], err
    assert not out.exists()


def test_a_cached_head_loads_offline_and_matches_the_local_file(hub, tiny, head_files):
    head, path = head_files
    cache_repo(hub, "org/pacl-tiny", _pair(path))
    cache_repo(hub, "org/pacl-tiny", {"sub/other.safetensors": path, "sub/other.json": path.with_suffix(".json")},
               revision="v2")
    for spec in ("hf-hub:org/pacl-tiny", "hf-hub:org/pacl-tiny@v2:sub/other.safetensors"):
        loaded = load_head(spec, tiny)
        assert loaded.meta["tau"] == 0.7
        for k, v in head.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), (spec, k)
    # the Segmenter takes the spec as it takes a file, and gives the same maps
    x = torch.randn(2, 3, 32, 32)
    text = torch.nn.functional.normalize(torch.randn(3, tiny.embed_dim), dim=-1)
    a = patch_scores([Segmenter(tiny, method="pacl", head="hf-hub:org/pacl-tiny")], x, [text])[0][0]
    b = patch_scores([Segmenter(tiny, method="pacl", head=str(path))], x, [text])[0][0]
    assert torch.equal(a, b)


def test_a_revision_that_is_not_cached_is_not_replaced_by_another(hub, tiny, head_files):
    cache_repo(hub, "org/pacl-tiny", _pair(head_files[1]))
    with pytest.raises(PACLError, match=r"^hf-hub:org/pacl-tiny@v9: could not be fetched"):
        load_head("hf-hub:org/pacl-tiny@v9", tiny)


def test_a_repo_without_a_head_says_so(hub, tiny, head_files):
    cache_repo(hub, "org/readme-only", {"README.md": head_files[1].with_suffix(".json")},
               absent=("head.safetensors",))
    with pytest.raises(PACLError, match=r"^hf-hub:org/readme-only: the repository has no head.safetensors"):
        load_head("hf-hub:org/readme-only", tiny)
    cache_repo(hub, "org/no-json", {"head.safetensors": head_files[1]}, absent=("head.json",))
    with pytest.raises(PACLError, match=r"^hf-hub:org/no-json: the repository has no head.json"):
        load_head("hf-hub:org/no-json", tiny)


def test_a_head_for_another_backbone_is_refused(hub, tiny, head_files, tmp_path):
    path = head_files[1]
    meta = json.loads(path.with_suffix(".json").read_text())
    (tmp_path / "other.json").write_text(json.dumps(dict(meta, backbone="ViT-L-14-quickgelu")))
    cache_repo(hub, "org/pacl-l14", {"head.safetensors": path, "head.json": tmp_path / "other.json"})
    with pytest.raises(PACLError, match=r"^hf-hub:org/pacl-l14: this head was trained for ViT-L-14-quickgelu, not "
                                        "PACL-Tiny-Test"):
        load_head("hf-hub:org/pacl-l14", tiny)
    (tmp_path / "bad.json").write_text(json.dumps(dict(meta, format="pacl-train-state")))
    cache_repo(hub, "org/state", {"head.safetensors": path, "head.json": tmp_path / "bad.json"})
    with pytest.raises(PACLError, match=r"^hf-hub:org/state: is a 'pacl-train-state' checkpoint"):
        load_head("hf-hub:org/state", tiny)


@pytest.mark.slow
def test_offline_without_a_cache_is_one_line_exit_2_naming_the_repo(tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.getcwd())
    env.pop("HF_HUB_CACHE", None)
    cmd = [sys.executable, "-m", "tests.pacl_cli", "segment", str(img), "--words", "a,b", "--method", "pacl", "--head",
           "hf-hub:some-org/pacl-head", "--model", TINY, "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: hf-hub:some-org/pacl-head: could not be fetched") and "cache" in lines[0]
    assert not (tmp_path / "out").exists()


def test_demo_lists_the_heads_of_PACL_HEADS_and_segments_with_them(hub, head_files, tmp_path, monkeypatch):
    cache_repo(hub, "org/pacl-tiny", _pair(head_files[1]))
    choices = hub_choices("org/pacl-tiny, org/not-cached ,bad//name")  # the unusable two are skipped, logged
    assert [(c.label, c.spec) for c in choices] == [("PACL head: org/pacl-tiny (PACL-Tiny-Test:none)", TINY)]
    monkeypatch.setenv("PACL_HEADS", "hf-hub:org/pacl-tiny")
    reg = default_registry(tmp_path / "no-checkpoints")
    label = "PACL head: org/pacl-tiny (PACL-Tiny-Test:none)"
    assert label in reg.labels and reg.has_pacl_head(label)
    seg = reg.segmenter(label, "pacl")
    for k, v in head_files[0].state_dict().items():
        assert torch.equal(seg.head.state_dict()[k], v)
    assert choice_for_request("hf-hub:org/pacl-tiny").label == label  # app.py --model hf-hub:...
    with pytest.raises(PACLError, match="could not be fetched"):
        choice_for_request("hf-hub:org/not-cached")
