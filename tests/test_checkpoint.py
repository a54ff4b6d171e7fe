"""Checkpoints: safetensors + JSON round trip, and one clear error for every way they can be wrong."""

import json

import pytest
import torch

from pacl_core.checkpoint import load_head, save_head
from pacl_core.errors import PACLError
from pacl_core.pacl import VisionEmbedder


@pytest.fixture
def saved(tiny, tmp_path):
    head = VisionEmbedder(tiny.width, tiny.embed_dim)
    path = save_head(tmp_path / "head.safetensors", head, tiny, tau=0.5, logit_scale=20.0,
                     training={"steps": 3})
    return head, path


def test_round_trip(tiny, saved):
    head, path = saved
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["backbone"] == "PACL-Tiny-Test" and meta["tau"] == 0.5 and meta["training"] == {"steps": 3}
    loaded = load_head(path, tiny)
    for k, v in head.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.meta["logit_scale"] == 20.0
    assert load_head(path.with_suffix(".json"), tiny).in_dim == tiny.width  # either file names the pair
    assert not list(path.parent.glob("*.tmp"))  # atomic writes leave nothing behind


@pytest.mark.slow
def test_head_for_another_backbone(vitb, saved):
    with pytest.raises(PACLError, match="trained for PACL-Tiny-Test, not ViT-B-16-quickgelu"):
        load_head(saved[1], vitb)


@pytest.mark.slow
def test_dimension_mismatch(vitb, saved):
    _, path = saved
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["backbone"] = None
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(PACLError, match="head maps 64->32"):
        load_head(path, vitb)


def test_truncated_file(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PACLError, match="truncated or not a safetensors file") as e:
        load_head(path)
    assert "\n" not in str(e.value)


def test_missing_or_bad_metadata(saved):
    _, path = saved
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(PACLError, match="not a valid JSON"):
        load_head(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(PACLError, match="metadata file head.json is missing"):
        load_head(path)


def test_pickles_and_wrong_formats_refused(tmp_path, saved):
    pt = tmp_path / "head.pt"
    pt.write_bytes(b"\x80\x04pickle")
    with pytest.raises(PACLError, match="pickled checkpoints are refused"):
        load_head(pt)
    _, path = saved
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["format"] = "something-else"
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(PACLError, match="expected 'pacl-head'"):
        load_head(path)
    with pytest.raises(PACLError, match="no such checkpoint"):
        load_head(tmp_path / "nope.safetensors")


def test_flipped_tensor_bytes_are_caught_by_the_recorded_sha256(tiny, saved):
    head, path = saved
    meta = json.loads(path.with_suffix(".json").read_text())
    assert len(meta["tensors_sha256"]) == 64
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF  # one byte of the last tensor, inside the data (the header is at the start)
    path.write_bytes(bytes(data))
    with pytest.raises(PACLError, match="do not match the SHA-256 recorded in head.json") as e:
        load_head(path, tiny)
    assert "\n" not in str(e.value)
    del meta["tensors_sha256"]  # a head written before the record (or by someone else) still loads
    path.with_suffix(".json").write_text(json.dumps(meta))
    changed = load_head(path, tiny)
    assert any(not torch.equal(v, changed.state_dict()[k]) for k, v in head.state_dict().items())
