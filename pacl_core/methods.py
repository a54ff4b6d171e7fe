"""How the last transformer block runs for each method, and each method's inference defaults.

"vanilla" and "pacl" use CLIP's block unchanged. The four training-free methods each change the last block only:

- maskclip  (Zhou et al., ECCV 2022): patch tokens take the value path, each token attends only to itself;
  residual and FFN kept; the CLS token gets the ordinary block.
- sclip     (Wang et al., 2023): correlative self-attention softmax(q·qᵀ) + softmax(k·kᵀ); residual and FFN kept.
- clearclip (Lan et al., ECCV 2024): softmax(q·qᵀ) attention output only; residual and FFN removed.
- naclip    (Hajimiri et al., WACV 2025): softmax(k·kᵀ + Gaussian neighbourhood bias); residual and FFN removed.

Every variant is a function (block, x (B, N, W), grid (h, w), feats) -> (B, N, W) that reads the block's parameters
(N = 1+T+R: a toy model's R register tokens, if any, follow the patches) and never modifies them, so one loaded
backbone serves every method. x is the output of block L-1 (the last block's input); feats maps a 1-indexed block
number i to the output of block i, (B, N, W), for exactly the blocks the method declares in LAYERS_NEEDED (none
for the methods here, which ignore it). The backbone's trunk (blocks 1..L-1) is shared by every method at one
input geometry (pacl_core.backbone.Backbone.trunk); only this last block differs. The key idea of each method is
one short function: `maskclip_attention`, `sclip_weights`, `clearclip_weights`, `naclip_weights`.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PACLError

NACLIP_GAUSSIAN_STD = 5.0  # sinahmr/NACLIP naclip.py: gaussian_std=5., in patch units
REFERENCE_SIZE = 224  # pixel defaults below are for a backbone whose native input is 224 px (ViT-B/16)


# ---- the attention of the last block, head by head ---------------------------------------------
def _check_attention(block) -> nn.MultiheadAttention:
    attn = block.attn
    assert isinstance(attn, nn.MultiheadAttention), f"last block needs nn.MultiheadAttention, got {type(attn)}"
    assert attn._qkv_same_embed_dim and attn.bias_k is None, "last block's attention must be plain self-attention"
    assert attn.batch_first, "last block's attention must be batch-first"
    return attn


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, W) -> (B, H, N, W/H): head h gets channels [h*W/H, (h+1)*W/H), as in nn.MultiheadAttention."""
    B, N, W = t.shape
    return t.view(B, N, heads, W // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, H, N, W/H) -> (B, N, W)."""
    B, H, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, H * d)


