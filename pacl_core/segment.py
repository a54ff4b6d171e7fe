"""Open-vocabulary segmentation: an image and some words in, per-word score maps and a label mask out.

`Segmenter(backbone, method)` scores every patch by its cosine to every word's text embedding, upsamples
the patch scores to the image, and takes the per-pixel argmax (with an optional background rule).
`method` is one checked string: "vanilla" (CLIP's own patch projection), "pacl" (a trained e_v head), or a
training-free variant of the last block (see pacl_core.methods). `shifts=m` averages m x m passes of the image
shifted by fractions of a patch (`shifted_scores`): a test-time augmentation that evens out each patch's noise.
`refine` post-processes the scores: "affinity" (a random walk over the patches weighted by their own embeddings,
pacl_core.affinity; per pass, before upsampling) or "pamr" (guided by the image's colours, after upsampling).
`area_threshold=a` is SCLIP's / SC-CLIP's area_thd: a class that is the best word at no more than a share a of the
pixels falls away, and its pixels take the next best word (or background) - `area_keep`.
`segment_many(segmenters, image, words)` runs several methods on one image: those of one input geometry share
the backbone's trunk (patch embedding and blocks 1..L-1) and differ only in their last block and scoring.
"""

from __future__ import annotations

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
from pacl_core.pamr import pamr_rgb
from pacl_core.prompts import get_templates

MODES = ("whole", "slide")
BACKGROUND_RULES = ("score", "entropy", "prob")
REFINERS = ("affinity", "pamr")  # affinity: the patches' own embeddings; PAMR: the image's colours
MAX_GRID = 128  # patches per side in one forward pass (whole mode, or a window): 16384 tokens at most


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


def shifted_scores(patch_logits, images: torch.Tensor, patch: int, shifts: int,
                   logit_scale: float | None = None) -> torch.Tensor:
    """Pixel-level scores (B, K, H, W): the mean over shifts x shifts passes of the upsampled patch scores.

    patch_logits: (B, 3, H, W) -> (B, K, h, w). Each pass sees the image moved by (dy, dx) from shift_offsets
    (mirrored at the border), so every pixel falls into a different patch in each pass; its scores are put back
    in place and averaged. shifts=1 is plain bilinear upsampling of one pass.

    logit_scale=None averages the scores themselves (linear: right for shares of pixels). A number averages the
    passes as an ensemble of classifiers: each pass's word probabilities softmax(logit_scale · s) and its
    log-normaliser are upsampled, put back and averaged, then written back in cosine units,
    s̄ = (mean log-normaliser + log mean probability) / logit_scale. So softmax(logit_scale · s̄) is the mean
    probability, and s̄ is the plain cosine wherever the passes (and neighbouring patches) agree.
    """
    return shifted_scores_many(lambda v: [patch_logits(v)], images, patch, shifts, [logit_scale])[0]


def shifted_scores_many(patch_logits, images: torch.Tensor, patch: int, shifts: int,
                        logit_scales: list) -> list[torch.Tensor]:
    """shifted_scores for several score maps from the same passes: patch_logits (B, 3, H, W) -> a list of
    (B, K_i, h, w), one per entry of logit_scales (each None or a number, as in shifted_scores) -> a list of
    (B, K_i, H, W). Each shifted view goes through patch_logits once, whatever the number of maps."""
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
            for i, (low, scale) in enumerate(zip(patch_logits(view), logit_scales)):  # (B, K, h, w) each
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
    patch_logits: np.ndarray  # (K, h, w) float32 patch-level cosines (after affinity refinement, if any)
    low_logits: np.ndarray  # (K, h', w') the scores before upsampling (the patch grid, or the slide / shifts canvas)
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
        return upsample_scores(torch.from_numpy(self.low_logits), self.image.shape[:2]).numpy()

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
        return upsample_scores(torch.from_numpy(self.low_logits), tuple(size)).numpy()

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


def _round_to(n: float, multiple: int) -> int:
    return max(multiple, int(round(n / multiple)) * multiple)


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, max(length - window, 0) + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


