"""SC-CLIP (method "scclip") against a slow per-image reference, its pieces on hand-made cases, its defaults.

The reference follows the official SuleBai/SC-CLIP clip/model.py forward one image at a time, written here from
open_clip's block parameters (ln_1, in_proj, out_proj), one head at a time, with the official 0-indexed feature
list (feats_list[8] = block 9, feats_list[3:10] = blocks 4..10) hard-coded.
"""


import pytest
import torch
import torch.nn.functional as F

from pacl_core.backbone import load_backbone
from pacl_core.errors import PACLError
from pacl_core.methods import (
    LAYERS_NEEDED,
    layers_needed,
    lof_anomalies,
    method_defaults,
    replace_anomalies,
    run_last_block,
    scclip_layers,
)


# ---- the slow reference ------------------------------------------------------------------------
def ref_lof(x, n=30, contamination=0.05):
    """The official lof_pytorch on one image's patches (T, W) -> indices of the anomalies."""
    dist = torch.norm(x[:, None] - x[None, :], dim=2, p=2) ** 2
    knn_d, knn_i = torch.topk(dist, k=n + 1, largest=False)
    knn_d, knn_i = knn_d[:, 1:], knn_i[:, 1:]
    reach = torch.max(knn_d, knn_d[:, -1:].expand_as(knn_d))
    lrd = n / torch.nan_to_num(reach.mean(dim=1), nan=1e-6)
    lof = (lrd[knn_i] / lrd[:, None]).mean(dim=1)
    return torch.where(lof > torch.quantile(lof, 1 - contamination))[0].tolist()


def ref_replace(x, anomalies, grid):
    """Each anomaly (token index) -> the mean of its in-grid, non-anomalous 3x3 neighbours, token by token."""
    h, w = grid
    out = x.clone()
    bad = set(anomalies)
    for i in anomalies:
        r, c = divmod(i, w)
        near = [rr * w + cc for rr in range(r - 1, r + 2) for cc in range(c - 1, c + 2)
                if (rr, cc) != (r, c) and 0 <= rr < h and 0 <= cc < w and rr * w + cc not in bad]
        if near:
            out[i] = x[near].mean(dim=0)
    return out


def ref_cos(x):
    x = x / x.norm(dim=-1, keepdim=True)
    return x @ x.T


def ref_aggregate(x, corr):
    corr = corr.clone()
    corr[corr < 0.4] = 0.0
    return corr / (corr.sum(dim=-1, keepdim=True) + 1e-6) @ x