def qkv(block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The block's q, k, v of ln_1(x), each (B, H, N, d), from its own in_proj weights."""
    attn = _check_attention(block)
    y = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (B, N, 3W)
    return tuple(split_heads(t, attn.num_heads) for t in y.chunk(3, dim=-1))


def project(block, heads_out: torch.Tensor) -> torch.Tensor:
    """Per-head outputs (B, H, N, d) -> the block's out_proj of their concatenation (B, N, W)."""
    return block.attn.out_proj(merge_heads(heads_out))


def self_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Scaled dot products a·bᵀ · d^-0.5: (B, H, N, d), (B, H, M, d) -> (B, H, N, M)."""
    return a @ b.transpose(-1, -2) * a.shape[-1] ** -0.5


# ---- the key idea of each method ----------------------------------------------------------------
def maskclip_attention(q, k, v) -> torch.Tensor:
    """MaskCLIP: every patch attends only to itself (its value), the CLS token attends as in CLIP -> (B, H, N, d)."""
    cls = torch.softmax(self_similarity(q[:, :, :1], k), dim=-1) @ v  # (B, H, 1, d)
    return torch.cat([cls, v[:, :, 1:]], dim=2)  # (B, H, N, d)


def sclip_weights(q, k, grid) -> torch.Tensor:
    """SCLIP's correlative self-attention: softmax(q·qᵀ) + softmax(k·kᵀ) (rows sum to 2) -> (B, H, N, N)."""
    return torch.softmax(self_similarity(q, q), dim=-1) + torch.softmax(self_similarity(k, k), dim=-1)


def clearclip_weights(q, k, grid) -> torch.Tensor:
    """ClearCLIP's self-self attention: softmax(q·qᵀ) -> (B, H, N, N)."""
    return torch.softmax(self_similarity(q, q), dim=-1)


def naclip_weights(q, k, grid) -> torch.Tensor:
    """NACLIP: softmax(k·kᵀ + ω), ω a Gaussian of the patch-grid distance (none for CLS, registers) -> (B, H, N, N)."""
    registers = k.shape[2] - 1 - grid[0] * grid[1]  # tokens after the patches
    bias = neighbourhood_bias(tuple(grid), NACLIP_GAUSSIAN_STD, registers).to(k.device, k.dtype)  # (N, N)
    return torch.softmax(self_similarity(k, k) + bias, dim=-1)


@lru_cache(maxsize=16)
def neighbourhood_bias(grid: tuple[int, int], std: float, registers: int = 0) -> torch.Tensor:
    """(1+h*w+R, 1+h*w+R): exp(-|p_i - p_j|² / 2σ²) between patches i, j on the (h, w) grid; zero rows/columns for
    the CLS token and the R register tokens after the patches."""
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([rows, cols], dim=-1).reshape(h * w, 2).float()  # (T, 2), row-major like the tokens
    dist2 = (pos[:, None] - pos[None]).pow(2).sum(-1)  # (T, T)
    return F.pad(torch.exp(-dist2 / (2 * std**2)), (1, registers, 1, registers))  # (1+T+R, 1+T+R)


# ---- the last block per method ------------------------------------------------------------------
def residual_and_ffn(block, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """CLIP's block around a replaced attention output: x + attn, then + FFN(ln_2(.)) -> (B, N, W)."""
    x = x + block.ls_1(attn_out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def vanilla_block(block, x: torch.Tensor, grid, feats=None) -> torch.Tensor:
    return block(x)


def maskclip_block(block, x: torch.Tensor, grid, feats=None) -> torch.Tensor:
    q, k, v = qkv(block, x)  # (B, H, N, d) each
    return residual_and_ffn(block, x, project(block, maskclip_attention(q, k, v)))  # (B, N, W)


def sclip_block(block, x: torch.Tensor, grid, feats=None) -> torch.Tensor:
    q, k, v = qkv(block, x)  # (B, H, N, d) each
    return residual_and_ffn(block, x, project(block, sclip_weights(q, k, grid) @ v))  # (B, N, W)


def clearclip_block(block, x: torch.Tensor, grid, feats=None) -> torch.Tensor:
    q, k, v = qkv(block, x)  # (B, H, N, d) each
    return block.ls_1(project(block, clearclip_weights(q, k, grid) @ v))  # (B, N, W): no residual, no FFN


def naclip_block(block, x: torch.Tensor, grid, feats=None) -> torch.Tensor:
    q, k, v = qkv(block, x)  # (B, H, N, d) each
    assert k.shape[2] >= 1 + grid[0] * grid[1], f"{k.shape[2]} tokens do not fit a {grid} grid plus CLS"
    return block.ls_1(project(block, naclip_weights(q, k, grid) @ v))  # (B, N, W): no residual, no FFN


LAST_BLOCK = {"vanilla": vanilla_block, "pacl": vanilla_block, "maskclip": maskclip_block, "sclip": sclip_block,
              "clearclip": clearclip_block, "naclip": naclip_block}
METHODS = tuple(LAST_BLOCK)
TRAINING_FREE = ("maskclip", "sclip", "clearclip", "naclip")
# Blocks (1-indexed, each < the depth L) whose outputs a method's last block reads besides x; absent = none.
# A value may also be a function depth -> blocks, for methods defined relative to the model's depth.
LAYERS_NEEDED: dict[str, tuple[int, ...]] = {}

# Inference settings each method's official code uses; vanilla / pacl keep the model's own. Pixel sizes are for a
# 224-px-native backbone (ViT-B/16) and scale with the backbone's native size. image_size is the short side the
# image is resized to, window/stride the sliding window. "datasets" holds the per-benchmark overrides of the
# official configs; "background" there is "prob:T": background where max softmax(logit_scale · cos) < T.
METHOD_DEFAULTS: dict[str, dict] = {
    # MaskCLIP's own repo (chongzhou/MaskCLIP, configs/maskclip/*vit16*) runs whole images at short side 512 with
    # softmax(100 · cos) for its thresholds; its published training-free numbers for ViT-B/16 (as quoted by SCLIP,
    # ClearCLIP and NACLIP) come from the SCLIP protocol, which we use here.
    "maskclip": {"logit_scale": 40.0, "mode": "slide", "image_size": 336, "window": 224, "stride": 112},
    # wangf3014/SCLIP clip_segmentor.py (logit_scale=40, slide_crop=224, slide_stride=112) and configs/cfg_*.py
    # (Resize short side 336, 448 for COCO-Stuff; logit 65/50 and prob_thd 0.1 on the benchmarks with background).
    "sclip": {"logit_scale": 40.0, "mode": "slide", "image_size": 336, "window": 224, "stride": 112,
              "datasets": {"coco_stuff": {"image_size": 448},
                           "voc21": {"logit_scale": 65.0, "background": "prob:0.1", "area_threshold": 0.1},
                           "context60": {"logit_scale": 50.0, "background": "prob:0.1"},
                           "coco_object": {"logit_scale": 50.0, "background": "prob:0.1"}}},
    # mc-lan/ClearCLIP clearclip_segmentor.py (logit_scale=50, slide_crop=448, slide_stride=224) and configs/cfg_*.py
    # (Resize short side 448; prob_thd 0.5 / 0.15 / 0.4 on VOC21 / Context60 / COCO-Object).
    "clearclip": {"logit_scale": 50.0, "mode": "slide", "image_size": 448, "window": 448, "stride": 224,
                  "datasets": {"voc21": {"background": "prob:0.5"}, "context60": {"background": "prob:0.15"},
                               "coco_object": {"background": "prob:0.4"}}},
    # sinahmr/NACLIP naclip.py (logit_scale=40, slide_crop=224, slide_stride=112, gaussian_std=5) and configs/cfg_*.py
    # (short side 336, 448 for COCO-Stuff; prob_thd 0.1 on the benchmarks with background). Its README numbers use
    # PAMR (test_all.sh ... on: 10 steps, dilations 8 and 16): pass refine="pamr" for those.
    "naclip": {"logit_scale": 40.0, "mode": "slide", "image_size": 336, "window": 224, "stride": 112,
               "datasets": {"coco_stuff": {"image_size": 448}, "voc21": {"background": "prob:0.1"},
                            "context60": {"background": "prob:0.1"}, "coco_object": {"background": "prob:0.1"}}},
}
PIXEL_SETTINGS = ("image_size", "window", "stride")


def method_defaults(method: str, dataset: str | None = None, native_size: int = REFERENCE_SIZE) -> dict:
    """This method's official inference settings (for `dataset` if given), pixel sizes scaled to the backbone."""
    entry = METHOD_DEFAULTS.get(check_method(method), {})
    out = {k: v for k, v in entry.items() if k != "datasets"}
    out.update(entry.get("datasets", {}).get(dataset, {}))
    for key in PIXEL_SETTINGS:
        if key in out:
            out[key] = int(round(out[key] * native_size / REFERENCE_SIZE))
    return out


def parse_methods(spec: str) -> list[str]:
    """'vanilla, pacl,sclip' -> ['vanilla', 'pacl', 'sclip']: each checked, duplicates dropped, order kept."""
    methods = list(dict.fromkeys(m.strip() for m in str(spec).split(",") if m.strip()))
    if not methods:
        raise PACLError("--method is empty; give one method or a comma-separated list, e.g. vanilla,pacl")
    return [check_method(m) for m in methods]


def check_method(method: str) -> str:
    if method not in LAST_BLOCK:
        raise PACLError(f"unknown method '{method}'; valid methods: {', '.join(LAST_BLOCK)}")
    return method


def layers_needed(method: str, depth: int) -> tuple[int, ...]:
    """The 1-indexed blocks (of a depth-L trunk) whose outputs `method` reads, sorted; () for most methods."""
    need = LAYERS_NEEDED.get(check_method(method), ())
    need = tuple(sorted(set(need(depth) if callable(need) else need)))
    if any(not 1 <= i < depth for i in need):
        raise PACLError(f"method '{method}' needs blocks {list(need)}, but this model has only {depth} blocks "
                        f"(outputs of blocks 1..{depth - 1} can be kept)")
    return need


def run_last_block(block, x: torch.Tensor, grid, method: str, feats: dict | None = None) -> torch.Tensor:
    """The last block of `method` on x (B, N, W), the output of block L-1; feats: {block i: its output}."""
    return LAST_BLOCK[check_method(method)](block, x, grid, feats or {})
