"""Float64 references of the official training-free segmentors' test pipelines, end to end (a module of the tests).

Written from reading the official repositories, independently of the project code they check (nothing from
pacl_core.segment, .backbone, .pamr or .eval is imported or was read to write this):

    wangf3014/SCLIP   b56bd3014b9e8a3ee3450bcfc53700a67d627b7a  clip_segmentor.py, clip/model.py, configs/
    sinahmr/NACLIP    0cac3a651f753b11315ea799cfbfabf79da1bd76  naclip.py, clip/model.py, pamr.py, configs/
    mc-lan/ClearCLIP  ad68a404d55d48d27330b93554eb64a234ff717f  clearclip_segmentor.py, open_clip/, configs/
    SuleBai/SC-CLIP   0417ba92851e9dd7432d608f10a0804d01a23062  scclip_segmentor.py, clip/model.py, configs/

plus the mmcv/mmseg pieces they run on: Resize(scale=(2048, S), keep_ratio=True) on the uint8 image with cv2's
INTER_LINEAR, SegDataPreProcessor's normalisation, the label and the prediction at the original size (ori_shape).
MaskCLIP has no official evaluation in this protocol: it runs through SCLIP's segmentor and SCLIP's configs.

The last blocks come from the slow references of tests/test_methods.py (MaskCLIP, SCLIP, ClearCLIP) and
tests/test_scclip.py (SC-CLIP); NACLIP's is vectorised here (its per-pair reference is too slow at whole-image
grids) and checked against tests/test_methods.py by tests/test_official_pipeline.py.

Readings of the official code where it is ambiguous:
- ClearCLIP's configs/base_config.py says model_type='vanilla'; ClearCLIP here is model_type='ClearCLIP'
  (q-q attention) with ignore_residual=True, as the paper and the method name mean; everything else from configs.
- SC-CLIP locates its LOF anomalies as (i // gh, i % gh) on a (gh, gw) grid: right only on square grids (all its
  224-px windows); here they are row-major (i // gw, i % gw) on every grid, as tests/test_scclip.py does.
- Every repository adds the native positional embedding as is whenever the token count is g0^2, even on a
  non-square grid (e.g. 7 x 28 for g0 = 14); kept here (official_pos_embed).
- ClearCLIP splits synonyms on "," (not ", "): the open_clip tokenizer cleans the extra space, same prompts.
- The official code upsamples (Q, ...) cosine maps; this one resamples the (D, ...) features, which is the same
  (see window_map).

Entry point: official_segment(model, method, benchmark, image, names_file) -> (cosines (Q, H, W), labels (H, W)).
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from pacl_core.prompts import IMAGENET_80  # the official openai_imagenet_template strings, same order

MEAN = (122.771, 116.746, 104.094)  # SegDataPreProcessor, RGB, 0-255
STD = (68.501, 66.632, 70.323)
LONG_SIDE = 2048  # Resize(scale=(2048, short), keep_ratio=True) in every config


_COPIES: dict = {}  # (id(model), dtype) -> (model, its copy)
_TEXT: dict = {}  # (id(copy), names) -> (copy, (Q, D))
_TRUNKS: dict = {}  # (id(copy), dtype, shape, content) -> trunk()
_MAPS: dict = {}  # (id(copy), method, geometry, shape, content) -> feature_map()


def clear_caches() -> None:
    for cache in (_COPIES, _TEXT, _TRUNKS, _MAPS):
        cache.clear()


# ---- per-benchmark settings, transcribed from each repository's configs ---------------------------
@dataclass(frozen=True)
class Setting:
    """One official segmentor on one benchmark: its constructor defaults overridden by the benchmark's config."""

    short_side: int  # Resize(scale=(2048, short_side), keep_ratio=True)
    logit_scale: float
    prob_thd: float = 0.0
    area_thd: float | None = None  # SCLIP and SC-CLIP only
    slide_crop: int = 224  # 0: whole-image mode
    slide_stride: int = 112
    pamr_steps: int = 0
    pamr_dilations: tuple = (8, 16)


