"""PAMR mask refinement (Araslanov & Roth, CVPR 2020): NACLIP's default post-processing, an option of SCLIP.

Each pixel's class scores are repeatedly replaced by an average of its neighbours' scores (8 neighbours at each
dilation), weighted by how similar the neighbours' colours are: softmax over neighbours of
-|I_i - I_j| / (0.1 · local std), averaged over colour channels; the guide I is the normalised network input
resized to the photo (pacl_core.segment.Segmenter.masks). Defaults are NACLIP's (`--pamr on`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAMR_STEPS = 10  # sinahmr/NACLIP eval.py: --pamr on -> pamr_steps=10
PAMR_DILATIONS = (8, 16)  # sinahmr/NACLIP naclip.py and wangf3014/SCLIP clip_segmentor.py: pamr_stride=(8, 16)
NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def shifted(x: torch.Tensor, dy: int, dx: int, d: int, padded: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, C, H, W) read at (y + dy·d, x + dx·d), edges replicated -> (B, C, H, W).

    `padded` may pass F.pad(x, (d, d, d, d), mode="replicate") already made, to share it between neighbours.
    """
    H, W = x.shape[-2:]
    padded = F.pad(x, (d, d, d, d), mode="replicate") if padded is None else padded  # (B, C, H + 2d, W + 2d)
    return padded[:, :, d + dy * d: d + dy * d + H, d + dx * d: d + dx * d + W]


def neighbour_mean(mask: torch.Tensor, aff: torch.Tensor, dilations) -> torch.Tensor:
    """One PAMR step: each pixel's scores (B, K, H, W) <- sum over neighbours j of aff_j · scores_j."""
    out, i = torch.zeros_like(mask), 0
    for d in dilations:
        padded = F.pad(mask, (d, d, d, d), mode="replicate")  # (B, K, H + 2d, W + 2d), shared by 8 neighbours
        for dy, dx in NEIGHBOURS:
            out += aff[:, i: i + 1] * shifted(mask, dy, dx, d, padded)
            i += 1
    return out


def pamr_affinity(image: torch.Tensor, dilations=PAMR_DILATIONS) -> torch.Tensor:
    """Image (B, 3, H, W) -> neighbour weights (B, P, H, W), P = 8 · len(dilations), summing to 1 over P."""
    offsets = [(dy, dx, d) for d in dilations for dy, dx in NEIGHBOURS]
    std = local_std(image, offsets, len(dilations))  # (B, 3, H, W)
    logits = [(-(image - shifted(image, dy, dx, d)).abs() / (1e-8 + 0.1 * std)).mean(dim=1)  # (B, H, W)
              for dy, dx, d in offsets]
    return torch.softmax(torch.stack(logits, dim=1), dim=1)  # (B, P, H, W)


def local_std(image: torch.Tensor, offsets, centres: int) -> torch.Tensor:
    """Per-channel unbiased std over each dilation's 3x3 samples (centre counted once per dilation) -> (B, C, H, W).

    Two passes over shifted copies, so memory stays at a few images whatever the number of neighbours.
    """
    n = centres + len(offsets)
    mean = (centres * image + sum(shifted(image, dy, dx, d) for dy, dx, d in offsets)) / n  # (B, C, H, W)
    sq = centres * (image - mean) ** 2 + sum((shifted(image, dy, dx, d) - mean) ** 2 for dy, dx, d in offsets)
    return (sq / (n - 1)).sqrt()  # (B, C, H, W)


def pamr(image: torch.Tensor, scores: torch.Tensor, steps: int = PAMR_STEPS, dilations=PAMR_DILATIONS) -> torch.Tensor:
    """Refine per-class scores (B, K, h, w) with the image (B, 3, H, W) -> (B, K, H, W).

    Scores are first resized to the image (bilinear, corners aligned, as in the original); each step replaces
    every pixel's scores by the affinity-weighted mean of its neighbours' scores.
    """
    assert image.ndim == 4 and scores.ndim == 4 and image.shape[0] == scores.shape[0], (
        f"pamr needs (B, 3, H, W) and (B, K, h, w), got {tuple(image.shape)} and {tuple(scores.shape)}")
    assert steps >= 0 and all(d >= 1 for d in dilations), f"bad PAMR settings: steps={steps}, dilations={dilations}"
    image = image.float()
    mask = F.interpolate(scores.float(), size=image.shape[-2:], mode="bilinear", align_corners=True)  # (B, K, H, W)
    aff = pamr_affinity(image, dilations)  # (B, P, H, W)
    for _ in range(steps):
        mask = neighbour_mean(mask, aff, dilations)  # (B, K, H, W)
    return mask.to(scores.dtype)
