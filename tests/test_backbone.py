"""The backbone: token shapes, equality with open_clip's own forward, interpolation, text cache, loading errors."""

import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from pacl_core.backbone import check_device, load_backbone, parse_model_spec, weights_status
from pacl_core.errors import PACLError


def test_patch_tokens_match_open_clip_at_native_size(tiny):
    x = torch.randn(2, 3, 32, 32)
    visual = tiny.model.visual
    visual.output_tokens = True
    try:
        pooled, ref_tokens = visual(x)
    finally:
        visual.output_tokens = False
    tokens, grid = tiny.patch_tokens(x)
    assert grid == (4, 4) and tokens.shape == (2, 16, tiny.width)
    torch.testing.assert_close(tokens, ref_tokens)  # after ln_post, before the projection
    torch.testing.assert_close(tiny.vanilla_patch_embeddings(tokens), tokens @ tiny.model.visual.proj)
    torch.testing.assert_close(tiny.image_embedding(x), tiny.model.encode_image(x, normalize=True))


@pytest.mark.slow
def test_vitb16_at_448_gives_28x28_patches(vitb):
    assert (vitb.width, vitb.embed_dim, vitb.patch_size, vitb.image_size) == (768, 512, 16, 448)
    tokens, grid = vitb.patch_tokens(torch.randn(1, 3, 448, 448))
    assert grid == (28, 28) and tokens.shape == (1, 784, 768)
    assert vitb.vanilla_patch_embeddings(tokens).shape == (1, 784, 512)


def test_positional_embedding_interpolation(tiny):
    pe = tiny.positional_embedding((4, 4))
    assert pe is tiny.model.visual.positional_embedding  # native grid: untouched
    big = tiny.positional_embedding((6, 10))  # non-square
    assert big.shape == (1 + 60, tiny.width)
    torch.testing.assert_close(big[0], pe[0])  # the CLS position is kept
    tokens, grid = tiny.patch_tokens(torch.randn(1, 3, 48, 80))
    assert grid == (6, 10) and tokens.shape == (1, 60, tiny.width)


def test_text_embeddings_normalised_and_cached(tiny):
    tiny._text_cache.clear()
    calls = tiny.text_encoder_calls
    e = tiny.text_embeddings(["dog", "grass", "sky"])
    assert e.shape == (3, tiny.embed_dim)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    assert tiny.text_encoder_calls == calls + 1
    again = tiny.text_embeddings(["sky", "dog"])
    assert tiny.text_encoder_calls == calls + 1  # no text-tower work for cached words
    torch.testing.assert_close(again, e[[2, 0]])
    other = tiny.text_embeddings(["dog"], templates="single")  # templates are part of the key
    assert tiny.text_encoder_calls == calls + 2
    assert not torch.allclose(other[0], e[0])


def test_text_embedding_is_template_mean(tiny):
    templates = ("a photo of a {}.", "art of the {}.")
    e = tiny.text_embeddings(["cat"], templates=templates)[0]
    with torch.no_grad():
        each = tiny.model.encode_text(tiny.tokenizer([t.format("cat") for t in templates]), normalize=True)
    torch.testing.assert_close(e, torch.nn.functional.normalize(each.mean(0), dim=-1))


def test_long_and_unicode_words_do_not_crash(tiny):
    e = tiny.text_embeddings(["x" * 500, "🐶 dog", "Straße", "猫"])
    assert e.shape == (4, tiny.embed_dim) and torch.isfinite(e).all()


def test_model_spec_parsing():
    assert parse_model_spec("vit-b-16") == ("ViT-B-16-quickgelu", "openai")
    assert parse_model_spec("ViT-B-16:openai") == ("ViT-B-16-quickgelu", "openai")  # QuickGELU for OpenAI
    assert parse_model_spec("ViT-B-16", "openai") == ("ViT-B-16-quickgelu", "openai")
    assert parse_model_spec("ViT-B-16-quickgelu:none") == ("ViT-B-16-quickgelu", None)
    with pytest.raises(PACLError, match="unknown model"):
        parse_model_spec("ViT-Z-99")


def test_offline_real_weights_fail_fast_with_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ok, why = weights_status("vit-b-16")
    assert not ok and "not cached" in why
    t = time.time()
    with pytest.raises(PACLError) as err:
        load_backbone("vit-b-16")
    msg = str(err.value)
    assert "\n" not in msg and "cannot load ViT-B-16-quickgelu 'openai'" in msg and "--pretrained" in msg
    assert time.time() - t < 10


def test_unknown_pretrained_tag():
    with pytest.raises(PACLError, match="no 'nonsense' weights"):
        load_backbone("ViT-B-16-quickgelu", pretrained="nonsense")


