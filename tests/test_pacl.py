"""The PACL equations against slow reference loops, and the chunked loss against the naive one."""

import math

import pytest
import torch
import torch.nn.functional as F

from pacl_core.loss import PACLLoss, pairwise_compatibility
from pacl_core.pacl import (
    VisionEmbedder,
    attended_embedding,
    compatibility,
    patch_attention,
    patch_similarity,
)


def reference_compatibility(patches, texts, tau=1.0):
    """φ̂ written as loops straight from the paper, in float64."""
    B, T, _ = patches.shape
    out = torch.zeros(B, texts.shape[0], dtype=torch.float64)
    for b in range(B):
        for n in range(texts.shape[0]):
            t = texts[n].double()
            s = [F.cosine_similarity(patches[b, i].double(), t, dim=0) / tau for i in range(T)]
            z = sum(math.exp(float(v)) for v in s)
            a = [math.exp(float(v)) / z for v in s]
            v_hat = sum(a[i] * patches[b, i].double() for i in range(T))
            out[b, n] = F.cosine_similarity(v_hat, t, dim=0)
    return out


def naive_loss(patches, texts, scale, tau=1.0):
    logits = scale * compatibility(patches, texts, tau)  # (B, B), the whole thing at once
    labels = torch.arange(len(texts))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_vision_embedder_shapes_and_residual_structure():
    e = VisionEmbedder(768, 512)
    x = torch.randn(2, 196, 768)
    assert e(x).shape == (2, 196, 512)
    assert torch.allclose(e(x), e.linear(x) + e.mlp(x))
    n_params = sum(p.numel() for p in e.parameters())
    assert 1.0e6 < n_params < 1.2e6, n_params  # about 1.1M, as the paper reports for B/16


def test_init_from_projection_starts_at_vanilla():
    proj = torch.randn(64, 32)
    e = VisionEmbedder(64, 32).init_from_projection(proj)
    x = torch.randn(3, 10, 64)
    torch.testing.assert_close(e(x), x @ proj)


def test_patch_similarity_is_cosine():
    p, t = torch.randn(2, 5, 8), torch.randn(3, 8)
    s = patch_similarity(p, t)
    assert s.shape == (2, 3, 5)
    assert torch.allclose(s[1, 2, 4], F.cosine_similarity(p[1, 4], t[2], dim=0), atol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_patch_attention_sums_to_one_over_patches(tau):
    a = patch_attention(torch.randn(4, 49, 16), torch.randn(3, 16), tau)
    assert a.shape == (4, 3, 49)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(4, 3))


def test_attended_embedding_is_weighted_sum():
    p, a = torch.randn(2, 6, 4), torch.softmax(torch.randn(2, 3, 6), -1)
    v = attended_embedding(p, a)
    assert v.shape == (2, 3, 4)
    torch.testing.assert_close(v[1, 2], (a[1, 2, :, None] * p[1]).sum(0))


@pytest.mark.parametrize("tau", [1.0, 0.2])
def test_compatibility_matches_reference_loop(tau):
    torch.manual_seed(0)
    p, t = torch.randn(3, 7, 6), torch.randn(4, 6)
    got = compatibility(p, t, tau)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got.double(), reference_compatibility(p, t, tau), atol=1e-5, rtol=0)


def test_chunked_compatibility_equals_direct_values_and_gradients():
    torch.manual_seed(1)
    p = torch.randn(10, 9, 8, requires_grad=True)
    t = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(10, 10)  # a generic upstream gradient
    direct = compatibility(p, t)
    gp, gt = torch.autograd.grad((direct * w).sum(), (p, t))
    chunked = pairwise_compatibility(p, t, chunk_elements=100)  # 1 image per chunk
    cp, ct = torch.autograd.grad((chunked * w).sum(), (p, t))
    torch.testing.assert_close(chunked, direct, atol=1e-5, rtol=0)
    torch.testing.assert_close(cp, gp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ct, gt, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [64, 1000, 1 << 22])
def test_pacl_loss_equals_naive_loss_and_gradients(chunk):
    torch.manual_seed(2)
    p = torch.randn(12, 16, 8, requires_grad=True)
    t = torch.randn(12, 8, requires_grad=True)
    scale = torch.tensor(10.0, requires_grad=True)
    ref = naive_loss(p, t, scale)
    ref_grads = torch.autograd.grad(ref, (p, t, scale))
    got = PACLLoss(chunk_elements=chunk)(p, t, scale)
    got_grads = torch.autograd.grad(got, (p, t, scale))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0)


def test_loss_never_builds_pairwise_vectors_at_once():
    """With a small chunk budget no intermediate holds B*B*D elements (the naive (B, B, D) tensor)."""
    B, T, D = 32, 16, 24
    p = torch.randn(B, T, D, requires_grad=True)
    t = torch.randn(B, D, requires_grad=True)
    biggest = 0

    def pack(x):
        nonlocal biggest
        biggest = max(biggest, x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        PACLLoss(chunk_elements=B * D * 2)(p, t, 5.0).backward()
    assert biggest < B * B * D, biggest


def test_loss_decreases_when_captions_match():
    """e_v learns to find the caption's concept among distractor patches (only 2 of 16 patches carry it)."""
    torch.manual_seed(3)
    B, T, Dv, D, C = 16, 16, 32, 16, 8
    concept_v, concept_t = torch.randn(C, Dv), torch.randn(C, D)
    labels = torch.arange(B) % C
    tokens = torch.randn(B, T, Dv)
    tokens[:, :2] += 3 * concept_v[labels][:, None]  # (B, 2, Dv): two patches show the concept
    texts = concept_t[labels] + 0.05 * torch.randn(B, D)
    head = VisionEmbedder(Dv, D)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    loss_fn = PACLLoss()
    losses = []
    for _ in range(60):
        loss = loss_fn(head(tokens), texts, 10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], (losses[0], losses[-1])