REPO_DEFAULTS = {
    # clip_segmentor.py CLIPForSegmentation.__init__ (b56bd30)
    "SCLIP": Setting(336, logit_scale=40),
    # naclip.py NACLIP.__init__ (0cac3a6): pamr_steps=10 by default, pamr_stride=(8, 16)
    "NACLIP": Setting(336, logit_scale=40, pamr_steps=10),
    # clearclip_segmentor.py ClearCLIPSegmentation.__init__ (ad68a40): slide_stride=224, slide_crop=448
    "ClearCLIP": Setting(448, logit_scale=50, slide_crop=448, slide_stride=224),
    # scclip_segmentor.py SCCLIPForSegmentation.__init__ (0417ba9)
    "SC-CLIP": Setting(336, logit_scale=40),
}

# configs/cfg_<benchmark>.py of each repository: the model dict's overrides and the Resize short side.
# coco_stuff is cfg_coco_stuff164k.py; cityscapes is cfg_city_scapes.py.
CONFIGS = {
    "SCLIP": {
        "voc21": dict(logit_scale=65, prob_thd=0.1, area_thd=0.1),
        "context60": dict(logit_scale=50, prob_thd=0.1),
        "voc20": {}, "context59": {}, "ade20k": {},
        "coco_stuff": dict(short_side=448),
        "coco_object": dict(logit_scale=50, prob_thd=0.1),
        "cityscapes": dict(short_side=560),
    },
    "NACLIP": {  # the "Update for v2" configs (defb7c9): voc21/voc20 whole, coco_stuff back to 336
        "voc21": dict(prob_thd=0.1, slide_crop=0),
        "context60": dict(prob_thd=0.1),
        "voc20": dict(slide_crop=0),
        "context59": {}, "ade20k": {}, "coco_stuff": {},
        "coco_object": dict(prob_thd=0.1),
        "cityscapes": dict(short_side=560),
    },
    "ClearCLIP": {  # every benchmark resized to 448; cityscapes: slide_crop 224 with the default stride 224
        "voc21": dict(prob_thd=0.5),
        "context60": dict(prob_thd=0.15),
        "voc20": {}, "context59": {}, "ade20k": {}, "coco_stuff": {},
        "coco_object": dict(prob_thd=0.4),
        "cityscapes": dict(slide_crop=224),
    },
    "SC-CLIP": {
        "voc21": dict(logit_scale=50, prob_thd=0.15, area_thd=0.1),
        "context60": dict(prob_thd=0.15),
        "voc20": {}, "context59": {}, "ade20k": {}, "coco_stuff": {},
        "coco_object": dict(logit_scale=55, prob_thd=0.35),
        "cityscapes": dict(short_side=560),
    },
}

REPO_OF = {"maskclip": "SCLIP", "sclip": "SCLIP", "naclip": "NACLIP", "clearclip": "ClearCLIP", "scclip": "SC-CLIP"}
BENCHMARKS = ("voc21", "context60", "voc20", "context59", "coco_stuff", "coco_object", "ade20k", "cityscapes")


def official_setting(method: str, benchmark: str) -> Setting:
    repo = REPO_OF[method]
    return replace(REPO_DEFAULTS[repo], **CONFIGS[repo][benchmark])


