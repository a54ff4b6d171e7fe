"""Training-free last blocks (MaskCLIP, SCLIP, ClearCLIP, NACLIP) against slow references, defaults, and PAMR.
SC-CLIP, which also reads earlier blocks, has its own reference in test_scclip.py.

Each reference is written here from open_clip's block parameters (in_proj, out_proj, ln_1, ln_2, mlp), one head
and one token pair at a time, following the official repositories' formulas.
"""

import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from pacl_core.backbone import Backbone
from pacl_core.cli import main
from pacl_core.errors import PACLError
from pacl_core.methods import METHOD_DEFAULTS, METHODS, TRAINING_FREE, method_defaults, run_last_block
from pacl_core.pamr import pamr
from pacl_core.segment import Segmenter, label_mask, parse_background
from tests.helpers import random_image

ALL = ("vanilla",) + tuple(m for m in TRAINING_FREE if m != "scclip")  # scclip reads earlier blocks: test_scclip.py
REDUCED = ("clearclip", "naclip")  # residual and FFN removed


# ---- the slow reference -------------------------------------------------------------------------
def gaussian(i: int, j: int, grid, std: float = 5.0) -> float:
    """NACLIP's neighbourhood bias between tokens i, j (0 = CLS) on a row-major (h, w) patch grid."""
    if i == 0 or j == 0:
        return 0.0
    (r1, c1), (r2, c2) = divmod(i - 1, grid[1]), divmod(j - 1, grid[1])
    return math.exp(-((r1 - r2) ** 2 + (c1 - c2) ** 2) / (2 * std**2))


def reference_weights(q, k, grid, method):
    """One head's attention (N, N) from its q, k (N, d), straight from each paper's formula."""
    n, d = q.shape
    s = d**-0.5
    if method == "vanilla":
        return torch.softmax(q @ k.T * s, dim=-1)
    if method == "maskclip":  # each patch attends to itself; the CLS token as in CLIP
        a = torch.eye(n, dtype=q.dtype)
        a[0] = torch.softmax(q[0] @ k.T * s, dim=-1)
        return a
    if method == "sclip":
        return torch.softmax(q @ q.T * s, dim=-1) + torch.softmax(k @ k.T * s, dim=-1)
    if method == "clearclip":
        return torch.softmax(q @ q.T * s, dim=-1)
    if method == "naclip":
        bias = torch.tensor([[gaussian(i, j, grid) for j in range(n)] for i in range(n)], dtype=q.dtype)
        return torch.softmax(k @ k.T * s + bias, dim=-1)
    raise AssertionError(method)