def ref_attention(block, x, prior):
    """The official custom_attn on one image's patches (T, W) given the mid-level cosine (T, T)."""
    W = x.shape[-1]
    H = block.attn.num_heads
    d = W // H
    ln = F.layer_norm(x, (W,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    q, k, v = (ln @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).chunk(3, dim=-1)
    c = (prior - prior.mean()) * 3.0
    c[c < 0] = float("-inf")
    heads = []
    for h in range(H):
        kh, vh = k[:, h * d:(h + 1) * d], v[:, h * d:(h + 1) * d]
        a = (torch.softmax(c, dim=-1) + torch.softmax(kh @ kh.T * d**-0.5, dim=-1)) / 2
        heads.append(a @ vh)
    return torch.cat(heads, dim=-1) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias


def ref_last(block, x, feats_list, grid):
    """One image: block 11's output x (N, W) and feats_list[j] = block j+1's output -> (1+T, W) before ln_post."""
    T = grid[0] * grid[1]
    anomalies = ref_lof(x[1:1 + T])
    mid = ref_cos(ref_replace(feats_list[8][1:1 + T], anomalies, grid))
    y = ref_aggregate(ref_replace(x[1:1 + T], anomalies, grid), mid)
    y = ref_attention(block, y, mid) + 0.3 * x[:1]
    after = ref_cos(feats_list[3][1:1 + T])
    y = ref_aggregate(y, after)
    multi = torch.zeros_like(feats_list[0])
    for i in range(3, 10):
        multi = multi + feats_list[i]
    z = ref_attention(block, multi[1:1 + T], mid) + 0.3 * multi[:1]
    y = y + ref_aggregate(z, after)
    cls = block(x[None])[0, :1]  # the CLS token through CLIP's own block
    return torch.cat([cls, y])


def ref_tokens(bb, image):
    """(1, 3, H, W) -> (1+T, D_v): the whole SC-CLIP forward of one image, after ln_post."""
    x, grid = bb.embed(image)
    blocks = bb.model.visual.transformer.resblocks
    feats_list = []
    for blk in blocks[:-1]:
        x = blk(x)
        feats_list.append(x[0])
    return bb.model.visual.ln_post(ref_last(blocks[-1], x[0], feats_list, grid))


@pytest.fixture(scope="module")
def biased():
    """Random-init ViT-B-16-quickgelu with non-zero biases and LayerNorm gains (random init leaves them 0 / 1)."""
    torch.manual_seed(0)
    bb = load_backbone("ViT-B-16-quickgelu:none", image_size=224)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in bb.model.visual.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif ".ln_" in name or name.startswith("ln_"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    return bb


@pytest.fixture(scope="module")
def trunk(biased):
    """Two 224-px images through blocks 1..11: (x (2, 197, 768), {i: block i's output})."""
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    x, grid = biased.embed(images)
    outs = {}
    with torch.no_grad():
        for i, blk in enumerate(biased.model.visual.transformer.resblocks[:-1], start=1):
            x = blk(x)
            outs[i] = x
    return images, x, grid, outs


# ---- against the reference ---------------------------------------------------------------------
@pytest.mark.slow
def test_last_block_matches_reference_batched_and_unbatched(biased, trunk):
    images, x, grid, outs = trunk
    last = biased.model.visual.transformer.resblocks[-1]
    feats = {i: outs[i] for i in layers_needed("scclip", 12)}
    with torch.no_grad():
        fast = run_last_block(last, x, grid, "scclip", feats)  # (2, 197, 768)
        for b in range(2):
            ref = ref_last(last, x[b], [outs[i][b] for i in range(1, 12)], grid)
            torch.testing.assert_close(fast[b], ref, rtol=1e-5, atol=1e-5)
            one = run_last_block(last, x[b:b + 1], grid, "scclip", {i: f[b:b + 1] for i, f in feats.items()})
            torch.testing.assert_close(one[0], ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fast, last(x), atol=1e-3), "scclip must differ from the vanilla block"


@pytest.mark.slow
def test_backbone_tokens_match_reference_and_leave_vanilla_unchanged(biased, trunk):
    images = trunk[0]
    state = {k: v.clone() for k, v in biased.model.state_dict().items()}
    with torch.no_grad():
        before, _ = biased.tokens(images, "vanilla")
        fast, grid = biased.tokens(images, "scclip")  # (2, 197, 768)
        after, _ = biased.tokens(images, "vanilla")
        assert grid == (14, 14)
        for b in range(2):
            torch.testing.assert_close(fast[b], ref_tokens(biased, images[b:b + 1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    for k, v in biased.model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} was modified"


def test_each_image_has_its_own_anomalies(trunk):
    _, x, _, _ = trunk
    patches = x[:, 1:]  # (2, 196, 768)
    batched = lof_anomalies(patches)
    for b in range(2):
        assert batched[b].nonzero().flatten().tolist() == ref_lof(patches[b])
        assert torch.equal(lof_anomalies(patches[b:b + 1])[0], batched[b])
    assert batched.sum(dim=1).tolist() == [10, 10]  # 196 tokens, above the 95% quantile
    assert not torch.equal(batched[0], batched[1])


# ---- the pieces on hand-made cases -------------------------------------------------------------
def test_lof_finds_planted_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 60, 8, generator=g) * 0.1  # (1, T, W): one tight cluster
    x[0, 7] += 5.0
    x[0, 33] -= 4.0
    found = lof_anomalies(x)[0]
    assert found[7] and found[33]
    assert int(found.sum()) == 3  # T = 60: the LOF values above the 95% quantile (position 56.05) are 3
    assert found.nonzero().flatten().tolist() == ref_lof(x[0])


def test_replacement_on_a_hand_made_grid():
    """5x5 grid, value r*10 + c: a corner, an edge, and a 2x2 cluster of adjacent anomalies at the far corner."""
    h, w = 5, 5
    values = torch.tensor([[r * 10.0 + c for c in range(w)] for r in range(h)]).view(1, h * w, 1)
    x = torch.cat([values, -2 * values], dim=-1).repeat(2, 1, 1)  # (2, 25, 2); image 1 has no anomalies
    anomalies = torch.zeros(2, h * w, dtype=torch.bool)
    for r, c in [(0, 0), (0, 2), (3, 3), (3, 4), (4, 3), (4, 4)]:
        anomalies[0, r * w + c] = True
    out = replace_anomalies(x, anomalies, (h, w))
    expected = values[0, :, 0].clone()
    expected[0] = (1 + 10 + 11) / 3  # corner: 3 neighbours
    expected[2] = (1 + 3 + 11 + 12 + 13) / 5  # edge: 5 neighbours
    expected[18] = (22 + 23 + 24 + 32 + 42) / 5  # (3, 3): its 3 anomalous neighbours left out
    expected[19] = (23 + 24) / 2  # (3, 4): on the border, 3 of its 5 neighbours anomalous
    expected[23] = (32 + 42) / 2  # (4, 3)
    # (4, 4): every neighbour is an anomaly, so it stays 44
    torch.testing.assert_close(out[0, :, 0], expected)
    torch.testing.assert_close(out[0, :, 1], -2 * expected)
    torch.testing.assert_close(out[1], x[1], rtol=0, atol=0)
    torch.testing.assert_close(out[0], ref_replace(x[0], anomalies[0].nonzero().flatten().tolist(), (h, w)))


# ---- layers, defaults, wiring ------------------------------------------------------------------
def test_layer_choices():
    assert LAYERS_NEEDED["scclip"](12) == (4, 5, 6, 7, 8, 9, 10) == layers_needed("scclip", 12)  # official, 1-indexed
    assert scclip_layers(24) == tuple(range(8, 21))
    assert scclip_layers(3) == (1, 2) and scclip_layers(2) == (1,)
    assert layers_needed("sclip", 12) == () and layers_needed("vanilla", 24) == ()
    with pytest.raises(PACLError, match="at least 2 blocks"):
        scclip_layers(1)


def test_official_defaults():
    d = method_defaults("scclip")
    assert d == {"logit_scale": 40.0, "mode": "slide", "image_size": 336, "window": 224, "stride": 112}
    voc = method_defaults("scclip", "voc21")
    assert voc["logit_scale"] == 50.0 and voc["background"] == "prob:0.15" and voc["area_threshold"] == 0.1
    assert method_defaults("scclip", "context60")["background"] == "prob:0.15"
    assert method_defaults("scclip", "coco_stuff")["image_size"] == 336  # SC-CLIP keeps 336 (SCLIP: 448)
    assert method_defaults("scclip", "ade20k", native_size=336)["window"] == 336  # ViT-L/14 at 336 px


def test_small_models_run(tiny):
    """The 2-block test model (4x4 grid, 16 tokens: 15 neighbours) runs through the whole path."""
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, grid = tiny.tokens(x, "scclip")
        one, _ = tiny.tokens(x[1:2], "scclip")
    assert out.shape == (3, 17, 64) and torch.isfinite(out).all()
    torch.testing.assert_close(one[0], out[1], rtol=1e-5, atol=1e-5)