class Segmenter:
    """Segment images with one method on one frozen backbone (shared by every method)."""

    def __init__(self, backbone, method: str = "vanilla", head: VisionEmbedder | str | None = None,
                 image_size: int | None = None, mode: str | None = None, window: int | None = None,
                 stride: int | None = None, background=None, logit_scale: float | None = None,
                 max_words: int = MAX_WORDS, refine: str | None = None, shifts: int = 1,
                 area_threshold: float | None = None, templates=None):
        self.backbone, self.method = backbone, check_method(method)
        layers_needed(method, backbone.depth)  # a method that needs more blocks than the model has fails here
        # settings left unset (None) take the method's official defaults (pacl_core.methods.METHOD_DEFAULTS)
        defaults = method_defaults(method, native_size=backbone.native_size)
        mode = mode or defaults.get("mode", "whole")
        if mode not in MODES:
            raise PACLError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
        if refine not in (None, *REFINERS):
            raise PACLError(f"unknown refine '{refine}'; use one of {', '.join(REFINERS)} (or none)")
        self.head = self._resolve_head(head) if method == "pacl" else None
        p = backbone.patch_size
        if not isinstance(shifts, int) or not 1 <= shifts <= p:
            raise PACLError(f"shifts must be a whole number from 1 to the patch size ({p}), got {shifts}")
        for name, value in (("image_size", image_size), ("window", window), ("stride", stride)):
            check_pixels(name, value)
        if logit_scale is not None and not 0 < logit_scale < float("inf"):
            raise PACLError(f"logit_scale must be a positive number, got {logit_scale}")
        self.shifts = shifts
        self.image_size = _round_to(image_size or defaults.get("image_size") or backbone.image_size, p)
        self.mode, self.refine = mode, refine
        self.window = _round_to(window or defaults.get("window") or backbone.native_size, p)
        self.stride = _round_to(stride or (defaults.get("stride") if window is None else None) or self.window // 2, p)
        name, side = ("window", self.window) if mode == "slide" else ("image_size", self.image_size)  # one pass
        if side // p > MAX_GRID:
            raise PACLError(f"{name} {side} px is {side // p}x{side // p} patches in one pass; at most "
                            f"{MAX_GRID}x{MAX_GRID} ({MAX_GRID * p} px with {p} px patches)"
                            + ("; use slide mode for larger images" if mode == "whole" else ""))
        self.background = parse_background(background)
        self.area_threshold = check_area_threshold(area_threshold)
        self.max_words = max_words
        self.templates = None if templates is None else get_templates(templates)  # None: the backbone's own
        head_scale = (getattr(self.head, "meta", None) or {}).get("logit_scale") if self.head is not None else None
        self.logit_scale = float(logit_scale or defaults.get("logit_scale") or head_scale or backbone.logit_scale)

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

    # ---- the patch level: the same numbers for every method -----------------------------------
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens after ln_post (B, T, D_v) -> this method's patch embeddings (B, T, D) in the joint space."""
        if self.method == "pacl":
            return self.head(tokens.to(self.head.linear.weight.dtype))  # (B, T, D)
        return self.backbone.vanilla_patch_embeddings(tokens)  # (B, T, D)

    @torch.no_grad()
    def patch_embeddings(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images (B, 3, H, W) -> this method's patch embeddings (B, T, D) in the joint space."""
        (emb,), grid = patch_embeddings_many([self], images)  # (B, T, D)
        return emb, grid

    @torch.no_grad()
    def scores_from_embeddings(self, emb: torch.Tensor, grid: tuple[int, int], text_emb: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, T, D) -> cosine of every patch with every word (B, K, h, w), after the
        affinity refinement when refine="affinity"."""
        s = patch_similarity(emb.float(), text_emb.to(emb.device).float())  # (B, K, T)
        if self.refine == "affinity":
            s = affinity_refine(emb, s)  # (B, K, T)
        return s.view(s.shape[0], s.shape[1], *grid)  # (B, K, h, w)

    def patch_logits(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Cosine of every patch with every word: (B, 3, H, W), (K, D) -> (B, K, h, w)."""
        return patch_logits_many([self], images, [text_emb])[0]  # (B, K, h, w)

    def pixel_scores(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Cosines at the input's pixels, (B, 3, H, W), (K, D) -> (B, K, H, W); with shifts > 1 the passes are
        averaged as word probabilities at the segmenter's logit scale (shifted_scores)."""
        return pixel_scores_many([self], images, [text_emb])[0]  # (B, K, H, W)

    # ---- the image level ----------------------------------------------------------------------
    @property
    def geometry(self) -> tuple:
        """What the backbone sees: segmenters with equal geometry on one backbone share every trunk pass."""
        if self.mode == "whole":
            return (id(self.backbone), "whole", self.image_size, self.shifts)
        return (id(self.backbone), "slide", self.image_size, self.window, self.stride, self.shifts)

    def text(self, words: list[str]) -> torch.Tensor:
        """(K, D) prompt-ensembled embeddings of the words with this segmenter's templates (cached)."""
        return self.backbone.text_embeddings(words, self.templates)

    def finish(self, image: np.ndarray, words: list[str], low: torch.Tensor, background="default",
               notes=(), groups=None) -> Segmentation:
        """The low-resolution scores (K, h', w') of one image -> its Segmentation (refinement, mask, patch level).
        groups: a class id per word for the area threshold (see area_keep); by default each word is its own class."""
        background = self.background if background == "default" else parse_background(background)
        H, W = image.shape[:2]
        if groups is not None and len(groups) != len(words):
            raise PACLError(f"{len(groups)} class ids for {len(words)} words")
        refined = None
        if self.refine == "pamr":
            full = self._pamr(image, upsample_scores(low, (H, W)))  # (K, H, W)
            keep = None
            if self.area_threshold is not None:
                keep = area_keep(best_word_counts([full], len(words)), self.area_threshold, groups)  # (K,)
            mask = label_mask(full, self.logit_scale, background, keep)
            refined = full.cpu().numpy()
        else:
            mask = mask_from_low(low, (H, W), self.logit_scale, background, self.area_threshold, groups)  # (H, W)
        # patch level: the grid itself (whole), or the pixel-level scores (slide, shifts) pooled back to patches
        pixel_level = self.mode == "slide" or self.shifts > 1
        patch = F.avg_pool2d(low[None], self.backbone.patch_size)[0] if pixel_level else low
        return Segmentation(words=list(words), image=image, mask=mask.to(torch.int16).cpu().numpy(),
                            patch_logits=patch.float().cpu().numpy(), low_logits=low.float().cpu().numpy(),
                            method=self.method, logit_scale=self.logit_scale, background=background,
                            notes=list(notes), refined=refined)

    def _pamr(self, image: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        """PAMR-refined scores (K, H, W), guided by the image's colours (as SCLIP / NACLIP do)."""
        return pamr_rgb(image[None], scores[None])[0]  # (K, H, W)

    def __call__(self, image, words, background="default", groups=None) -> Segmentation:
        """Segment one image (PIL, numpy or path; any size) with words ('dog, sky' or a list). groups: a class
        id per word for the area threshold (see area_keep); by default each word is its own class."""
        return segment_many([self], image, words, background, groups)[self.method]


# ---- several methods, one trunk per input geometry ---------------------------------------------------------
@torch.no_grad()
def patch_logits_many(segmenters: list[Segmenter], images: torch.Tensor, texts: list) -> list[torch.Tensor]:
    """Cosines of every patch with every word for segmenters of one backbone, (B, 3, H, W) -> [(B, K, h, w)].

    Blocks 1..L-1 run once for all of them (keeping the union of the blocks their methods read); each method
    then runs its own last block, and methods sharing a last block (vanilla, pacl) share that too.
    """
    embs, grid = patch_embeddings_many(segmenters, images)  # (B, T, D) each
    return [s.scores_from_embeddings(e, grid, t) for s, e, t in zip(segmenters, embs, texts)]  # (B, K, h, w) each


@torch.no_grad()
def patch_embeddings_many(segmenters: list[Segmenter], images: torch.Tensor) -> tuple[list[torch.Tensor], tuple]:
    """Segmenter.patch_embeddings for segmenters of one backbone, (B, 3, H, W) -> ([(B, T, D)], grid), with
    blocks 1..L-1 run once for all of them (keeping the union of the blocks their methods read)."""
    backbone = segmenters[0].backbone
    keep = sorted({i for s in segmenters for i in layers_needed(s.method, backbone.depth)})
    trunk = backbone.trunk(images, keep)  # x: (B, 1 + T + R, W)
    tokens = backbone.finish_many(trunk, [s.method for s in segmenters])  # method -> (B, 1 + T, D_v)
    return [s.embed_tokens(tokens[s.method][:, 1:]) for s in segmenters], trunk.grid  # (B, T, D) each


@torch.no_grad()
def pixel_scores_many(segmenters: list[Segmenter], images: torch.Tensor, texts: list) -> list[torch.Tensor]:
    """Segmenter.pixel_scores for segmenters of one geometry, each shifted view through the trunk once."""
    scales = [s.logit_scale if s.shifts > 1 else None for s in segmenters]  # one pass: plain upsampled cosines
    return shifted_scores_many(lambda v: patch_logits_many(segmenters, v, texts), images,
                               segmenters[0].backbone.patch_size, segmenters[0].shifts, scales)


def _logits_whole(segmenters: list[Segmenter], image: np.ndarray, texts: list) -> list[torch.Tensor]:
    """Per segmenter the patch grid (K, h, w), or with shifts the pixel-level average (K, S, S)."""
    first = segmenters[0]
    S = first.image_size
    x = first.backbone.preprocess(image, (S, S))  # (1, 3, S, S)
    if first.shifts > 1:
        return [lg[0] for lg in pixel_scores_many(segmenters, x, texts)]  # (K, S, S) each
    return [lg[0] for lg in patch_logits_many(segmenters, x, texts)]  # (K, h, w) each


def _logits_slide(segmenters: list[Segmenter], image: np.ndarray, texts: list) -> list[torch.Tensor]:
    """Per segmenter the average of per-window logits over a grid of windows covering the resized image
    -> (K, H', W'); every window goes through the trunk once for all segmenters."""
    first = segmenters[0]
    H, W = image.shape[:2]
    p, win, stride = first.backbone.patch_size, first.window, first.stride
    scale = first.image_size / min(H, W)
    Hs, Ws = max(win, _round_to(H * scale, p)), max(win, _round_to(W * scale, p))
    x = first.backbone.preprocess(image, (Hs, Ws))  # (1, 3, Hs, Ws)
    totals = [torch.zeros(t.shape[0], Hs, Ws, device=x.device) for t in texts]  # (K, Hs, Ws) each
    count = torch.zeros(1, Hs, Ws, device=x.device)
    boxes = [(y, x0) for y in _window_starts(Hs, win, stride) for x0 in _window_starts(Ws, win, stride)]
    per_batch = max(1, 16 // first.shifts ** 2)  # windows per backbone batch; each holds (K, win, win) scores
    for i in range(0, len(boxes), per_batch):
        batch = boxes[i:i + per_batch]
        crops = torch.cat([x[:, :, y:y + win, x0:x0 + win] for y, x0 in batch])  # (b, 3, win, win)
        for total, logits in zip(totals, pixel_scores_many(segmenters, crops, texts)):  # (b, K, win, win)
            for (y, x0), lg in zip(batch, logits):
                total[:, y:y + win, x0:x0 + win] += lg
        for y, x0 in batch:
            count[:, y:y + win, x0:x0 + win] += 1
    return [total / count for total in totals]  # (K, Hs, Ws) each


def group_by_geometry(segmenters) -> list[list[Segmenter]]:
    """Segmenters grouped by input geometry (backbone, mode, size, window, stride, shifts), first-seen order:
    each group shares one trunk pass per window and shifted view."""
    groups: dict[tuple, list] = {}
    for s in segmenters:
        groups.setdefault(s.geometry, []).append(s)
    return list(groups.values())


def segment_many(segmenters, image, words, background="default", groups=None) -> dict[str, Segmentation]:
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
    out = {}
    for group in group_by_geometry(segmenters):
        texts = [s.text(words) for s in group]  # (K, D) each
        lows = (_logits_whole if group[0].mode == "whole" else _logits_slide)(group, image, texts)
        for s, low in zip(group, lows):
            out[s.method] = s.finish(image, words, low, background, notes, groups)
    return {m: out[m] for m in methods}
