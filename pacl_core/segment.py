"""Open-vocabulary segmentation: an image and some words in, per-word score maps and a label mask out.

One pipeline for every caller (CLI, evaluation, demo, toy world, live training), equal end to end to the official
segmentors (SCLIP, NACLIP, ClearCLIP, SC-CLIP; docs/methods.md):
- a `Geometry` says what the backbone sees: the photo resized keeping its aspect ratio (mmcv's rule: short side
  `size`, long side at most 2048, bilinear), the whole of it in one pass or mmseg's sliding windows over it, and
  optional shifted passes. One geometry = one trunk pass, shared by every method of that geometry;
- a `Readout` says how one method reads that pass: its last block and embedder (vanilla, pacl, or a training-free
  variant, pacl_core.methods), the logit scale, refinement (affinity on the patches, or PAMR guided by the network
  input resized to the photo), the area threshold and the background rule;
- `Segmenter(backbone, method, ...)` holds one of each (unset settings take the method's official defaults) and
  `segment_batch` / `segment_many` run several of them: cosines of every patch with every word ("scores", never
  logits) -> upsampled to the photo -> refined -> argmax (`Segmenter.masks`).
`shifts=m` averages m x m passes shifted by fractions of a patch (`shifted_scores`), an opt-in of this project.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from pacl_core.affinity import affinity_refine
from pacl_core.checkpoint import load_head
from pacl_core.errors import PACLError
from pacl_core.inputs import MAX_WORDS, check_pixels, parse_words, to_rgb_array
from pacl_core.methods import check_method, layers_needed, method_defaults
from pacl_core.pacl import VisionEmbedder, patch_similarity
from pacl_core.pamr import pamr
from pacl_core.prompts import get_templates

MODES = ("whole", "slide")
BACKGROUND_RULES = ("score", "entropy", "prob")
REFINERS = ("affinity", "pamr")  # affinity: the patches' own embeddings; PAMR: the image's colours
MAX_GRID = 128  # one forward pass (whole mode, or a window) holds at most MAX_GRID² = 16384 patches


def parse_background(spec) -> tuple[str, float] | None:
    """None | 'none' | 'score:0.2' | 'entropy:1.5' | 'prob:0.1' | ('score', 0.2) -> None or (rule, threshold)."""
    if spec is None or spec == "none" or spec == "":
        return None
    if isinstance(spec, str):
        rule, _, value = spec.partition(":")
        try:
            spec = (rule, float(value))
        except ValueError:
            raise PACLError(f"background '{spec}' must look like score:0.2, entropy:1.5 or prob:0.1") from None
    rule, thr = spec
    if rule not in BACKGROUND_RULES:
        raise PACLError(f"unknown background rule '{rule}'; use one of {', '.join(BACKGROUND_RULES)} (or none)")
    return rule, float(thr)


def scores_to_probs(scores: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Cosines (..., K, H, W) -> per-pixel class distribution softmax(logit_scale · cos) over K."""
    return torch.softmax(scores * logit_scale, dim=-3)


def label_mask(scores: torch.Tensor, logit_scale: float, background=None, keep=None) -> torch.Tensor:
    """Cosines (K, H, W) -> (H, W) int64 word index per pixel, -1 where the background rule fires.

    keep (K,) bool: the words the area threshold leaves (area_keep). The others are never chosen and, as SCLIP
    and SC-CLIP do, their probabilities count as 0 for the prob rule; no word left -> all background."""
    kept = scores if keep is None else scores.masked_fill(~keep.to(scores.device)[:, None, None], float("-inf"))
    top, mask = kept.max(dim=0)  # (H, W)
    if background is not None:
        rule, thr = background
        if rule == "score":
            bg = top < thr
        elif rule == "prob":  # SCLIP / ClearCLIP / NACLIP: the best word's probability is below thr
            p = scores_to_probs(scores, logit_scale)  # (K, H, W)
            p = p if keep is None else p * keep.to(p)[:, None, None]
            bg = p.max(dim=0).values < thr
        else:
            p = scores_to_probs(scores, logit_scale)  # (K, H, W)
            entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=0)  # (H, W)
            bg = entropy > thr
        mask = torch.where(bg, torch.full_like(mask, -1), mask)
    if keep is not None and not bool(keep.any()):
        mask = torch.full_like(mask, -1)
    return mask


def area_keep(counts: torch.Tensor, threshold: float, groups=None) -> torch.Tensor:
    """SCLIP's / SC-CLIP's area_thd: pixels per word as its best word (K,) -> (K,) bool, True where the word's
    class covers more than `threshold` of the pixels whose best word names a class.

    groups: a class id per word (synonyms share one; by default each word is its own class); a negative id marks
    a word naming the background, which is kept and counted in no class (the official class 0)."""
    counts = counts.double().cpu()  # (K,)
    g = torch.arange(len(counts)) if groups is None else torch.as_tensor(np.asarray(groups), dtype=torch.long)
    fg = g >= 0  # (K,)
    keep = torch.ones(len(counts), dtype=torch.bool)
    if fg.any():
        per_class = torch.zeros(int(g.max()) + 1, dtype=counts.dtype).index_add_(0, g[fg], counts[fg])
        keep[fg] = per_class[g[fg]] > threshold * counts[fg].sum()
    return keep