def test_local_safetensors_weights_load(tmp_path, tiny):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(path))
    other = load_backbone("PACL-Tiny-Test", pretrained=str(path))
    for (k, a), b in zip(tiny.model.state_dict().items(), other.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_pickled_weights_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not loaded")
    with pytest.raises(PACLError, match="pickled checkpoints are refused"):
        load_backbone("PACL-Tiny-Test", pretrained=str(path))


def test_backbone_is_frozen_and_unmodified_by_use(tiny):
    assert not any(p.requires_grad for p in tiny.model.parameters())
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    tiny.patch_tokens(torch.randn(1, 3, 64, 48))
    for k, v in tiny.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert "PACL-Tiny-Test" in open_clip.list_models()


def test_bad_device_is_one_clear_error():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(PACLError, match="unknown device 'gpu'; use cpu, cuda or cuda:N"):
        check_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(PACLError, match="device 'cuda': no CUDA GPU is available here; use cpu"):
            check_device("cuda")
    with pytest.raises(PACLError, match="device 'cuda:99'"):
        check_device("cuda:99")


@pytest.mark.parametrize("kwargs, message", [
    (dict(device="gpu"), "unknown device 'gpu'"),
    (dict(image_size=0), "image_size must be a whole number of pixels from 1 to 2048, got 0"),
    (dict(templates="nope"), "unknown template set 'nope'"),
])
@pytest.mark.parametrize("spec", ["toy", "PACL-Tiny-Test:none"])
def test_bad_settings_fail_before_any_weights_load(spec, kwargs, message, monkeypatch):
    import pacl_core.backbone as backbone_module

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the settings were checked")

    monkeypatch.setattr(backbone_module, "create_clip", no_loading)
    monkeypatch.setitem(backbone_module.MODEL_LOADERS, "toy", no_loading)
    with pytest.raises(PACLError, match=message):
        load_backbone(spec, **kwargs)


def test_toy_model_takes_a_template_set():
    from pacl_core.prompts import IMAGENET_7
    from pacl_core.toy.model import TOY_TEMPLATES

    assert load_backbone("toy").templates == tuple(TOY_TEMPLATES)  # what it was trained with, by default
    custom = load_backbone("toy", templates="imagenet7")
    assert custom.templates == IMAGENET_7
    assert not torch.allclose(custom.text_embeddings(["star"]), load_backbone("toy").text_embeddings(["star"]))


@pytest.mark.parametrize("spec, kind", [
    ("RN50:none", "a ResNet"), ("convnext_base:none", "a ConvNeXt"),
    ("ViT-B-16-SigLIP:none", "timm's vit_base_patch16_siglip_224"),
    ("coca_ViT-B-32:none", "does not pool its CLS token"), ("nllb-clip-base:none", "Hugging Face transformer"),
])
def test_unsupported_architectures_are_one_line_errors_before_loading(spec, kind, monkeypatch):
    import pacl_core.backbone as backbone_module

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was created before its architecture was checked")

    monkeypatch.setattr(backbone_module, "create_clip", no_loading)
    with pytest.raises(PACLError, match="supports open_clip's own CLS-token ViTs") as err:
        load_backbone(spec)
    assert kind in str(err.value) and "\n" not in str(err.value)


def test_a_created_model_without_a_cls_vit_is_refused_by_backbone():
    import open_clip

    from pacl_core.backbone import Backbone

    model = open_clip.create_model("RN50", pretrained=None)
    with pytest.raises(PACLError, match="ModifiedResNet"):
        Backbone(model, open_clip.get_tokenizer("RN50"), "RN50", None)


def test_toy_model_takes_another_tower_file(tmp_path):
    import shutil

    from pacl_core.toy.model import CLIP_FILE, clip_path, head_path

    shipped = load_backbone("toy")
    same = load_backbone("toy", pretrained=str(clip_path()))
    assert same.default_head == shipped.default_head == head_path()
    x = torch.zeros(1, 3, 96, 96)
    torch.testing.assert_close(same.patch_tokens(x)[0], shipped.patch_tokens(x)[0])
    alone = tmp_path / "t" / CLIP_FILE  # a tower with no head beside it
    alone.parent.mkdir()
    shutil.copy(clip_path(), alone)
    shutil.copy(clip_path().with_suffix(".json"), alone.with_suffix(".json"))
    assert load_backbone("toy", pretrained=str(alone)).default_head is None
    with pytest.raises(PACLError, match="toy model weights are missing"):
        load_backbone("toy", pretrained=str(tmp_path / "nope.safetensors"))


@pytest.mark.slow
def test_importing_pacl_core_registers_nothing():
    """No import-time effects: the project's configs and "toy" become known where a model is first resolved."""
    code = ("import open_clip, pacl_core, pacl_core.backbone as b\n"
            "before = set(open_clip.list_models())\n"
            "assert 'PACL-Toy' not in before and not b.MODEL_LOADERS, (sorted(b.MODEL_LOADERS), 'PACL-Toy' in before)\n"
            "b.parse_model_spec('PACL-Toy:none')\n"
            "assert set(open_clip.list_models()) == before | {'PACL-Toy'} and list(b.MODEL_LOADERS) == ['toy']\n"
            "b.register_builtin_models()\n"
            "assert b.backbone_spec({'backbone': 'PACL-Toy'}) == 'toy'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