# ---- mmcv/mmseg preprocessing ------------------------------------------------------------------
def resized_size(h: int, w: int, short: int, long: int = LONG_SIDE) -> tuple[int, int]:
    """mmcv.rescale_size: one factor min(long / long side, short / short side), each side int(side * f + 0.5)."""
    factor = min(long / max(h, w), short / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def official_resize(image: np.ndarray, short: int, long: int = LONG_SIDE) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8, as mmcv.imrescale with cv2 INTER_LINEAR."""
    h, w = resized_size(*image.shape[:2], short, long)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def normalise(image: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    """(h, w, 3) uint8 RGB -> (3, h, w): SegDataPreProcessor's (x - mean) / std."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(dtype).permute(2, 0, 1)  # (3, h, w)
    mean = torch.tensor(MEAN, dtype=dtype)[:, None, None]
    std = torch.tensor(STD, dtype=dtype)[:, None, None]
    return (x - mean) / std


# ---- text --------------------------------------------------------------------------------------
def read_names(path) -> tuple[list[str], list[int]]:
    """Official get_cls_idx: one class per line, synonyms split on ", " -> (queries, class index of each)."""
    queries, classes = [], []
    for index, line in enumerate(Path(path).read_text().splitlines()):
        names = line.split(", ")
        queries += names
        classes += [index] * len(names)
    return queries, classes


def encode_text(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's encode_text on (P, 77) tokens cut after the longest prompt's end token -> (P, D).

    The text attention is causal, so the end token's features do not depend on the padding after it: the same
    features as encode_text on the full context, for a fraction of the work.
    """
    ends = tokens.argmax(dim=-1)  # (P,): the end token has the largest id
    n = int(ends.max()) + 1
    x = model.token_embedding(tokens[:, :n]) + model.positional_embedding[:n]  # (P, n, W)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))  # (P, n, W)
    return x[torch.arange(len(tokens)), ends] @ model.text_projection  # (P, D)


def text_features(model, names: list[str]) -> torch.Tensor:
    """(Q, D): per name, the 80 templates through encode_text, each normalised, averaged, normalised again."""
    out = []
    with torch.no_grad():
        for name in names:
            tokens = open_clip.tokenize([t.format(name) for t in IMAGENET_80])  # (80, 77)
            f = encode_text(model, tokens)  # (80, D)
            f = (f / f.norm(dim=-1, keepdim=True)).mean(dim=0)  # (D,)
            out.append(f / f.norm())
    return torch.stack(out)  # (Q, D)


# ---- the vision tower ----------------------------------------------------------------------------
def official_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1 + g0^2, W) native embedding -> (1 + gh*gw, W), as the official interpolate_pos_encoding.

    The official forward compares token counts only: a grid with g0^2 patches takes the native embedding as is
    (for a non-square grid of g0^2 patches too).
    """
    gh, gw = grid
    g0 = math.isqrt(pos.shape[0] - 1)
    if gh * gw == g0 * g0:
        return pos
    native = pos[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)  # (1, W, g0, g0)
    out = F.interpolate(native, scale_factor=((gh + 0.1) / g0, (gw + 0.1) / g0), mode="bicubic",
                        align_corners=False, recompute_scale_factor=False)  # (1, W, gh, gw)
    assert out.shape[-2:] == (gh, gw)
    return torch.cat([pos[:1], out.permute(0, 2, 3, 1).reshape(gh * gw, -1)])  # (1 + T, W)


def neighbourhood(grid: tuple[int, int], std: float = 5.0, dtype=torch.float64) -> torch.Tensor:
    """NACLIP's Gaussian addition (1 + T, 1 + T): exp(-|p_i - p_j|^2 / (2 std^2)) between patches, 0 with CLS."""
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=dtype), torch.arange(gw, dtype=dtype), indexing="ij")
    p = torch.stack([rows.flatten(), cols.flatten()], dim=-1)  # (T, 2), row-major
    omega = torch.exp(-torch.cdist(p, p) ** 2 / (2 * std**2))  # (T, T)
    return F.pad(omega, (1, 0, 1, 0))  # (1 + T, 1 + T)


def naclip_last_block(block, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """NACLIP's reduced last block on one image (1 + T, W): softmax(k k^T / sqrt(d) + omega) v, out_proj only."""
    n, width = x.shape
    heads = block.attn.num_heads
    d = width // heads
    y = F.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)  # (N, W)
    _, k, v = F.linear(y, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)  # (N, W) each
    k = k.reshape(n, heads, d).transpose(0, 1)  # (H, N, d)
    v = v.reshape(n, heads, d).transpose(0, 1)  # (H, N, d)
    weights = torch.softmax(k @ k.transpose(1, 2) * d**-0.5 + neighbourhood(grid, dtype=x.dtype), dim=-1)  # (H, N, N)
    out = (weights @ v).transpose(0, 1).reshape(n, width)  # (N, W)
    return F.linear(out, block.attn.out_proj.weight, block.attn.out_proj.bias)  # (N, W)