UPSAMPLE_BLOCK = 1 << 22  # elements of one (K, rows, W) block of full-resolution scores


MATMUL_MAX_ROWS = 64  # grids up to this many rows upsample by matrix products; larger canvases by F.interpolate


def bilinear_matrix(n_out: int, n_in: int, device=None) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D bilinear resizing, the same as F.interpolate(align_corners=False)."""
    src = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    w1 = (src - i0).float()
    m = torch.zeros(n_out, n_in, device=device)
    rows = torch.arange(n_out, device=device)
    m.index_put_((rows, i0), 1 - w1, accumulate=True)
    m.index_put_((rows, i1), w1, accumulate=True)
    return m  # (n_out, n_in)


def upsample_blocks(low: torch.Tensor, size: tuple[int, int]):
    """Bilinear upsampling of (K, h, w) to (K, H, W), yielded as row blocks (r0, (K, r, W)).

    A patch grid is upsampled separably, columns with F.interpolate and rows by a matrix product per block, so
    memory stays bounded; a large canvas (sliding window) goes through F.interpolate in one block.
    """
    K, h, w = low.shape
    H, W = size
    low = low.float()
    if h > MATMUL_MAX_ROWS:
        yield 0, F.interpolate(low[None], size=(H, W), mode="bilinear", align_corners=False)[0]  # (K, H, W)
        return
    cols = F.interpolate(low[None], size=(h, W), mode="bilinear", align_corners=False)[0]  # (K, h, W)
    wy = bilinear_matrix(H, h, low.device)  # (H, h)
    step = max(1, UPSAMPLE_BLOCK // max(1, K * W))
    for r0 in range(0, H, step):
        yield r0, torch.matmul(wy[r0:r0 + step], cols)  # (r, h) @ (K, h, W) -> (K, r, W)


def upsample_scores(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) -> (K, H, W) bilinear, equal to F.interpolate(align_corners=False) up to float rounding."""
    return torch.cat([block for _, block in upsample_blocks(low, size)], dim=1)


