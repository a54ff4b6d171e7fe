"""How the last transformer block runs for each method, and each method's inference defaults.

"vanilla" and "pacl" use CLIP's block unchanged. The four training-free methods each change the last block only:

- maskclip  (Zhou et al., ECCV 2022): patch tokens take the value path, each token attends only to itself;
  residual and FFN kept; the CLS token gets the ordinary block.
- sclip     (Wang et al., 2023): correlative self-attention softmax(q·qᵀ) + softmax(k·kᵀ); residual and FFN kept.
- clearclip (Lan et al., ECCV 2024): softmax(q·qᵀ) attention output only; residual and FFN removed.
- naclip    (Hajimiri et al., WACV 2025): softmax(k·kᵀ + Gaussian neighbourhood bias); residual and FFN removed.
- scclip    (Bai et al., 2024, "Self-Calibrated CLIP"): anomaly tokens of the last block's input replaced by their
  neighbours' mean; patch features aggregated by a mid-level patch-patch cosine before and a shallow one after a
  last block whose attention averages softmax(mid-level cosine prior) and softmax(k·kᵀ), no residual, no FFN,
  plus 0.3 × the CLS token; a multi-level branch (the sum of the intermediate blocks) through the same path, added.

Every variant is a function (block, x (B, N, W), grid (h, w), feats) -> (B, N, W) that reads the block's parameters
(N = 1+T: the CLS token, then the patches) and never modifies them, so one loaded
backbone serves every method. x is the output of block L-1 (the last block's input); feats maps a 1-indexed block
number i to the output of block i, (B, N, W), for exactly the blocks `layers_needed(method, depth)` declares (none
for most methods). The backbone's trunk (blocks 1..L-1) is shared by every method at one input geometry
(pacl_core.backbone.Backbone.trunk); only this last block differs. The key idea of each method is one short
function: `maskclip_attention`, `sclip_weights`, `clearclip_weights`, `naclip_weights`, `scclip_heads` (with its
prior, `scclip_prior`).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from pacl_core.errors import PACLError

NACLIP_GAUSSIAN_STD = 5.0  # sinahmr/NACLIP naclip.py: gaussian_std=5., in patch units
# SC-CLIP, SuleBai/SC-CLIP clip/model.py (VisionTransformer.__init__ / forward, lof_pytorch, custom_attn) and
# configs/base_config.py. Block numbers are 1-indexed (block i's output = the official feats_list[i - 1]).
SCCLIP_LOF_NEIGHBOURS = 30  # lof_pytorch(n_neighbors=30)
SCCLIP_LOF_CONTAMINATION = 0.05  # lof_pytorch(contamination=0.05): LOF above its 95% quantile = anomaly
SCCLIP_BETA = 0.4  # self.beta: patch-patch cosines below it do not aggregate
SCCLIP_PRIOR_SCALE = 3.0  # custom_attn: (mid_simi - mean) * 3.0, negatives -> -inf
SCCLIP_RES_CLS = 0.3  # res_cls=0.3: this share of the CLS token is added to every patch
SCCLIP_DEPTH = 12  # the official layer choices below are for ViT-B/16's 12 blocks
SCCLIP_MULTI = (4, 10)  # multi_start_idx=3, multi_end_idx=10: the sum of blocks 4..10's outputs
# and within them: post_adjust_idx=3 -> block 4 (the first) and pre_adjust_idx=8 -> block 9 (the second-to-last)
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
    """NACLIP: softmax(k·kᵀ + ω), ω a Gaussian of the patch-grid distance (none for CLS) -> (B, H, N, N)."""
    bias = neighbourhood_bias(tuple(grid), NACLIP_GAUSSIAN_STD).to(k.device, k.dtype)  # (N, N)
    return torch.softmax(self_similarity(k, k) + bias, dim=-1)


@lru_cache(maxsize=16)
def neighbourhood_bias(grid: tuple[int, int], std: float) -> torch.Tensor:
    """(1+h*w, 1+h*w): exp(-|p_i - p_j|² / 2σ²) between patches i, j on the (h, w) grid; a zero row and column for
    the CLS token."""
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([rows, cols], dim=-1).reshape(h * w, 2).float()  # (T, 2), row-major like the tokens
    dist2 = (pos[:, None] - pos[None]).pow(2).sum(-1)  # (T, T)
    return F.pad(torch.exp(-dist2 / (2 * std**2)), (1, 0, 1, 0))  # (1+T, 1+T)


def scclip_prior(mid: torch.Tensor) -> torch.Tensor:
    """SC-CLIP's attention prior from the mid-level patch-patch cosine c (B, T, T): softmax(3 · (c - mean c)),
    negatives masked, the mean per image -> (B, T, T). The diagonal is >= 0, so no row is all masked."""
    c = (mid - mid.mean(dim=(-1, -2), keepdim=True)) * SCCLIP_PRIOR_SCALE  # (B, T, T)
    return torch.softmax(c.masked_fill(c < 0, float("-inf")), dim=-1)


def scclip_heads(k, v, prior) -> torch.Tensor:
    """SC-CLIP's self-adjusted attention: ½ prior + ½ softmax(k·kᵀ), times v; the prior (B, T, T) is shared by
    the heads, so it is applied as prior @ v beside fused softmax(k·kᵀ) @ v -> (B, H, T, d)."""
    return (prior[:, None] @ v + F.scaled_dot_product_attention(k, k, v)) / 2


# ---- SC-CLIP's pieces: anomaly tokens, their replacement, the layer choices ---------------------
def lof_anomalies(x: torch.Tensor, neighbours: int = SCCLIP_LOF_NEIGHBOURS,
                  contamination: float = SCCLIP_LOF_CONTAMINATION) -> torch.Tensor:
    """Each image's anomaly tokens by SC-CLIP's local outlier factor: (B, T, W) -> (B, T) bool.

    As the official variant: squared Euclidean distances, the reachability of a's neighbour b is
    max(d(a, b), k-dist(a)) (a's own k-distance), LOF(a) = mean over a's k neighbours of lrd(b) / lrd(a), and the
    tokens whose LOF is above the per-image (1 - contamination) quantile are anomalies. k is at most T - 1.
    """
    B, T, _ = x.shape
    k = min(neighbours, T - 1)
    if k < 1:
        return torch.zeros(B, T, dtype=torch.bool, device=x.device)
    xc = x - x.mean(dim=1, keepdim=True)  # (B, T, W): same distances, small norms keep |a|² + |b|² - 2a·b exact
    sq = xc.pow(2).sum(dim=-1)  # (B, T)
    d = torch.baddbmm(sq[:, :, None] + sq[:, None, :], xc, xc.transpose(1, 2), alpha=-2).clamp_min_(0)  # (B, T, T)
    d.diagonal(dim1=1, dim2=2).fill_(float("inf"))  # a token is not its own neighbour
    knn_d, knn_i = d.topk(k, dim=-1, largest=False)  # (B, T, k), nearest first
    reach = torch.maximum(knn_d, knn_d[..., -1:])  # (B, T, k)
    lrd = k / torch.nan_to_num(reach.mean(dim=-1), nan=1e-6)  # (B, T)
    lof = (lrd.gather(1, knn_i.flatten(1)).view(B, T, k) / lrd[..., None]).mean(dim=-1)  # (B, T)
    threshold = torch.quantile(lof.float(), 1 - contamination, dim=-1, keepdim=True)  # (B, 1)
    return lof > threshold


@lru_cache(maxsize=16)
def grid_neighbours(grid: tuple[int, int]) -> torch.Tensor:
    """(T, 8): the row-major indices of each patch's 3x3 neighbours on the (h, w) grid, -1 outside it."""
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rows, cols = rows.reshape(-1, 1), cols.reshape(-1, 1)  # (T, 1)
    dy, dx = (torch.tensor([[d[i] for d in NEIGHBOURS_3X3]]) for i in (0, 1))  # (1, 8)
    r, c = rows + dy, cols + dx  # (T, 8)
    return torch.where((r >= 0) & (r < h) & (c >= 0) & (c < w), r * w + c, -1)


NEIGHBOURS_3X3 = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def replace_anomalies(x: torch.Tensor, anomalies: torch.Tensor, grid) -> torch.Tensor:
    """Patch tokens (B, T, W) with each anomaly (B, T) replaced by the mean of its non-anomalous 3x3 grid
    neighbours (the border not counted); an anomaly with none stays as it is -> (B, T, W)."""
    b, t = anomalies.nonzero(as_tuple=True)  # (n,) each: the anomalies of every image
    near = grid_neighbours(tuple(grid)).to(x.device)[t]  # (n, 8), -1 outside the grid
    valid = (near >= 0) & ~anomalies[b[:, None], near.clamp_min(0)]  # (n, 8)
    feats = x[b[:, None], near.clamp_min(0)] * valid[..., None]  # (n, 8, W)
    count = valid.sum(dim=1, keepdim=True)  # (n, 1)
    out = x.clone()
    out[b, t] = torch.where(count > 0, feats.sum(dim=1) / count.clamp_min(1), x[b, t])  # (n, W)
    return out


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, T, W) -> (B, T, T) cosine between every pair of tokens."""
    x = F.normalize(x, dim=-1)
    return x @ x.transpose(1, 2)


def aggregate(x: torch.Tensor, corr: torch.Tensor, beta: float = SCCLIP_BETA) -> torch.Tensor:
    """Each token becomes the mean of the tokens it has cosine >= beta with, weighted by it: (B, T, W)."""
    corr = corr.masked_fill(corr < beta, 0.0)  # (B, T, T)
    return corr / (corr.sum(dim=-1, keepdim=True) + 1e-6) @ x  # (B, T, W)


def scclip_layers(depth: int) -> tuple[int, ...]:
    """The blocks SC-CLIP reads for a `depth`-block ViT: the multi-level ones, the first of them also gives the
    cosine after the last block and the second-to-last the one before it. 12 blocks: the official 4..10 (4, 9);
    other depths scale both ends (round(4L/12)..round(10L/12), at most L-1), e.g. 24 blocks: 8..20."""
    if depth < 2:
        raise PACLError(f"scclip needs a ViT with at least 2 blocks, this one has {depth}")
    first, last = (min(max(int(b * depth / SCCLIP_DEPTH + 0.5), 1), depth - 1) for b in SCCLIP_MULTI)
    return tuple(range(first, last + 1))


def scclip_roles(blocks: tuple[int, ...]) -> tuple[int, int]:
    """(the block after the last block's aggregation, the block before it) among scclip_layers(depth)."""
    return blocks[0], blocks[max(len(blocks) - 2, 0)]


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


def clip_cls(block, x: torch.Tensor) -> torch.Tensor:
    """The CLS token through CLIP's ordinary block (its query over every token, residual, FFN) -> (B, 1, W)."""
    y = block.ln_1(x)  # (B, N, W)
    cls = block.attn(y[:, :1], y, y, need_weights=False)[0]  # (B, 1, W): the CLS query only
    return residual_and_ffn(block, x[:, :1], cls)


def scclip_attention(block, x: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """The last block as SC-CLIP runs it on patch tokens (B, T, W): attention only, no residual, no FFN."""
    q, k, v = qkv(block, x)  # (B, H, T, d) each
    return block.ls_1(project(block, scclip_heads(k, v, prior)))  # (B, T, W)


def scclip_block(block, x: torch.Tensor, grid, feats) -> torch.Tensor:
    T = grid[0] * grid[1]
    blocks = tuple(sorted(feats))
    assert blocks and blocks == tuple(range(blocks[0], blocks[-1] + 1)), f"scclip needs blocks {blocks} in a row"
    after, before = scclip_roles(blocks)
    patches = x[:, 1:1 + T]  # (B, T, W): block L-1's patch tokens
    anomalies = lof_anomalies(patches)  # (B, T), per image
    mid = cosine_matrix(replace_anomalies(feats[before][:, 1:1 + T], anomalies, grid))  # (B, T, T)
    shallow = cosine_matrix(feats[after][:, 1:1 + T])  # (B, T, T), no replacement
    prior = scclip_prior(mid)  # (B, T, T)
    y = aggregate(replace_anomalies(patches, anomalies, grid), mid)  # (B, T, W)
    y = aggregate(scclip_attention(block, y, prior) + SCCLIP_RES_CLS * x[:, :1], shallow)  # (B, T, W)
    multi = sum(feats[i] for i in blocks)  # (B, N, W): the multi-level branch
    y = y + aggregate(scclip_attention(block, multi[:, 1:1 + T], prior) + SCCLIP_RES_CLS * multi[:, :1], shallow)
    return torch.cat([clip_cls(block, x), y], dim=1)  # (B, 1+T, W)


LAST_BLOCK = {"vanilla": vanilla_block, "pacl": vanilla_block, "maskclip": maskclip_block, "sclip": sclip_block,
              "clearclip": clearclip_block, "naclip": naclip_block, "scclip": scclip_block}
METHODS = tuple(LAST_BLOCK)
TRAINING_FREE = ("maskclip", "sclip", "clearclip", "naclip", "scclip")
# Blocks (1-indexed, each < the depth L) whose outputs a method's last block reads besides x; absent = none.
# A value may also be a function depth -> blocks, for methods defined relative to the model's depth (SC-CLIP).
LAYERS_NEEDED: dict = {"scclip": scclip_layers}

# Inference settings each method's official code uses; vanilla / pacl keep the model's own. Pixel sizes are for a
# 224-px-native backbone (ViT-B/16) and scale with the backbone's native size. image_size is the short side of
# mmcv's keep-ratio resize (Resize(scale=(2048, S), keep_ratio=True)), window/stride the sliding window (mode
# "whole": slide_crop=0). "datasets" holds the per-benchmark overrides of the official configs/cfg_*.py;
# "background" there is "prob:T": background where the best class's softmax(logit_scale · cos) is below T (prob_thd).
# Transcribed from each repository at the commit named (docs/methods.md has the table and the sources).
METHOD_DEFAULTS: dict[str, dict] = {
    # MaskCLIP has no official evaluation in this protocol (chongzhou/MaskCLIP runs whole images at short side 512
    # with its own key smoothing and prompt denoising). Its training-free numbers for ViT-B/16 quoted by SCLIP,
    # ClearCLIP and NACLIP come from SCLIP's pipeline, so MaskCLIP runs through SCLIP's segmentor and configs here.
    "maskclip": {"logit_scale": 40.0, "mode": "slide", "image_size": 336, "window": 224, "stride": 112,
                 "datasets": {"coco_stuff": {"image_size": 448}, "cityscapes": {"image_size": 560},
                              "voc21": {"logit_scale": 65.0, "background": "prob:0.1", "area_threshold": 0.1},
                              "context60": {"logit_scale": 50.0, "background": "prob:0.1"},
                              "coco_object": {"logit_scale": 50.0, "background": "prob:0.1"}}},
    # wangf3014/SCLIP @ b56bd30: clip_segmentor.py (logit_scale=40, slide_crop=224, slide_stride=112, no PAMR) and
    # configs/cfg_*.py (short side 336; 448 for COCO-Stuff 164k, 560 for Cityscapes; VOC21 logit 65, prob_thd 0.1,
    # area_thd 0.1; Context60 and COCO-Object logit 50, prob_thd 0.1).
    "sclip": {"logit_scale": 40.0, "mode": "slide", "image_size": 336, "window": 224, "stride": 112,
              "datasets": {"coco_stuff": {"image_size": 448}, "cityscapes": {"image_size": 560},
                           "voc21": {"logit_scale": 65.0, "background": "prob:0.1", "area_threshold": 0.1},
                           "context60": {"logit_scale": 50.0, "background": "prob:0.1"},
                           "coco_object": {"logit_scale": 50.0, "background": "prob:0.1"}}},
    # mc-lan/ClearCLIP @ ad68a40: clearclip_segmentor.py (logit_scale=50, slide_crop=448, slide_stride=224; a window
    # that is not a multiple of the patch is zero-padded, centred) and configs/cfg_*.py (short side 448 everywhere;
    # Cityscapes slide_crop 224; prob_thd 0.5 / 0.15 / 0.4 on VOC21 / Context60 / COCO-Object).
    "clearclip": {"logit_scale": 50.0, "mode": "slide", "image_size": 448, "window": 448, "stride": 224,
                  "pad_windows": True,
                  "datasets": {"voc21": {"background": "prob:0.5"}, "context60": {"background": "prob:0.15"},
                               "coco_object": {"background": "prob:0.4"}, "cityscapes": {"window": 224}}},
    # sinahmr/NACLIP @ 0cac3a6 ("Update for v2"): naclip.py (logit_scale=40, slide_crop=224, slide_stride=112,
    # gaussian_std=5, pamr_steps=10 with dilations (8, 16) by default; whole-image scores go to the resized input
    # first, then to the photo) and configs/cfg_*.py (short side 336, 560 for Cityscapes; VOC21 and VOC20 whole
    # image, slide_crop=0; prob_thd 0.1 on VOC21, Context60, COCO-Object).
    "naclip": {"logit_scale": 40.0, "mode": "slide", "image_size": 336, "window": 224, "stride": 112,
               "refine": "pamr", "upsample": "input",
               "datasets": {"voc21": {"mode": "whole", "background": "prob:0.1"}, "voc20": {"mode": "whole"},
                            "context60": {"background": "prob:0.1"}, "coco_object": {"background": "prob:0.1"},
                            "cityscapes": {"image_size": 560}}},
    # SuleBai/SC-CLIP @ 0417ba9: scclip_segmentor.py (logit_scale=40, slide_crop=224, slide_stride=112, no PAMR) and
    # configs/cfg_*.py (short side 336 everywhere, 560 for Cityscapes; VOC21 logit 50, prob_thd 0.15, area_thd 0.1;
    # Context60 prob_thd 0.15; COCO-Object logit 55, prob_thd 0.35).
    "scclip": {"logit_scale": 40.0, "mode": "slide", "image_size": 336, "window": 224, "stride": 112,
               "datasets": {"voc21": {"logit_scale": 50.0, "background": "prob:0.15", "area_threshold": 0.1},
                            "context60": {"background": "prob:0.15"},
                            "coco_object": {"logit_scale": 55.0, "background": "prob:0.35"},
                            "cityscapes": {"image_size": 560}}},
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


def default_method(has_head: bool) -> str:
    """The method shown beside vanilla CLIP when none is asked for (the demo's comparison, `segment`'s --method):
    PACL when a trained head is at hand, else SC-CLIP, the strongest one here that needs nothing but CLIP."""
    return "pacl" if has_head else "scclip"


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