def last_block(method: str, blocks, x: torch.Tensor, feats: list[torch.Tensor], grid) -> torch.Tensor:
    """The method's last block on one image: x (1 + T, W) leaving block L-1, feats[j] = block j+1's output."""
    if method == "naclip":
        return naclip_last_block(blocks[-1], x, grid)
    if method == "scclip":
        from tests.test_scclip import ref_last  # official indices hard-coded there (12 blocks)

        return ref_last(blocks[-1], x, feats, grid)
    from tests.test_methods import reference_last_block  # imported late: it pulls in the project's test helpers

    return reference_last_block(blocks[-1], x, grid, method)


def trunk(model, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
    """(3, h, w) normalised -> tokens leaving block L-1 (1 + T, W), every block's output, the grid (gh, gw).

    Remembered per model and window content: the methods share it (only the last block differs).
    """
    key = (id(model), image.dtype, tuple(image.shape), hashlib.sha1(image.numpy().tobytes()).hexdigest())
    if key in _TRUNKS:
        return _TRUNKS[key]
    visual = model.visual
    p = visual.conv1.kernel_size[0]
    with torch.no_grad():
        x = F.conv2d(image[None], visual.conv1.weight, stride=p)[0]  # (W, gh, gw): any remainder dropped
        grid = tuple(x.shape[-2:])
        x = x.flatten(1).T  # (T, W), row-major
        x = torch.cat([visual.class_embedding[None], x])  # (1 + T, W)
        x = visual.ln_pre(x + official_pos_embed(visual.positional_embedding, grid))  # (1 + T, W)
        feats = []
        for block in visual.transformer.resblocks[:-1]:
            x = block(x[None])[0]  # (1 + T, W): open_clip's own block
            feats.append(x)
    _TRUNKS[key] = (x, feats, grid)
    return x, feats, grid


def patch_features(model, method: str, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """(3, h, w) normalised -> L2-normalised patch features (T, D) and the grid: the official encode_image."""
    visual = model.visual
    x, feats, grid = trunk(model, image)
    with torch.no_grad():
        x = last_block(method, visual.transformer.resblocks, x, feats, grid)  # (1 + T, W)
        tokens = visual.ln_post(x[1:]) @ visual.proj  # (T, D)
    return tokens / tokens.norm(dim=-1, keepdim=True), grid


def window_map(model, method: str, image: torch.Tensor, size=None) -> torch.Tensor:
    """forward_feature: (3, h, w) -> normalised patch features (D, gh, gw) bilinearly upsampled to `size` or (h, w).

    The official code upsamples the cosine maps (Q, gh, gw) = text (Q, D) @ features. Every resampling step (this
    one, the window average, the upsampling to the original size, PAMR's weighted means) is linear and the same
    for every channel, so it commutes with the projection on the text: resampling the D feature channels and
    taking the cosines at the end (`cosines`) gives the same numbers with fewer channels than Q.
    """
    feats, grid = patch_features(model, method, image)  # (T, D)
    fmap = feats.T.reshape(1, -1, *grid)  # (1, D, gh, gw), row-major
    size = tuple(image.shape[-2:]) if size is None else size
    return F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)[0]  # (D, *size)


def cosines(text: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
    """text (Q, D), feature map (D, H, W) -> cosines (Q, H, W)."""
    return torch.einsum("qd,dhw->qhw", text, fmap)


# ---- whole and slide modes ---------------------------------------------------------------------------
def slide_windows(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's window loop: (y1, y2, x1, x2) per window; a side shorter than the crop gives one short window."""
    h_grids = max(h - crop + stride - 1, 0) // stride + 1
    w_grids = max(w - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * stride + crop, h), min(j * stride + crop, w)
            out.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return out


def centre_pad(h: int, w: int, patch: int) -> tuple[int, int, int, int]:
    """ClearCLIP's compute_padsize: (left, right, top, bottom) zeros up to a multiple of the patch, centred."""
    lr, tb = -w % patch, -h % patch
    return lr // 2, lr - lr // 2, tb // 2, tb - tb // 2


def slide_map(model, method: str, image: torch.Tensor, crop: int, stride: int, pad_crops: bool) -> torch.Tensor:
    """forward_slide up to the average: (3, h, w) -> (D, h, w), each window upsampled to its own crop
    (ClearCLIP: to its zero-padded crop, then cut back), summed where the windows overlap, divided by the count."""
    _, h, w = image.shape
    patch = model.visual.conv1.kernel_size[0]
    total = image.new_zeros((model.visual.proj.shape[1], h, w))  # (D, h, w)
    count = image.new_zeros((1, h, w))
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        piece = image[:, y1:y2, x1:x2]  # (3, ch, cw)
        left, right, top, bottom = centre_pad(y2 - y1, x2 - x1, patch) if pad_crops else (0, 0, 0, 0)
        padded = F.pad(piece, (left, right, top, bottom))  # zeros in normalised units
        fmap = window_map(model, method, padded)  # (D, ch + pad, cw + pad)
        total[:, y1:y2, x1:x2] += fmap[:, top:top + y2 - y1, left:left + x2 - x1]
        count[:, y1:y2, x1:x2] += 1
    assert bool((count > 0).all())
    return total / count


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    """(C, h, w) -> (C, *size), bilinear, align_corners False."""
    return F.interpolate(x[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


# ---- PAMR (from NACLIP's pamr.py) -------------------------------------------------------------------
def shifted(padded: torch.Tensor, m: int, offset: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(C, H + 2m, W + 2m) replicate-padded -> (C, H, W): the map at (y + dy, x + dx), clamped at the border."""
    (dy, dx), (h, w) = offset, size
    return padded[:, m + dy:m + dy + h, m + dx:m + dx + w]


def pamr(guide: torch.Tensor, scores: torch.Tensor, steps: int, dilations=(8, 16)) -> torch.Tensor:
    """guide (3, H, W), scores (C, H, W) at the same size -> (C, H, W) refined.

    Affinity to each of the 8 neighbours at each dilation: -|I - I_n| / (1e-8 + 0.1 std), std the unbiased
    standard deviation over the 9 window positions of every dilation together (the centre once per dilation),
    averaged over colour channels, softmax over neighbours; then `steps` rounds of scores <- sum_n a_n scores_n.
    """
    size, m = tuple(guide.shape[-2:]), max(dilations)
    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    neighbours = [(dy * d, dx * d) for d in dilations for dy, dx in ring]
    window = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    g = F.pad(guide[None], (m, m, m, m), mode="replicate")[0]  # (3, H + 2m, W + 2m)
    std = torch.stack([shifted(g, m, o, size) for o in window]).std(dim=0)  # (3, H, W)
    diffs = torch.stack([(guide - shifted(g, m, o, size)).abs() for o in neighbours])  # (P, 3, H, W)
    logits = -diffs / (1e-8 + 0.1 * std)  # (P, 3, H, W)
    affinity = torch.softmax(logits.mean(dim=1), dim=0)  # (P, H, W): mean over colour channels
    for _ in range(steps):
        padded = F.pad(scores[None], (m, m, m, m), mode="replicate")[0]  # (C, H + 2m, W + 2m)
        scores = torch.zeros_like(scores)  # (C, H, W)
        for a, o in zip(affinity, neighbours):
            scores.addcmul_(a, shifted(padded, m, o, size))
    return scores


# ---- postprocess_result ----------------------------------------------------------------------------
def postprocess(cosines: torch.Tensor, classes: list[int], setting: Setting) -> torch.Tensor:
    """(Q, H, W) cosines -> (H, W) int64 class ids: softmax(x logit_scale) over queries, max over each class's
    synonyms, SCLIP/SC-CLIP's area rule (a class whose pixel share among non-background pixels is not above
    area_thd loses its probabilities), then class 0 where the top probability is below prob_thd."""
    probs = torch.softmax(cosines * setting.logit_scale, dim=0)  # (Q, H, W)
    index = torch.tensor(classes)
    n_cls = int(index.max()) + 1
    if n_cls != len(classes):
        probs = torch.stack([probs[index == c].amax(dim=0) for c in range(n_cls)])  # (C, H, W)
    if setting.area_thd is not None:
        area = torch.bincount(probs.argmax(dim=0).flatten(), minlength=n_cls)[1:].to(probs.dtype)  # (C-1,)
        keep = (area > setting.area_thd * area.sum()).to(probs.dtype)
        probs = torch.cat([probs[:1], probs[1:] * keep[:, None, None]])
    pred = probs.argmax(dim=0)  # (H, W)
    pred[probs.max(dim=0).values < setting.prob_thd] = 0
    return pred.to(torch.int64)


# ---- the whole segmentor -------------------------------------------------------------------------------


def model_copy(model, dtype=torch.float64):
    """A deep copy of the open_clip model in `dtype`, in eval mode, made once per model and dtype."""
    key = (id(model), dtype)
    if key not in _COPIES:
        _COPIES[key] = (model, copy.deepcopy(model).to(dtype).eval())
    return _COPIES[key][1]


def cached_text(model, names: list[str]) -> torch.Tensor:
    key = (id(model), tuple(names))
    if key not in _TEXT:
        _TEXT[key] = (model, text_features(model, names))
    return _TEXT[key][1]


def feature_map(net, method: str, setting: Setting, image: np.ndarray) -> torch.Tensor:
    """The official forward up to the cosines: (H, W, 3) uint8 -> feature map (D, H, W) at the original size.

    Remembered per model, method, geometry and image: benchmarks that share the geometry share it.
    """
    geometry = replace(setting, logit_scale=0, prob_thd=0, area_thd=None)  # what the map depends on
    key = (id(net), method, geometry, image.shape, hashlib.sha1(image.tobytes()).hexdigest())
    if key in _MAPS:
        return _MAPS[key]
    dtype = net.visual.proj.dtype
    ori = image.shape[:2]
    x = normalise(official_resize(image, setting.short_side), dtype)  # (3, h, w)
    if setting.slide_crop > 0:
        fmap = slide_map(net, method, x, setting.slide_crop, setting.slide_stride, pad_crops=method == "clearclip")
        fmap = upsample(fmap, ori)  # (D, H, W)
    elif method == "naclip":  # NACLIP v2: to the resized size first, then to the original size
        fmap = upsample(window_map(net, method, x), ori)  # (D, H, W)
    else:  # forward_feature(inputs, ori_shape): the patch grid straight to the original size
        fmap = window_map(net, method, x, size=ori)  # (D, H, W)
    if setting.pamr_steps > 0:  # guided by the normalised resized image, bilinearly brought to the original size
        fmap = pamr(upsample(x, ori), fmap, setting.pamr_steps, setting.pamr_dilations)
    _MAPS[key] = fmap
    return fmap


def official_segment(model, method: str, benchmark: str, image: np.ndarray, names_file,
                     dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The official segmentor of `method` on `benchmark`, for one (H, W, 3) uint8 RGB image and an official-format
    names file -> (cosines (Q, H, W) at the original size, after PAMR where used; labels (H, W) int64)."""
    setting = official_setting(method, benchmark)
    net = model_copy(model, dtype)
    names, classes = read_names(names_file)
    cos = cosines(cached_text(net, names), feature_map(net, method, setting, image))  # (Q, H, W)
    return cos, postprocess(cos, classes, setting)
