"""PACLLoss: CLIP's symmetric InfoNCE with the patch-level compatibility φ̂ in place of the CLS cosine.

The B x B compatibility needs, for every image-caption pair, a text-weighted sum of patches: done at once
that is a (B, B, D) tensor (and (B, B, T) attention). Here images go through in chunks, each chunk under
activation checkpointing, so only the (B, B) logits and one chunk's intermediates are ever alive: peak memory
grows like chunk·B·max(T, D) instead of B²·(T + D), with the same values and gradients. When one chunk holds
the whole batch, nothing is recomputed: checkpointing would then cost time and save no memory.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from pacl_core.pacl import compatibility

DEFAULT_CHUNK_ELEMENTS = 1 << 22  # about 16 MB of float32 per intermediate tensor of one chunk


def pairwise_compatibility(patch_emb: torch.Tensor, text_emb: torch.Tensor, tau: float = 1.0,
                           chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """φ̂ for every (image i, text j) pair, computed in image chunks. (B, T, D), (N, D) -> (B, N)."""
    B, T, D = patch_emb.shape
    N = text_emb.shape[0]
    chunk = max(1, chunk_elements // max(N * max(T, D), T * D))  # images per chunk
    needs_grad = torch.is_grad_enabled() and (patch_emb.requires_grad or text_emb.requires_grad)
    recompute = needs_grad and chunk < B  # one chunk for the whole batch: checkpointing would only cost time
    rows = []
    for start in range(0, B, chunk):
        part = patch_emb[start:start + chunk]  # (c, T, D)
        if recompute:
            rows.append(checkpoint(compatibility, part, text_emb, tau, use_reentrant=False))  # (c, N)
        else:
            rows.append(compatibility(part, text_emb, tau))
    return torch.cat(rows, dim=0)  # (B, N)


class PACLLoss(nn.Module):
    """Symmetric InfoNCE over B image-caption pairs with logits logit_scale · φ̂(x_i, y_j)."""

    def __init__(self, tau: float = 1.0, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
        super().__init__()
        self.tau, self.chunk_elements = tau, chunk_elements

    def forward(self, patch_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale) -> torch.Tensor:
        assert patch_emb.ndim == 3 and text_emb.ndim == 2, "expected patch_emb (B, T, D) and text_emb (B, D)"
        assert patch_emb.shape[0] == text_emb.shape[0], "one caption per image"
        logits = logit_scale * pairwise_compatibility(patch_emb, text_emb, self.tau, self.chunk_elements)  # (B, B)
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
