"""PACL (Mukhoti et al., CVPR 2023): the vision embedder e_v and the patch-level compatibility φ̂.

Each equation of the paper lives in exactly one function here:
    s(x,y)_i = cos(e_v(f_v(x))_i, e_t(f_t(y)))     patch_similarity
    a(x,y)   = softmax_i s(x,y)_i / tau             patch_attention
    v̂        = Σ_i a_i · e_v(f_v(x))_i              attended_embedding
    φ̂(x,y)   = cos(v̂, e_t(f_t(y)))                  compatibility
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class VisionEmbedder(nn.Module):
    """e_v: residual embedder on patch tokens, a linear layer plus a 2-layer ReLU MLP, (B, T, D_v) -> (B, T, D)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.in_dim, self.out_dim, self.hidden_dim = in_dim, out_dim, hidden_dim
        self.linear = nn.Linear(in_dim, out_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))

    @torch.no_grad()
    def init_from_projection(self, proj: torch.Tensor) -> VisionEmbedder:
        """Start as CLIP's own patch projection: linear = proj (D_v, D), MLP output zero, so e_v = vanilla."""
        assert proj.shape == (self.in_dim, self.out_dim), f"projection {tuple(proj.shape)} does not fit e_v"
        self.linear.weight.copy_(proj.T)
        self.linear.bias.zero_()
        self.mlp[2].weight.zero_()
        self.mlp[2].bias.zero_()
        return self

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens) + self.mlp(tokens)  # (B, T, D)


def patch_similarity(patch_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """s(x,y): cosine of every patch with every text. (B, T, D), (N, D) -> (B, N, T)."""
    p = F.normalize(patch_emb, dim=-1)  # (B, T, D)
    t = F.normalize(text_emb, dim=-1)  # (N, D)
    return torch.einsum("btd,nd->bnt", p, t)  # (B, N, T)


def patch_attention(patch_emb: torch.Tensor, text_emb: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """a(x,y): softmax over the T patches of s(x,y) / tau. (B, T, D), (N, D) -> (B, N, T), rows sum to 1."""
    return torch.softmax(patch_similarity(patch_emb, text_emb) / tau, dim=-1)  # (B, N, T)


def attended_embedding(patch_emb: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """v̂ = Σ_i a_i · e_v(x)_i. (B, T, D), (B, N, T) -> (B, N, D)."""
    return torch.einsum("bnt,btd->bnd", attention, patch_emb)  # (B, N, D)


def compatibility(patch_emb: torch.Tensor, text_emb: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """φ̂(x,y) = cos(v̂, text). (B, T, D), (N, D) -> (B, N); replaces CLIP's CLS cosine in InfoNCE."""
    v_hat = attended_embedding(patch_emb, patch_attention(patch_emb, text_emb, tau))  # (B, N, D)
    return F.cosine_similarity(v_hat, F.normalize(text_emb, dim=-1)[None], dim=-1)  # (B, N)
