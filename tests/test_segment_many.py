"""One trunk for several methods: Backbone.trunk / finish, methods.layers_needed and segment_many against the
one-method-at-a-time path, for every method, whole and slide, with shifted passes and refinement."""

import numpy as np
import pytest
import torch

from pacl_core import methods as M
from pacl_core.backbone import Backbone
from pacl_core.errors import PACLError
from pacl_core.pacl import VisionEmbedder
from pacl_core.segment import Segmenter, group_by_geometry, resized_shape, segment_many
from tests.helpers import random_image, small_vit

WORDS = "sky, grass, red square, water"


@pytest.fixture(scope="module")
def deep():
    """A small random ViT with 4 blocks and 4 heads, its LayerNorm biases and gains made non-trivial."""
    backbone = small_vit(layers=4, seed=3)
    with torch.no_grad():
        for name, p in backbone.model.visual.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return backbone


@pytest.fixture(scope="module")
def head(deep):
    torch.manual_seed(4)
    return VisionEmbedder(deep.width, deep.embed_dim)  # random, so PACL differs from vanilla


def by_hand(backbone, images):
    """Outputs of every block (1-indexed) by open_clip's own blocks, one after the other."""
    x, _ = backbone.embed(images)
    outs = {}
    with torch.no_grad():
        for i, block in enumerate(backbone.model.visual.transformer.resblocks, start=1):
            x = block(x)
            outs[i] = x
    return outs


def test_trunk_keeps_exactly_the_blocks_asked_for(deep):
    x = torch.randn(2, 3, 32, 48)
    ref = by_hand(deep, x)
    with torch.no_grad():
        trunk = deep.trunk(x, keep=(3, 1))
    assert trunk.grid == (4, 6) and set(trunk.feats) == {1, 3}
    torch.testing.assert_close(trunk.x, ref[3])  # the last block's input: block L-1's output
    for i in (1, 3):
        torch.testing.assert_close(trunk.feats[i], ref[i])
    assert deep.trunk(x).feats == {}
    with pytest.raises(PACLError, match="blocks 1..3"):
        deep.trunk(x, keep=(4,))


def test_finish_equals_tokens_and_vanilla_pacl_share_the_last_block(deep, monkeypatch):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        trunk = deep.trunk(x, keep=sorted({i for m in M.METHODS for i in M.layers_needed(m, deep.depth)}))
        calls = []
        real = M.LAST_BLOCK["vanilla"]
        monkeypatch.setitem(M.LAST_BLOCK, "vanilla", lambda *a: calls.append(1) or real(*a))
        monkeypatch.setitem(M.LAST_BLOCK, "pacl", M.LAST_BLOCK["vanilla"])
        many = deep.finish_many(trunk, list(M.METHODS))
        assert len(calls) == 1  # vanilla and pacl: one last block
        for m in M.METHODS:
            torch.testing.assert_close(many[m], deep.tokens(x, m)[0], msg=m)


def test_declared_layers_reach_each_method_and_the_trunk_keeps_their_union(deep, monkeypatch):
    """Two test-only methods registered through the public registry, each reading earlier blocks."""
    seen = {}

    def reader(name):
        def block_fn(block, x, grid, feats):
            seen[name] = {i: f.clone() for i, f in feats.items()}
            return block(x) + sum(feats.values()) * 0.5  # uses the blocks, so the result depends on them
        return block_fn

    monkeypatch.setitem(M.LAST_BLOCK, "reads12", reader("reads12"))
    monkeypatch.setitem(M.LAST_BLOCK, "reads2", reader("reads2"))
    monkeypatch.setitem(M.LAYERS_NEEDED, "reads12", (2, 1))
    monkeypatch.setitem(M.LAYERS_NEEDED, "reads2", (2,))
    assert M.layers_needed("reads12", deep.depth) == (1, 2) and M.layers_needed("vanilla", deep.depth) == ()
    kept = []
    real_trunk = Backbone.trunk
    monkeypatch.setattr(Backbone, "trunk", lambda self, images, keep=(): kept.append(tuple(keep))
                        or real_trunk(self, images, keep))
    image = random_image(np.random.default_rng(0), 40, 56)
    segs = [Segmenter(deep, m, image_size=32, mode="whole") for m in ("vanilla", "reads12", "reads2")]
    shared = segment_many(segs, image, WORDS)
    assert kept == [(1, 2)]  # one trunk pass, the union of what the methods declared
    x = deep.preprocess(image, resized_shape(image.shape, 32))  # short side 32, aspect kept: (32, 45)
    ref = by_hand(deep, x)
    assert set(seen["reads12"]) == {1, 2} and set(seen["reads2"]) == {2}  # each method sees only its own
    torch.testing.assert_close(seen["reads12"][1], ref[1])
    torch.testing.assert_close(seen["reads2"][2], ref[2])
    kept.clear()
    alone = segs[1](image, WORDS)
    assert kept == [(1, 2)]
    np.testing.assert_allclose(shared["reads12"].low_scores, alone.low_scores, atol=1e-5)
    monkeypatch.setitem(M.LAYERS_NEEDED, "reads2", (4,))  # block L's output is not part of the trunk
    with pytest.raises(PACLError, match="only 4 blocks"):
        Segmenter(deep, "reads2")