def shift_offsets(patch: int, shifts: int) -> list[int]:
    """The m sub-patch offsets (px) of shifted passes, centred on 0: patch 8, m 2 -> [-2, 2]; m 4 -> [-3, -1, 1, 3]."""
    assert 1 <= shifts <= patch, f"shifts must be between 1 and the patch size {patch}, got {shifts}"
    return [((2 * a + 1) * patch) // (2 * shifts) - patch // 2 for a in range(shifts)]


def shifted_scores(patch_scores_fn, images: torch.Tensor, patch: int, shifts: int,
                   logit_scale: float | None = None) -> torch.Tensor:
    """Pixel-level scores (B, K, H, W): the mean over shifts x shifts passes of the upsampled patch scores.

    patch_scores_fn: (B, 3, H, W) -> (B, K, h, w). Each pass sees the image moved by (dy, dx) from shift_offsets
    (mirrored at the border), so every pixel falls into a different patch in each pass; its scores are put back
    in place and averaged. shifts=1 is plain bilinear upsampling of one pass.

    logit_scale=None averages the scores themselves (linear: right for shares of pixels). A number averages the
    passes as an ensemble of classifiers: each pass's word probabilities softmax(logit_scale · s) and its
    log-normaliser are upsampled, put back and averaged, then written back in cosine units,
    s̄ = (mean log-normaliser + log mean probability) / logit_scale. So softmax(logit_scale · s̄) is the mean
    probability, and s̄ is the plain cosine wherever the passes (and neighbouring patches) agree.
    """
    return shifted_scores_many(lambda v: [patch_scores_fn(v)], images, patch, shifts, [logit_scale])[0]


def shifted_scores_many(patch_scores_fn, images: torch.Tensor, patch: int, shifts: int,
                        logit_scales: list) -> list[torch.Tensor]:
    """shifted_scores for several score maps from the same passes: patch_scores_fn (B, 3, H, W) -> a list of
    (B, K_i, h, w), one per entry of logit_scales (each None or a number, as in shifted_scores) -> a list of
    (B, K_i, H, W). Each shifted view goes through patch_scores_fn once, whatever the number of maps."""
    H, W = images.shape[-2:]
    offsets = shift_offsets(patch, shifts)
    pad = max(abs(o) for o in offsets)  # at most patch / 2, so below H and W as reflect padding needs
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")  # (B, 3, H + 2p, W + 2p)

    def put_back(low: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        """A pass's (B, C, h, w) upsampled to (B, C, H, W) and moved back by (dy, dx), edges replicated."""
        up = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)  # (B, C, H, W)
        return F.pad(up, (pad, pad, pad, pad), mode="replicate")[:, :, pad - dy:pad - dy + H, pad - dx:pad - dx + W]

    n_maps = len(logit_scales)
    total, norm = [0.0] * n_maps, [0.0] * n_maps
    for dy in offsets:
        for dx in offsets:
            view = padded[:, :, pad + dy:pad + dy + H, pad + dx:pad + dx + W]  # (B, 3, H, W): image[y + dy, x + dx]
            for i, (low, scale) in enumerate(zip(patch_scores_fn(view), logit_scales)):  # (B, K, h, w) each
                if scale is None:
                    total[i] = total[i] + put_back(low, dy, dx)  # (B, K, H, W)
                else:
                    z = scale * low  # (B, K, h, w)
                    total[i] = total[i] + put_back(torch.softmax(z, dim=1), dy, dx)  # (B, K, H, W)
                    norm[i] = norm[i] + put_back(torch.logsumexp(z, dim=1, keepdim=True), dy, dx)  # (B, 1, H, W)
    n = shifts ** 2
    out = []
    for t, z, scale in zip(total, norm, logit_scales):
        if scale is None:
            out.append(t / n)
        else:
            tiny = torch.finfo(t.dtype).tiny  # a word no pass gives any probability stays finite
            out.append((z / n + torch.log((t / n).clamp_min(tiny))) / scale)  # (B, K, H, W)
    return out


def best_word_counts(blocks, K: int) -> torch.Tensor:
    """Score blocks (K, r, W) -> (K,) how many pixels have each word as their best."""
    return sum(torch.bincount(b.argmax(dim=0).flatten().cpu(), minlength=K) for b in blocks)


def mask_from_low(low: torch.Tensor, size: tuple[int, int], logit_scale: float, background=None,
                  area_threshold: float | None = None, groups=None) -> torch.Tensor:
    """The (H, W) label mask of the upsampled scores, computed block by block (never all of (K, H, W) at once);
    with an area threshold a first pass counts each word's pixels (area_keep)."""
    keep = None
    if area_threshold is not None:
        counts = best_word_counts((block for _, block in upsample_blocks(low, size)), low.shape[0])
        keep = area_keep(counts, area_threshold, groups)  # (K,)
    return torch.cat([label_mask(block, logit_scale, background, keep) for _, block in upsample_blocks(low, size)])


@dataclass
class Segmentation:
    """What one image and K words give. Arrays are numpy; maps are at the image's resolution."""

    words: list[str]
    image: np.ndarray  # (H, W, 3) uint8, the image as segmented
    mask: np.ndarray  # (H, W) int16 word index, -1 = background
    patch_scores: np.ndarray  # (K, h, w) float32 patch-level cosines (after affinity refinement, if any)
    low_scores: np.ndarray  # (K, h', w') the scores before the final upsampling (the patch grid, or a canvas)
    method: str
    logit_scale: float
    background: tuple | None = None
    notes: list[str] = field(default_factory=list)
    refined: np.ndarray | None = None  # (K, H, W) full-resolution scores after refinement (PAMR), if any

    @cached_property
    def scores(self) -> np.ndarray:
        """(K, H, W) float32: each pixel's (upsampled) cosine with each word; made on first use."""
        if self.refined is not None:
            return self.refined
        return upsample_scores(torch.from_numpy(self.low_scores), self.image.shape[:2]).numpy()

    @cached_property
    def probs(self) -> np.ndarray:
        """(K, H, W) softmax over words of logit_scale · cosine; in [0, 1] and summing to 1 per pixel."""
        return scores_to_probs(torch.from_numpy(self.scores), self.logit_scale).numpy()

    @cached_property
    def heatmaps(self) -> np.ndarray:
        """(K, H, W) in [0, 1]: the word distribution for K > 1; for a single word its min-max scaled cosine."""
        return self.heatmaps_at(self.image.shape[:2])

    def scores_at(self, size: tuple[int, int]) -> np.ndarray:
        """(K, h, w) float32 scores at another resolution (e.g. a display size), made from the low-resolution
        scores directly rather than from the full-resolution ones."""
        if tuple(size) == self.image.shape[:2]:
            return self.scores
        if self.refined is not None:
            full = torch.from_numpy(self.refined)[None]  # (1, K, H, W)
            out = F.interpolate(full, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
            return out[0].numpy()  # (K, h, w)
        return upsample_scores(torch.from_numpy(self.low_scores), tuple(size)).numpy()

    def heatmaps_at(self, size: tuple[int, int]) -> np.ndarray:
        """`heatmaps` at another resolution (K, h, w) in [0, 1]."""
        s = self.scores_at(size)
        if len(self.words) > 1:
            return self.probs if s is self.scores else scores_to_probs(torch.from_numpy(s), self.logit_scale).numpy()
        lo, hi = float(s.min()), float(s.max())
        return ((s - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(s)

    def summary(self) -> list[dict]:
        """Per word: share of pixels labelled with it, and its mean / max cosine over the image."""
        n = self.mask.size
        rows = []
        for k, w in enumerate(self.words):
            rows.append({"word": w, "pixel_share": float((self.mask == k).sum() / n),
                         "mean_score": float(self.scores[k].mean()), "max_score": float(self.scores[k].max())})
        if self.background is not None:
            rows.append({"word": "background", "pixel_share": float((self.mask < 0).sum() / n),
                         "mean_score": float("nan"), "max_score": float("nan")})
        return rows


def check_area_threshold(value) -> float | None:
    """None (off) or a share in [0, 1): a class covering no more than it of the image falls away (area_keep)."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise PACLError(f"area threshold must be a number from 0 to 1 (a share of the image), got {value!r}") from None
    if not 0 <= value < 1:
        raise PACLError(f"area threshold must be from 0 to below 1 (a share of the image), got {value}")
    return value


# ---- geometry: what the backbone sees ------------------------------------------------------------------------
RESIZE_LONG_CAP = 2048  # mmcv Resize(scale=(2048, S), keep_ratio=True): the long side never exceeds this


def resized_shape(shape, short: int, long_cap: int = RESIZE_LONG_CAP) -> tuple[int, int]:
    """mmcv's keep-ratio rule, as every official test pipeline resizes: one factor min(long_cap / long side,
    short / short side), each side rounded to the nearest pixel. (233, 350) at 336 -> (336, 505)."""
    H, W = shape[:2]
    f = min(long_cap / max(H, W), short / min(H, W))
    return int(H * f + 0.5), int(W * f + 0.5)


def window_boxes(shape, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's sliding windows over an (H, W) canvas -> [(y1, y2, x1, x2)]: a window every `stride` px, the last
    one moved back to end at the border; a canvas smaller than a window is one (smaller) window on that axis."""
    H, W = shape

    def starts(n: int) -> list[tuple[int, int]]:
        spans = []
        for i in range(max(n - window + stride - 1, 0) // stride + 1):
            end = min(i * stride + window, n)
            spans.append((max(end - window, 0), end))
        return spans

    return [(y1, y2, x1, x2) for y1, y2 in starts(H) for x1, x2 in starts(W)]


def centred_padding(h: int, w: int, patch: int) -> tuple[int, int, int, int]:
    """ClearCLIP's padding of a window to a multiple of the patch: (left, right, top, bottom), the odd pixel last."""
    dh, dw = -h % patch, -w % patch
    return dw // 2, dw - dw // 2, dh // 2, dh - dh // 2


@dataclass(frozen=True)
class Geometry:
    """What the backbone sees of an image. One geometry = one trunk pass per window and shifted view, shared by
    every method (Readout) of that geometry."""

    size: int  # the short side (px) the image is resized to, aspect ratio kept (resized_shape)
    mode: str = "whole"  # whole: the resized image in one pass; slide: windows over it
    window: int = 224  # slide: the window's side (px)
    stride: int = 112  # slide: the step between windows (px)
    shifts: int = 1  # shifts x shifts passes moved by fractions of a patch (an opt-in of this project)
    # ClearCLIP: a window that is not a multiple of the patch is zero-padded, centred. Not part of the trunk-sharing
    # key: windows that need no padding (nearly all) are shared with the methods that do not pad (_slide)
    pad_windows: bool = field(default=False, compare=False)

    def input_shape(self, shape) -> tuple[int, int]:
        """(H, W) of a photo -> (h, w) of the resized image the backbone reads."""
        return resized_shape(shape, self.size)

    def key(self) -> tuple:
        """What decides the trunk passes: equal keys share every pass (the window only matters in slide mode)."""
        return (self.size, self.mode, self.shifts) + ((self.window, self.stride) if self.mode == "slide" else ())

    def describe(self) -> str:
        """'448 px short side, whole image' or '336 px short side, 224/112 px windows'."""
        where = "whole image" if self.mode == "whole" else f"{self.window}/{self.stride} px windows"
        return f"{self.size} px short side, {where}"


@dataclass(frozen=True, eq=False)
class Readout:
    """How one method reads a geometry's pass, and how its scores become a label mask."""

    method: str = "vanilla"  # the last block and embedder (pacl_core.methods)
    head: object = None  # the PACL head (VisionEmbedder) for method 'pacl'
    logit_scale: float = 100.0  # softmax(logit_scale · cosine) over words, for the probability rules
    background: tuple | None = None  # (rule, threshold), see parse_background
    area_threshold: float | None = None  # SCLIP's / SC-CLIP's area_thd (area_keep)
    refine: str | None = None  # affinity (per pass, on the patches) or pamr (after upsampling)
    templates: tuple | None = None  # prompt templates; None: the backbone's own
    upsample: str = "direct"  # direct: scores to the photo at once; "input": via the resized input first (NACLIP)


# ---- the segmenter -------------------------------------------------------------------------------------------
READOUT_SETTINGS = ("method", "head", "logit_scale", "background", "area_threshold", "refine", "templates")
GEOMETRY_SETTINGS = {"image_size": "size", "mode": "mode", "window": "window", "stride": "stride", "shifts": "shifts"}


class Segmenter:
    """One method on one frozen backbone: a Geometry (what the backbone sees) and a Readout (how the method reads
    it). Settings left unset take the method's official defaults (pacl_core.methods.METHOD_DEFAULTS)."""

    def __init__(self, backbone, method: str = "vanilla", head: VisionEmbedder | str | None = None,
                 image_size: int | None = None, mode: str | None = None, window: int | None = None,
                 stride: int | None = None, background=None, logit_scale: float | None = None,
                 max_words: int = MAX_WORDS, refine: str | None = None, shifts: int = 1,
                 area_threshold: float | None = None, templates=None):
        self.backbone, method = backbone, check_method(method)
        layers_needed(method, backbone.depth)  # a method that needs more blocks than the model has fails here
        defaults = method_defaults(method, native_size=backbone.native_size)
        self.geometry = make_geometry(backbone, defaults, image_size, mode, window, stride, shifts)
        if refine not in (None, "none", *REFINERS):
            raise PACLError(f"unknown refine '{refine}'; use one of {', '.join(REFINERS)} (or none)")
        refine = defaults.get("refine") if refine is None else (None if refine == "none" else refine)
        if logit_scale is not None and not 0 < logit_scale < float("inf"):
            raise PACLError(f"logit_scale must be a positive number, got {logit_scale}")
        head = self._resolve_head(head) if method == "pacl" else None
        head_scale = (getattr(head, "meta", None) or {}).get("logit_scale") if head is not None else None
        self.readout = Readout(
            method=method, head=head, logit_scale=float(logit_scale or defaults.get("logit_scale") or head_scale
                                                        or backbone.logit_scale),
            background=parse_background(background), area_threshold=check_area_threshold(area_threshold),
            refine=refine, templates=None if templates is None else get_templates(templates),
            upsample=defaults.get("upsample", "direct"))
        self.max_words = max_words

    def _resolve_head(self, head):
        if head is None:
            head = self.backbone.default_head
        if head is None:
            raise PACLError(
                "method 'pacl' needs a trained PACL head: pass --head FILE.safetensors "
                "(train one with `python -m pacl_core train`), or use --model toy, which ships one")
        if not isinstance(head, torch.nn.Module):
            head = load_head(head, self.backbone)
        return head.to(self.backbone.device).eval()

    def replace(self, **readout) -> Segmenter:
        """The same geometry and head with other readout settings (e.g. background=('score', 0.2)): no reload."""
        if "background" in readout:
            readout["background"] = parse_background(readout["background"])
        if "area_threshold" in readout:
            readout["area_threshold"] = check_area_threshold(readout["area_threshold"])
        new = copy.copy(self)
        new.readout = dataclasses.replace(self.readout, **readout)
        return new

    def reshape(self, **geometry) -> Segmenter:
        """The same readout on another geometry, e.g. reshape(mode="whole", shifts=1); itself if nothing changes."""
        changed = dataclasses.replace(self.geometry, **geometry)
        if changed == self.geometry:
            return self
        new = copy.copy(self)
        new.geometry = changed
        return new

    def __getattr__(self, name: str):
        """A setting by name, read-only: seg.method, seg.logit_scale, ... (its Readout's), seg.mode, seg.shifts,
        ... (its Geometry's; seg.image_size is the geometry's size)."""
        part = "readout" if name in READOUT_SETTINGS else "geometry" if name in GEOMETRY_SETTINGS else None
        if part is None or part not in self.__dict__:
            raise AttributeError(f"'Segmenter' object has no attribute '{name}'")
        return getattr(self.__dict__[part], GEOMETRY_SETTINGS.get(name, name))

    def text(self, words: list[str]) -> torch.Tensor:
        """(K, D) prompt-ensembled embeddings of the words with this segmenter's templates (cached)."""
        return self.backbone.text_embeddings(words, self.templates)

    # ---- the patch level ----------------------------------------------------------------------------------
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens after ln_post (B, T, D_v) -> this method's patch embeddings (B, T, D) in the joint space."""
        if self.method == "pacl":
            return self.head(tokens.to(self.head.linear.weight.dtype))  # (B, T, D)
        return self.backbone.vanilla_patch_embeddings(tokens)  # (B, T, D)

    def patch_embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images (B, 3, H, W) -> this method's patch embeddings (B, T, D) and the grid."""
        (emb,), grid = patch_embeddings([self], x)
        return emb, grid

    def scores_from_embeddings(self, emb: torch.Tensor, grid: tuple[int, int], text_emb: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, T, D) -> cosine of every patch with every word (B, K, h, w), after the
        affinity refinement when refine="affinity"."""
        s = patch_similarity(emb.float(), text_emb.to(emb.device).float())  # (B, K, T)
        if self.refine == "affinity":
            s = affinity_refine(emb, s)  # (B, K, T)
        return s.view(s.shape[0], s.shape[1], *grid)  # (B, K, h, w)

    # ---- the image level ----------------------------------------------------------------------------------
    def masks(self, low: torch.Tensor, images: np.ndarray, inputs: torch.Tensor | None = None, groups=None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores before the final upsampling (B, K, h', w') of photos (B, H, W, 3) -> label masks (B, H, W) int64
        (-1 = background) and, with PAMR, the refined full-resolution scores (B, K, H, W).

        The one readout every caller uses: upsampled bilinearly to the photo (row blocks, never all of (K, H, W)
        at once without PAMR), PAMR guided by the normalised network input `inputs` (B, 3, h, w) resized to the
        photo (as the official segmentors do), the area threshold, then the argmax and the background rule."""
        B, K = low.shape[:2]
        H, W = images.shape[1:3]
        if groups is not None and len(groups) != K:
            raise PACLError(f"{len(groups)} class ids for {K} words")
        if self.refine != "pamr":
            masks = [mask_from_low(lo, (H, W), self.logit_scale, self.background, self.area_threshold, groups)
                     for lo in low]  # (H, W) each
            return torch.stack(masks), None
        full = F.interpolate(low.float(), size=(H, W), mode="bilinear", align_corners=False)  # (B, K, H, W)
        if inputs is None:  # no network input at hand: the photo itself, normalised as the backbone does
            inputs = self.backbone.normalize(torch.from_numpy(np.ascontiguousarray(images)))  # (B, 3, H, W)
        guide = F.interpolate(inputs.float(), size=(H, W), mode="bilinear", align_corners=False)  # (B, 3, H, W)
        full = pamr(guide.to(full.device), full)  # (B, K, H, W)
        masks = []
        for f in full:
            keep = None
            if self.area_threshold is not None:
                keep = area_keep(best_word_counts([f], K), self.area_threshold, groups)  # (K,)
            masks.append(label_mask(f, self.logit_scale, self.background, keep))  # (H, W)
        return torch.stack(masks), full

    def finish(self, image: np.ndarray, words: list[str], low: torch.Tensor, patch: torch.Tensor,
               inputs: torch.Tensor | None = None, notes=(), groups=None) -> Segmentation:
        """One image's scores before the final upsampling (K, h', w') and at the patch level (K, h, w) -> its
        Segmentation. groups: a class id per word for the area threshold (see area_keep)."""
        mask, refined = self.masks(low[None], image[None], None if inputs is None else inputs[None], groups)
        return Segmentation(words=list(words), image=image, mask=mask[0].to(torch.int16).cpu().numpy(),
                            patch_scores=patch.float().cpu().numpy(), low_scores=low.float().cpu().numpy(),
                            method=self.method, logit_scale=self.logit_scale, background=self.background,
                            notes=list(notes), refined=None if refined is None else refined[0].cpu().numpy())

    def __call__(self, image, words, groups=None) -> Segmentation:
        """Segment one image (PIL, numpy or path; any size) with words ('dog, sky' or a list). groups: a class
        id per word for the area threshold (see area_keep); by default each word is its own class."""
        return segment_many([self], image, words, groups)[self.method]


def make_geometry(backbone, defaults: dict, image_size, mode, window, stride, shifts) -> Geometry:
    """The geometry a segmenter's settings ask for (unset ones from the method's defaults), checked."""
    mode = mode or defaults.get("mode", "whole")
    if mode not in MODES:
        raise PACLError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
    p = backbone.patch_size
    if not isinstance(shifts, int) or isinstance(shifts, bool) or not 1 <= shifts <= p:
        raise PACLError(f"shifts must be a whole number from 1 to the patch size ({p}), got {shifts}")
    for name, value in (("image_size", image_size), ("window", window), ("stride", stride)):
        check_pixels(name, value)
    size = int(image_size or defaults.get("image_size") or backbone.image_size)
    win = int(window or defaults.get("window") or backbone.native_size)
    step = int(stride or (defaults.get("stride") if window is None else None) or max(win // 2, 1))
    if min(size, win) < p:
        raise PACLError(f"input size {size} px and window {win} px must each be at least one patch ({p} px)")
    name, side = ("window", win) if mode == "slide" else ("image_size", size)  # one pass is at least this large
    if side // p > MAX_GRID:
        raise PACLError(f"{name} {side} px is {side // p}x{side // p} patches in one pass; at most "
                        f"{MAX_GRID}x{MAX_GRID} ({MAX_GRID * p} px with {p} px patches)"
                        + ("; use slide mode for larger images" if mode == "whole" else ""))
    return Geometry(size=size, mode=mode, window=win, stride=step, shifts=shifts,
                    pad_windows=mode == "slide" and bool(defaults.get("pad_windows", False)))


# ---- the pass: one geometry, several methods, a batch of images ---------------------------------------------
@torch.no_grad()
def pass_tokens(segmenters: list[Segmenter], x: torch.Tensor, extra=()) -> tuple[dict, tuple[int, int]]:
    """Normalised images (B, 3, H, W) -> {method: its tokens after its last block and ln_post (B, 1 + T, D_v), CLS
    first} for the segmenters' methods and the `extra` ones, and the grid. Blocks 1..L-1 run once for all of them
    (keeping the union of the blocks their methods read); each method runs its own last block, shared where the
    block is the same (vanilla and pacl)."""
    backbone = segmenters[0].backbone
    methods = list(dict.fromkeys([*(s.method for s in segmenters), *extra]))
    keep = sorted({i for m in methods for i in layers_needed(m, backbone.depth)})
    trunk = backbone.trunk(x, keep)  # x: (B, 1 + T, W)
    return backbone.finish_many(trunk, methods), trunk.grid  # method -> (B, 1 + T, D_v)


@torch.no_grad()
def patch_embeddings(segmenters: list[Segmenter], x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """Normalised images (B, 3, H, W) -> per segmenter its patch embeddings (B, T, D), and the grid: one trunk pass
    (pass_tokens), each method's embedder on its patch tokens."""
    tokens, grid = pass_tokens(segmenters, x)  # method -> (B, 1 + T, D_v)
    return [s.embed_tokens(tokens[s.method][:, 1:]) for s in segmenters], grid  # (B, T, D) each


def patch_scores(segmenters: list[Segmenter], x: torch.Tensor, texts: list
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[int, int]]:
    """Normalised images (B, 3, H, W) -> per segmenter the cosine of every patch with every word (B, K, h, w),
    its patch embeddings (B, T, D), and the grid: one trunk pass (patch_embeddings)."""
    embs, grid = patch_embeddings(segmenters, x)  # (B, T, D) each
    return [s.scores_from_embeddings(e, grid, t) for s, e, t in zip(segmenters, embs, texts)], embs, grid


def view_scores(segmenters: list[Segmenter], x: torch.Tensor, texts: list) -> list[torch.Tensor]:
    """Scores at a view's own pixels, (B, 3, H, W) -> [(B, K, H, W)]: one pass upsampled bilinearly (as the
    official forward_feature does per window), or with shifts the average of the shifted passes."""
    shifts = segmenters[0].shifts
    scales = [s.logit_scale if shifts > 1 else None for s in segmenters]  # one pass: plain upsampled cosines
    return shifted_scores_many(lambda v: patch_scores(segmenters, v, texts)[0], x,
                               segmenters[0].backbone.patch_size, shifts, scales)


@dataclass
class Pass:
    """What one geometry's pass over a batch of same-sized photos gives each of several segmenters."""

    low: list[torch.Tensor]  # per segmenter (B, K, h', w'): the scores before the final upsampling to the photo
    patch: list[torch.Tensor]  # per segmenter (B, K, h, w): the patch level
    inputs: torch.Tensor  # (B, 3, h_in, w_in) the normalised resized images (PAMR's guide)
    embeddings: list[torch.Tensor] | None = None  # per segmenter (B, T, D) of the plain whole pass, if asked for
    grid: tuple[int, int] | None = None  # the patch grid of those embeddings


def check_input_shape(backbone, shape, geometry: Geometry) -> tuple[int, int]:
    """The resized (h, w) a photo gives, or a one-line PACLError if a side would be shorter than one patch."""
    h, w = geometry.input_shape(shape)
    p = backbone.patch_size
    if min(h, w) < p:
        raise PACLError(f"a {shape[1]}x{shape[0]} image is too thin: resized to a {geometry.size} px short side "
                        f"(long side at most {RESIZE_LONG_CAP} px) it is {w}x{h} px, under one {p} px patch")
    if geometry.mode == "whole" and (h // p) * (w // p) > MAX_GRID ** 2:
        raise PACLError(f"a {w}x{h} px input is {(h // p) * (w // p)} patches in one pass, more than "
                        f"{MAX_GRID}x{MAX_GRID}; lower the input size or use slide mode")
    return h, w


def run_pass(segmenters: list[Segmenter], images: np.ndarray, texts: list, embeddings: bool = False) -> Pass:
    """Photos of one size (B, H, W, 3) uint8 through one geometry for several segmenters of one backbone.

    embeddings=True also returns each method's patch embeddings of one plain pass over the whole resized input (an
    extra pass when the geometry has windows or shifts)."""
    first = segmenters[0]
    geo, backbone = first.geometry, first.backbone
    shape = check_input_shape(backbone, images.shape[1:3], geo)
    x = backbone.preprocess_batch(images, shape)  # (B, 3, h, w)
    plain = None
    if embeddings or (geo.mode == "whole" and geo.shifts == 1):
        plain = patch_scores(segmenters, x, texts)  # ([(B, K, h, w)], [(B, T, D)], grid): one plain whole pass
    if geo.mode == "slide":
        low = [torch.cat(parts) for parts in zip(*(_slide(segmenters, xi[None], texts) for xi in x))]
        patch = [F.avg_pool2d(lo, backbone.patch_size) for lo in low]  # (B, K, h', w') each, pooled to patches
    elif geo.shifts > 1:
        low = view_scores(segmenters, x, texts)  # (B, K, h, w) each, at the input's pixels
        patch = [F.avg_pool2d(lo, backbone.patch_size) for lo in low]
    else:
        patch = plain[0]
        low = [sc if s.readout.upsample == "direct" else
               F.interpolate(sc, size=shape, mode="bilinear", align_corners=False)  # (B, K, h_in, w_in)
               for s, sc in zip(segmenters, patch)]
    return Pass(low, patch, x, plain[1] if embeddings else None, plain[2] if embeddings else None)


def _slide(segmenters: list[Segmenter], x: torch.Tensor, texts: list) -> list[torch.Tensor]:
    """One normalised input (1, 3, h, w) -> per segmenter the window-averaged scores (1, K, h, w): mmseg's windows,
    each upsampled to its own pixels, summed and divided by how many windows cover each pixel."""
    p, geo = segmenters[0].backbone.patch_size, segmenters[0].geometry
    h, w = x.shape[-2:]
    totals = [torch.zeros(1, t.shape[0], h, w, device=x.device) for t in texts]  # (1, K, h, w) each
    count = torch.zeros(1, 1, h, w, device=x.device)
    by_shape: dict[tuple, list] = {}
    for box in window_boxes((h, w), geo.window, geo.stride):
        by_shape.setdefault((box[1] - box[0], box[3] - box[2]), []).append(box)
    per_batch = max(1, 8 // geo.shifts ** 2)  # windows per backbone batch; each holds (K, win, win) scores
    for (ch, cw), boxes in by_shape.items():
        pad = centred_padding(ch, cw, p)
        # a window off the patch multiple is padded for the methods that pad (ClearCLIP), cut for the others
        parts = [[i for i, s in enumerate(segmenters) if s.geometry.pad_windows == padded] for padded in (True, False)]
        parts = [part for part in parts if part] if any(pad) else [list(range(len(segmenters)))]
        for part in parts:
            padding = pad if segmenters[part[0]].geometry.pad_windows else (0, 0, 0, 0)
            for i in range(0, len(boxes), per_batch):
                batch = boxes[i:i + per_batch]
                crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in batch])  # (b, 3, ch, cw)
                crops = F.pad(crops, padding)  # zeros of the normalised input, as ClearCLIP pads
                views = view_scores([segmenters[j] for j in part], crops, [texts[j] for j in part])
                for j, sc in zip(part, views):  # (b, K, ch', cw') each
                    sc = sc[:, :, padding[2]:padding[2] + ch, padding[0]:padding[0] + cw]  # (b, K, ch, cw)
                    for (y1, y2, x1, x2), one in zip(batch, sc):
                        totals[j][0, :, y1:y2, x1:x2] += one
        for y1, y2, x1, x2 in boxes:
            count[:, :, y1:y2, x1:x2] += 1
    return [t / count for t in totals]  # (1, K, h, w) each


def group_by_geometry(segmenters) -> list[list[Segmenter]]:
    """Segmenters grouped by backbone and Geometry, first-seen order: each group shares every trunk pass."""
    groups: dict[tuple, list] = {}
    for s in segmenters:
        groups.setdefault((id(s.backbone), s.geometry.key()), []).append(s)
    return list(groups.values())


def segment_batch(segmenters, images: np.ndarray, words: list[str], groups=None, notes=()) -> list[dict]:
    """Photos of one size (B, H, W, 3) uint8 and K words -> per photo {method: Segmentation}; segmenters of one
    geometry share every trunk pass. groups: a class id per word for the area threshold (Segmenter.finish)."""
    out = [{} for _ in range(len(images))]
    for group in group_by_geometry(segmenters):
        texts = [s.text(words) for s in group]  # (K, D) each
        result = run_pass(group, images, texts)
        for j, s in enumerate(group):
            for i, image in enumerate(images):
                out[i][s.method] = s.finish(image, words, result.low[j][i], result.patch[j][i], result.inputs[i],
                                            notes, groups)
    methods = [s.method for s in segmenters]
    return [{m: o[m] for m in methods} for o in out]


def segment_many(segmenters, image, words, groups=None) -> dict[str, Segmentation]:
    """Segment one image with several segmenters (one per method) -> {method: Segmentation}.

    Segmenters of one input geometry share the patch embedding and blocks 1..L-1 (pacl_core.backbone.Trunk);
    each then runs its own last block, scores and refinement. The results equal calling each segmenter alone.
    groups: a class id per word for the area threshold (Segmenter.finish).
    """
    segmenters = list(segmenters)
    methods = [s.method for s in segmenters]
    if len(set(methods)) != len(methods):
        raise PACLError(f"each method can be segmented once per call, got {', '.join(methods)}")
    if not segmenters:
        return {}
    image = to_rgb_array(image)  # (H, W, 3) uint8
    words, notes = parse_words(words, min(s.max_words for s in segmenters))
    return segment_batch(segmenters, image[None], words, groups, notes)[0]
