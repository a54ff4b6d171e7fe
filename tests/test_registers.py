"""Register tokens in the toy vision tower: the Backbone reads a register tower exactly as open_clip runs it,
every method runs on it, and `toy train --registers N` saves and loads it."""

import json

import pytest
import torch
import torch.nn.functional as F

from pacl_core.cli import main
from pacl_core.methods import METHODS, neighbourhood_bias
from pacl_core.toy import model as toymodel


@pytest.fixture(scope="module")
def register_model():
    torch.manual_seed(0)
    return toymodel.create_toy_clip(registers=3)


def test_plain_toy_tower_has_no_registers():
    model = toymodel.create_toy_clip()
    assert toymodel.count_registers(model) == 0
    assert type(model.visual) is not toymodel.RegisterVisionTransformer
    assert toymodel.toy_backbone(model).n_registers == 0


def test_backbone_matches_open_clips_forward_of_a_register_tower(register_model):
    """Reference: open_clip's own forward (with output_tokens) of the register tower; registers come last."""
    visual = register_model.visual
    assert visual.registers.shape == (3, visual.class_embedding.shape[0])
    x = torch.randn(2, 3, 96, 96)
    visual.output_tokens = True
    try:
        with torch.no_grad():
            pooled, tokens = visual(x)  # (B, D), (B, T + R, D_v)
    finally:
        visual.output_tokens = False
    assert tokens.shape[1] == 144 + 3
    backbone = toymodel.toy_backbone(register_model)
    assert backbone.n_registers == 3
    patch, grid = backbone.patch_tokens(x)  # (B, T, D_v)
    assert grid == (12, 12)
    torch.testing.assert_close(patch, tokens[:, :-3])
    torch.testing.assert_close(backbone.image_embedding(x), F.normalize(pooled, dim=-1))


def test_registers_take_part_in_attention(register_model):
    backbone = toymodel.toy_backbone(register_model)
    x = torch.randn(1, 3, 96, 96)
    before = backbone.patch_tokens(x)[0]
    saved = register_model.visual.registers.detach().clone()
    try:
        register_model.visual.registers.data.mul_(-3.0)
        after = backbone.patch_tokens(x)[0]
    finally:
        register_model.visual.registers.data.copy_(saved)
    assert (before - after).abs().max() > 1e-3, "changing the registers changes the patch tokens"


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_a_register_tower(register_model, method):
    backbone = toymodel.toy_backbone(register_model)
    tokens, grid = backbone.patch_tokens(torch.randn(2, 3, 64, 96), method)
    assert grid == (8, 12) and tokens.shape == (2, 96, backbone.width)
    assert torch.isfinite(tokens).all()


def test_naclip_bias_leaves_cls_and_registers_out():
    plain, padded = neighbourhood_bias((3, 4), 5.0), neighbourhood_bias((3, 4), 5.0, registers=2)
    assert plain.shape == (13, 13) and padded.shape == (15, 15)
    torch.testing.assert_close(padded[:13, :13], plain)
    assert padded[13:].abs().sum() == 0 and padded[:, 13:].abs().sum() == 0


def test_toy_train_registers_are_saved_and_loaded(tmp_path, capsys):
    out = tmp_path / "reg"
    code = main(["toy", "train", "--out", str(out), "--clip-steps", "2,2", "--pacl-steps", "2", "--pool", "16,16",
                 "--threads", "1", "--eval-n", "0", "--registers", "2"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "toy_clip.json").read_text())
    assert meta["registers"] == 2 and meta["training"]["train"]["registers"] == 2
    backbone = toymodel.load_toy_backbone(root=out)
    assert backbone.n_registers == 2
    assert type(backbone.model.visual) is toymodel.RegisterVisionTransformer
    x = torch.randn(1, 3, 96, 96)
    torch.testing.assert_close(backbone.image_embedding(x), backbone.model.encode_image(x, normalize=True))
    assert main(["toy", "train", "--out", str(tmp_path / "bad"), "--registers", "-1"]) == 2
    assert "error: --registers must be between 0 and 64, got -1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists(), "a refused run leaves nothing behind"


def test_register_count_that_does_not_fit_the_weights_is_one_line(tmp_path):
    from pacl_core.checkpoint import load_tensors, save_tensors
    from pacl_core.errors import PACLError

    torch.manual_seed(0)
    toymodel.save_clip(tmp_path, toymodel.create_toy_clip(registers=2), {})
    state, meta = load_tensors(toymodel.clip_path(tmp_path), toymodel.CLIP_FORMAT)
    cases = ((3, "JSON says 3 register tokens, its weights hold 2"), (0, "says 0 register tokens"),
             ("two", "must be an integer from 0 to 64"))
    for bad, message in cases:
        save_tensors(toymodel.clip_path(tmp_path), state, {**meta, "registers": bad})
        with pytest.raises(PACLError, match=message) as info:
            toymodel.load_toy_backbone(root=tmp_path)
        assert "\n" not in str(info.value)