def assert_same(shared, alone, label):
    assert shared.method == alone.method and shared.words == alone.words, label
    np.testing.assert_allclose(shared.low_scores, alone.low_scores, atol=1e-5, err_msg=label)
    np.testing.assert_allclose(shared.patch_scores, alone.patch_scores, atol=1e-5, err_msg=label)
    if alone.refined is not None:
        np.testing.assert_allclose(shared.refined, alone.refined, atol=1e-5, err_msg=label)
    assert np.array_equal(shared.mask, alone.mask), label


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["whole", "slide"])
@pytest.mark.parametrize("shifts,refine", [(1, None), (2, None), (1, "affinity"), (2, "pamr")])
def test_segment_many_equals_one_method_at_a_time(deep, head, monkeypatch, mode, shifts, refine):
    calls = []
    real_trunk = Backbone.trunk
    monkeypatch.setattr(Backbone, "trunk", lambda self, images, keep=(): calls.append(images.shape[0])
                        or real_trunk(self, images, keep))
    image = random_image(np.random.default_rng(1), 45, 70)
    segs = [Segmenter(deep, m, head=head if m == "pacl" else None, image_size=40, mode=mode, window=32, stride=16,
                      shifts=shifts, refine=refine, background="score:0.05") for m in M.METHODS]
    shared = segment_many(segs, image, WORDS)
    shared_calls, calls[:] = list(calls), []
    assert list(shared) == list(M.METHODS)
    for seg in segs:
        alone = seg(image, WORDS)
        assert_same(shared[seg.method], alone, f"{seg.method} {mode} shifts {shifts} refine {refine}")
    # one trunk pass per window batch and shifted view for all methods, as many as for one method alone
    assert shared_calls == calls[: len(calls) // len(segs)]


def test_methods_group_by_geometry(deep, head):
    defaults = {m: Segmenter(deep, m, head=head if m == "pacl" else None) for m in M.METHODS}  # official protocols
    groups = [[s.method for s in g] for g in group_by_geometry(defaults.values())]
    assert groups == [["vanilla", "pacl"], ["maskclip", "sclip", "naclip", "scclip"], ["clearclip"]]
    one = [Segmenter(deep, m, head=head if m == "pacl" else None, image_size=48, mode="whole") for m in M.METHODS]
    assert len(group_by_geometry(one)) == 1
    image = random_image(np.random.default_rng(2), 50, 40)
    shared = segment_many(defaults.values(), image, WORDS)
    for m, seg in defaults.items():
        assert_same(shared[m], seg(image, WORDS), m)


def test_segment_many_checks_its_input(deep):
    with pytest.raises(PACLError, match="once per call"):
        segment_many([Segmenter(deep), Segmenter(deep)], np.zeros((8, 8, 3), np.uint8), "sky")
    with pytest.raises(PACLError, match="no words"):
        segment_many([Segmenter(deep)], np.zeros((8, 8, 3), np.uint8), " , ")
    assert segment_many([], np.zeros((8, 8, 3), np.uint8), "sky") == {}