def reference_last_block(block, x, grid, method):
    """(1+T, W) tokens of one image through the last block as `method` runs it, from the block's parameters."""
    assert isinstance(block.mlp.gelu, open_clip.transformer.QuickGELU), "reference assumes QuickGELU"
    W = x.shape[-1]
    heads = block.attn.num_heads
    d = W // heads
    w_in, b_in = block.attn.in_proj_weight, block.attn.in_proj_bias  # (3W, W), (3W,)
    y = F.layer_norm(x, (W,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)  # (N, W)
    outs = []
    for h in range(heads):
        rows = slice(h * d, (h + 1) * d)
        q = y @ w_in[:W][rows].T + b_in[:W][rows]  # (N, d)
        k = y @ w_in[W:2 * W][rows].T + b_in[W:2 * W][rows]  # (N, d)
        v = y @ w_in[2 * W:][rows].T + b_in[2 * W:][rows]  # (N, d)
        outs.append(reference_weights(q, k, grid, method) @ v)  # (N, d)
    attn = torch.cat(outs, dim=-1) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias  # (N, W)
    if method in REDUCED:
        return attn
    x = x + attn
    z = F.layer_norm(x, (W,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    hidden = z @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
    hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
    return x + hidden @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias


def last_block_input(backbone, images):
    """Tokens entering the last block (B, 1+T, W) and the grid, via open_clip's own earlier blocks."""
    with torch.no_grad():
        x, grid = backbone.embed(images)  # (B, 1+T, W)
        for block in backbone.model.visual.transformer.resblocks[:-1]:
            x = block(x)
    return x, grid


def reference_tokens(backbone, x, grid, method):
    """Last-block input (B, 1+T, W) -> all output tokens (B, 1+T, D) in the joint space, by the reference."""
    visual = backbone.model.visual
    last = visual.transformer.resblocks[-1]
    with torch.no_grad():
        x = torch.stack([reference_last_block(last, xi, grid, method) for xi in x])  # (B, 1+T, W)
        return visual.ln_post(x) @ visual.proj  # (B, 1+T, D)


def fast_tokens(backbone, images, method):
    with torch.no_grad():
        tokens, _ = backbone.tokens(images, method)  # (B, 1+T, D_v)
        return tokens @ backbone.model.visual.proj  # (B, 1+T, D)


@pytest.fixture(scope="module")
def multihead():
    """A tiny random ViT with 4 heads (the repo's tiny config has one), to exercise the head split."""
    torch.manual_seed(1)
    vision = {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8}
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    model = open_clip.model.CLIP(32, vision, text, quick_gelu=True)
    assert model.visual.transformer.resblocks[-1].attn.num_heads == 4
    return Backbone(model, open_clip.get_tokenizer("ViT-B-16"), "multihead-test", None)


@pytest.fixture(scope="module")
def vitb_runs(vitb):
    """ViT-B/16 on one non-square image (a 6 x 9 grid): every method's fast tokens, vanilla first and last."""
    x = torch.randn(1, 3, 96, 144, generator=torch.Generator().manual_seed(2))
    versions = {n: (p.data_ptr(), p._version) for n, p in vitb.model.named_parameters()}
    runs = {m: fast_tokens(vitb, x, m) for m in ALL}
    return {"images": x, "runs": runs, "vanilla_again": fast_tokens(vitb, x, "vanilla"), "versions": versions}


# ---- fast path == reference ---------------------------------------------------------------------
@pytest.mark.slow
def test_vitb_matches_reference(vitb, vitb_runs):
    x_in, grid = last_block_input(vitb, vitb_runs["images"])
    assert grid == (6, 9)
    for method, got in vitb_runs["runs"].items():
        assert got.shape == (1, 1 + 54, 512)
        torch.testing.assert_close(got, reference_tokens(vitb, x_in, grid, method), atol=1e-5, rtol=1e-5,
                                   msg=method)
    emb, _ = Segmenter(vitb, "naclip").patch_embeddings(vitb_runs["images"])  # (1, T, D), the Segmenter's path
    torch.testing.assert_close(emb, vitb_runs["runs"]["naclip"][:, 1:], atol=0, rtol=0)


@pytest.mark.parametrize("fixture", ["multihead", "tiny"])
@pytest.mark.parametrize("size", [(40, 56), (32, 32), (72, 24)])
def test_small_models_match_reference_at_any_size(request, fixture, size):
    backbone = request.getfixturevalue(fixture)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
    x_in, grid = last_block_input(backbone, x)
    for method in ALL:
        torch.testing.assert_close(fast_tokens(backbone, x, method), reference_tokens(backbone, x_in, grid, method),
                                   atol=1e-5, rtol=1e-5, msg=f"{fixture} {method} {size}")


def test_vanilla_reference_is_open_clips_own_block(multihead):
    """The reference's building blocks reproduce nn.MultiheadAttention + MLP: vanilla equals block(x)."""
    block = multihead.model.visual.transformer.resblocks[-1]
    x = torch.randn(1, 1 + 12, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(reference_last_block(block, x[0], (3, 4), "vanilla"), block(x)[0])


@pytest.mark.slow
def test_methods_differ(vitb_runs):
    emb = {m: F.normalize(t[:, 1:], dim=-1) for m, t in vitb_runs["runs"].items()}
    for i, a in enumerate(ALL):
        for b in ALL[i + 1:]:
            assert (emb[a] - emb[b]).abs().max() > 1e-2, f"{a} and {b} give the same patch embeddings"


def test_naclip_bias_follows_the_grid_not_the_token_order(multihead):
    """Same tokens, transposed grid: NACLIP changes (its neighbours change), CLIP and ClearCLIP do not."""
    block = multihead.model.visual.transformer.resblocks[-1]
    x = torch.randn(1, 1 + 12, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        for method, differs in [("naclip", True), ("clearclip", False), ("vanilla", False)]:
            a, b = run_last_block(block, x, (3, 4), method), run_last_block(block, x, (4, 3), method)
            assert bool((a - b).abs().max() > 1e-4) == differs, method


def test_cls_token_per_method(multihead):
    """MaskCLIP and SCLIP keep CLIP's residual path, so MaskCLIP's CLS equals CLIP's; the reduced ones do not."""
    block = multihead.model.visual.transformer.resblocks[-1]
    x = torch.randn(2, 1 + 12, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = {m: run_last_block(block, x, (3, 4), m) for m in ALL}
    torch.testing.assert_close(out["maskclip"][:, 0], out["vanilla"][:, 0])
    assert (out["maskclip"][:, 1:] - out["vanilla"][:, 1:]).abs().max() > 1e-3


# ---- one backbone for every method, never modified ---------------------------------------------
@pytest.mark.slow
def test_vanilla_unchanged_after_every_method(vitb, vitb_runs, multihead):
    assert torch.equal(vitb_runs["vanilla_again"], vitb_runs["runs"]["vanilla"])
    now = {n: (p.data_ptr(), p._version) for n, p in vitb.model.named_parameters()}
    assert now == vitb_runs["versions"], "a parameter was replaced or written in place"
    x = torch.randn(1, 3, 32, 40, generator=torch.Generator().manual_seed(8))
    state = {k: v.clone() for k, v in multihead.model.state_dict().items()}
    before, clip_image = fast_tokens(multihead, x, "vanilla"), multihead.model.encode_image(x[..., :32])
    for method in TRAINING_FREE:
        Segmenter(multihead, method).patch_embeddings(x)
        assert torch.equal(fast_tokens(multihead, x, "vanilla"), before), f"vanilla changed after {method}"
    assert torch.equal(multihead.model.encode_image(x[..., :32]), clip_image)
    after = multihead.model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())


def test_unknown_method_lists_valid_ones(tiny, tmp_path, capsys):
    with pytest.raises(PACLError, match="valid methods: vanilla, pacl, maskclip, sclip, clearclip, naclip"):
        Segmenter(tiny, method="clearclipp")
    with pytest.raises(PACLError, match="naclip"):
        run_last_block(tiny.model.visual.transformer.resblocks[-1], torch.zeros(1, 5, 64), (2, 2), "SCLIP")
    code = main(["segment", str(tmp_path / "x.png"), "--words", "a", "--method", "mask-clip",
                 "--out", str(tmp_path / "out"), "--model", "PACL-Tiny-Test:none"])
    assert code == 2 and "valid methods" in capsys.readouterr().err


# ---- per-method defaults -------------------------------------------------------------------------
@pytest.mark.slow
def test_segmenter_takes_method_defaults(vitb, tiny):
    s = Segmenter(vitb, "sclip")
    assert (s.mode, s.image_size, s.window, s.stride, s.logit_scale) == ("slide", 336, 224, 112, 40.0)
    c = Segmenter(vitb, "clearclip")
    assert (c.mode, c.image_size, c.window, c.stride, c.logit_scale) == ("slide", 448, 448, 224, 50.0)
    v = Segmenter(vitb, "vanilla")
    assert (v.mode, v.image_size, v.window) == ("whole", vitb.image_size, 224)
    assert v.logit_scale == pytest.approx(vitb.logit_scale)
    mine = Segmenter(vitb, "naclip", mode="whole", image_size=224, window=320, logit_scale=7)
    assert (mine.mode, mine.image_size, mine.window, mine.stride, mine.logit_scale) == ("whole", 224, 320, 160, 7.0)
    t = Segmenter(tiny, "naclip")  # pixel defaults scale with the native size (32 px here)
    assert (t.image_size, t.window, t.stride) == (48, 32, 16)


def test_dataset_defaults_are_usable():
    assert method_defaults("sclip", "voc21")["logit_scale"] == 65.0
    assert method_defaults("clearclip", "coco_object")["background"] == "prob:0.4"
    assert method_defaults("naclip", "coco_stuff")["image_size"] == 336  # NACLIP v2's configs: 336 everywhere
    assert method_defaults("naclip", "voc20")["mode"] == "whole" and method_defaults("naclip")["refine"] == "pamr"
    assert method_defaults("clearclip", "cityscapes")["window"] == 224 and method_defaults("sclip", "voc20") == \
        method_defaults("sclip")
    for method, entry in METHOD_DEFAULTS.items():
        assert method in METHODS
        for dataset in entry.get("datasets", {}):
            d = method_defaults(method, dataset)
            assert "background" not in d or parse_background(d["background"])[0] == "prob"
            assert d["stride"] * 2 == d["window"] or (method, dataset) == ("clearclip", "cityscapes")
            assert d["logit_scale"] > 0


def test_prob_background_rule():
    scores = torch.tensor([[[0.30, 0.20]], [[0.10, 0.20]]])  # (K=2, 1, 2): a clear pixel and a tie
    mask = label_mask(scores, 40.0, parse_background("prob:0.6"))
    p = torch.softmax(scores * 40, dim=0).max(dim=0).values  # (1, 2)
    assert p[0, 0] > 0.6 > p[0, 1]
    assert mask.tolist() == [[0, -1]]


# ---- PAMR ------------------------------------------------------------------------------------------
def reference_pamr(image, scores, steps, dilations):
    """PAMR pixel by pixel: (3, H, W), (K, H, W) at the same size -> (K, H, W)."""
    C, H, W = image.shape
    at = lambda t, y, x: t[:, min(max(y, 0), H - 1), min(max(x, 0), W - 1)]  # noqa: E731 replicate padding
    offs = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    aff = torch.zeros(len(offs), H, W)
    for y in range(H):
        for x in range(W):
            window = [at(image, y + dy * d, x + dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            std = torch.stack(window).std(dim=0)  # (3,)
            logit = torch.stack([-(image[:, y, x] - at(image, y + oy, x + ox)).abs() / (1e-8 + 0.1 * std)
                                 for oy, ox in offs]).mean(dim=1)  # (P,)
            aff[:, y, x] = torch.softmax(logit, dim=0)
    mask = scores.clone()
    for _ in range(steps):
        new = torch.zeros_like(mask)
        for y in range(H):
            for x in range(W):
                new[:, y, x] = sum(aff[i, y, x] * at(mask, y + oy, x + ox) for i, (oy, ox) in enumerate(offs))
        mask = new
    return mask


def test_pamr_matches_reference():
    g = torch.Generator().manual_seed(9)
    image, scores = torch.rand(3, 7, 9, generator=g), torch.randn(4, 7, 9, generator=g)
    got = pamr(image[None], scores[None], steps=3, dilations=(1, 2))[0]
    torch.testing.assert_close(got, reference_pamr(image, scores, 3, (1, 2)), atol=1e-5, rtol=1e-5)


def test_pamr_snaps_labels_to_image_edges():
    image = torch.zeros(1, 3, 48, 48)
    image[..., 24:] = 1.0  # dark left half, bright right half
    scores = torch.zeros(1, 2, 48, 48)
    scores[:, 0, :, :28] = 1.0  # the coarse map puts the boundary 4 px too far right
    scores[:, 1, :, 28:] = 1.0
    refined = pamr(image, scores)  # (1, 2, 48, 48)
    labels = refined[0].argmax(0)
    assert (labels[:, :24] == 0).all() and (labels[:, 24:] == 1).all()
    torch.testing.assert_close(refined.sum(1), scores.sum(1))  # a weighted mean: per-pixel totals kept


def test_segmenter_refine(tiny, rng):
    img = random_image(rng, 40, 52)
    plain = Segmenter(tiny, "naclip", refine="none")(img, "a, b, c")
    refined = Segmenter(tiny, "naclip")(img, "a, b, c")  # NACLIP's official default: PAMR
    assert refined.scores.shape == plain.scores.shape and not np.allclose(refined.scores, plain.scores)
    assert np.array_equal(refined.mask, refined.scores.argmax(0))
    np.testing.assert_array_equal(refined.patch_scores, plain.patch_scores)
    with pytest.raises(PACLError, match="pamr"):
        Segmenter(tiny, "naclip", refine="crf")
