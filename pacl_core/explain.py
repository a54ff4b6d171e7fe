"""The teaching view's numbers: how a patch embedder "sees" each word of a vocabulary in one image.

`explain(segmenter, image, words)` runs the image once through the segmenter's patch embedder (PACL's e_v,
or CLIP's own projection for vanilla) and, with the equations in pacl_core.pacl, returns per word:
    s(x,y)   the cosine of every patch with the word, on the (h, w) patch grid     patch_similarity
    a(x,y)   the softmax attention over patches, on the same grid, sums to 1       patch_attention
    φ̂(x,y)   the cosine of the attention-pooled patches with the word             compatibility
and, for contrast, CLIP's own image-level score: the cosine of the CLS image embedding with the word.
`explain_both(pacl_segmenter, vanilla_segmenter, image, words)` gives both sides at the same τ (`SideBySide`): PACL's
patches next to vanilla CLIP's, so "patch-level vs CLS-level" is one look.
The demo draws these grids (demo/drawing.py `draw_grid`).

Point at a patch (the paper's Sections 3 and 4, per place): `patch_report(backbone, image, words, point, methods)`
says, for the patch under a point, its cosine with every word under each method beside the whole image's (CLS)
cosine, each method's word probabilities, its semantic coherence with every other patch, and PACL's share of
each word's attention. `patch_pass` runs the one backbone pass a report reads (kept by the demo, so a click costs
no pass) and `report_from_pass` answers a point from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pacl_core.errors import PACLError
from pacl_core.inputs import parse_words, to_rgb_array
from pacl_core.pacl import compatibility, patch_attention, patch_similarity
from pacl_core.segment import Segmenter, check_input_shape, pass_tokens, run_pass


@dataclass
class Explanation:
    """For one image and K words: patch-level maps on the (h, w) grid and image-level scores."""

    words: list[str]
    image: np.ndarray  # (H, W, 3) uint8, the image as explained
    similarity: np.ndarray  # (K, h, w) s(x,y): cosine of each patch with each word
    attention: np.ndarray  # (K, h, w) a(x,y): softmax over the h*w patches of s / tau
    compatibility: np.ndarray  # (K,) φ̂(x,y) = cos(Σ_i a_i e_v(x)_i, e_t(y))
    cls_cosine: np.ndarray  # (K,) CLIP's cos(CLS image embedding, e_t(y)) at the native input size
    tau: float
    method: str
    image_size: int  # the side the image was resized to for the patch maps

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.similarity.shape[1:])

    def index(self, word: str) -> int:
        """Position of `word` (case-insensitive) in the vocabulary."""
        keys = [w.casefold() for w in self.words]
        if word is None or word.casefold() not in keys:
            raise PACLError(f"'{word}' is not in the vocabulary ({', '.join(self.words)})")
        return keys.index(word.casefold())

    def effective_patches(self) -> np.ndarray:
        """(K,) exp(entropy of a(x,y)): how many patches the attention is effectively spread over."""
        a = np.clip(self.attention.reshape(len(self.words), -1).astype(np.float64), 1e-12, 1.0)
        return np.exp(-(a * np.log(a)).sum(axis=1))

    def rows(self) -> list[dict]:
        """Per word: φ̂, CLS cosine, the best and mean patch cosine, and the effective number of patches."""
        eff = self.effective_patches()
        s = self.similarity.reshape(len(self.words), -1)
        return [{"word": w, "compatibility": float(self.compatibility[k]), "cls_cosine": float(self.cls_cosine[k]),
                 "max_patch_cosine": float(s[k].max()), "mean_patch_cosine": float(s[k].mean()),
                 "effective_patches": float(eff[k])} for k, w in enumerate(self.words)]


def head_tau(segmenter, default: float = 1.0) -> float:
    """The attention temperature a PACL head was trained with (its metadata), else the segmenter's, else 1."""
    meta = getattr(segmenter.head, "meta", None) or {}
    return float(meta.get("tau") or getattr(segmenter, "tau", None) or default)


@torch.no_grad()
def explain(segmenter, image, words, tau: float | None = None) -> Explanation:
    """One image, a vocabulary ('cat, wall' or a list) -> every word's s, a, φ̂ and CLS cosine."""
    image = to_rgb_array(image)  # (H, W, 3) uint8
    words, _ = parse_words(words, segmenter.max_words)
    tau = head_tau(segmenter) if tau is None else float(tau)
    if not tau > 0:
        raise PACLError(f"the attention temperature tau must be positive, got {tau}")
    bb = segmenter.backbone
    size = segmenter.image_size
    text = bb.text_embeddings(words).float()  # (K, D): e_t(f_t(y))
    whole = segmenter.reshape(mode="whole", shifts=1)  # one plain pass over the whole image
    result = run_pass([whole], image[None], [text], embeddings=True)  # the segmenter's whole-image pass
    emb, (h, w) = result.embeddings[0].float(), result.grid  # (1, T, D): e_v(f_v(x))_i for each patch i
    text = text.to(emb.device)
    s = patch_similarity(emb, text)[0]  # (K, T)
    a = patch_attention(emb, text, tau)[0]  # (K, T)
    phi = compatibility(emb, text, tau)[0]  # (K,)
    native = bb.native_size
    cls = bb.image_embedding(bb.preprocess(image, (native, native))).float()  # (1, D), CLIP's image embedding
    cls_cos = patch_similarity(cls[:, None], text)[0, :, 0]  # (K,): the CLS embedding as the only "patch"
    k = len(words)
    return Explanation(words=words, image=image, similarity=s.view(k, h, w).cpu().numpy(),
                       attention=a.view(k, h, w).cpu().numpy(), compatibility=phi.cpu().numpy(),
                       cls_cosine=cls_cos.cpu().numpy(), tau=tau, method=segmenter.method, image_size=size)


@dataclass
class SideBySide:
    """PACL's and vanilla CLIP's patches explained for the same image and words, at the same τ."""

    pacl: Explanation
    vanilla: Explanation

    def rows(self) -> list[dict]:
        """Per word: both φ̂, the CLS cosine (one CLIP, so one number), both best patch cosines and spreads."""
        return [{"word": p["word"], "pacl_compatibility": p["compatibility"],
                 "vanilla_compatibility": v["compatibility"], "cls_cosine": p["cls_cosine"],
                 "pacl_max_patch_cosine": p["max_patch_cosine"], "vanilla_max_patch_cosine": v["max_patch_cosine"],
                 "pacl_effective_patches": p["effective_patches"],
                 "vanilla_effective_patches": v["effective_patches"]}
                for p, v in zip(self.pacl.rows(), self.vanilla.rows())]


def explain_both(pacl_segmenter, vanilla_segmenter, image, words, tau: float | None = None) -> SideBySide:
    """Both sides of the teaching view: `explain` with PACL's e_v and with CLIP's own patch projection, at the
    same τ (the PACL head's unless given), on the same backbone and patch grid."""
    if pacl_segmenter.backbone is not vanilla_segmenter.backbone:
        raise PACLError("both sides must explain the same CLIP: the segmenters use different backbones")
    if pacl_segmenter.image_size != vanilla_segmenter.image_size:
        raise PACLError(f"both sides must see the same patch grid: {pacl_segmenter.image_size} px vs "
                        f"{vanilla_segmenter.image_size} px")
    tau = head_tau(pacl_segmenter) if tau is None else float(tau)
    return SideBySide(explain(pacl_segmenter, image, words, tau), explain(vanilla_segmenter, image, words, tau))


FROZEN = "tokens"  # the coherence key of the frozen vision tokens (after ln_post) that every method starts from


@dataclass
class PatchPass:
    """One image's backbone pass at one geometry, kept so that pointing at its patches costs no further pass."""

    image_shape: tuple[int, int]  # (H, W) of the image as given: a point is in these pixels
    resized: tuple[int, int]  # (H', W') the size the backbone saw
    grid: tuple[int, int]  # (h, w) patches, as the pass made them
    segmenters: dict[str, Segmenter]  # method -> its segmenter at this geometry (text templates, logit scale)
    embeddings: dict[str, np.ndarray]  # method -> (T, D) float32 its patch embeddings, L2-normalised
    tokens: np.ndarray  # (T, D_v) float32 the frozen vision tokens after ln_post, L2-normalised
    cls: np.ndarray  # (D,) float32 CLIP's own image embedding, L2-normalised
    tau: float | None = None  # the PACL head's attention temperature, when PACL is among the methods
    seconds: float = 0.0  # how long the pass took
    notes: list[str] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        return list(self.embeddings)

    @property
    def nbytes(self) -> int:
        """Memory held by the pass's tensors."""
        return sum(a.nbytes for a in [*self.embeddings.values(), self.tokens, self.cls])

    def patch_at(self, point) -> tuple[int, int]:
        """(x, y) in the image's pixels -> (row, col) of the patch the backbone saw there; PACLError outside."""
        x, y = _check_point(point, self.image_shape)
        H, W = self.image_shape
        (Hs, Ws), (h, w) = self.resized, self.grid
        row = min(int(y * Hs / H) * h // Hs, h - 1)  # per axis: the resized pixel, then its patch
        col = min(int(x * Ws / W) * w // Ws, w - 1)
        return row, col


@dataclass
class PatchReport:
    """What one patch matches, beside what the whole image matches. Plain data (numpy), one entry per word."""

    patch: tuple[int, int]  # (row, col) on the patch grid
    point: tuple[float, float]  # (x, y) in the image's pixels
    grid: tuple[int, int]  # (h, w)
    words: list[str]
    cls_cosines: np.ndarray  # (K,) cos(CLIP's CLS image embedding, word)
    cosines: dict[str, np.ndarray]  # method -> (K,) cos(this patch's embedding, word), the segmenter's patch score
    probs: dict[str, np.ndarray]  # method -> (K,) softmax(logit_scale · cosines), as the segmenter uses it
    coherence: dict[str, np.ndarray]  # "tokens" or method -> (h, w) cos(this patch's token, every patch's token)
    attention_share: np.ndarray | None  # (K,) a(x, word)[this patch] with the PACL head's τ; None without PACL
    logit_scales: dict[str, float]
    tau: float | None

    def best_words(self) -> dict[str, str]:
        """The word each method gives this patch (its highest probability)."""
        return {m: self.words[int(np.argmax(p))] for m, p in self.probs.items()}

    def to_dict(self) -> dict:
        """JSON-ready: lists and floats only."""
        def listed(d):
            return {k: np.asarray(v).round(6).tolist() for k, v in d.items()}

        return {"patch": list(self.patch), "point": list(self.point), "grid": list(self.grid), "words": self.words,
                "cls_cosines": self.cls_cosines.round(6).tolist(), "cosines": listed(self.cosines),
                "probs": listed(self.probs), "best_words": self.best_words(), "coherence": listed(self.coherence),
                "attention_share": None if self.attention_share is None else self.attention_share.round(6).tolist(),
                "logit_scales": self.logit_scales, "tau": self.tau}


def _check_point(point, shape: tuple[int, int] | None = None) -> tuple[float, float]:
    """(x, y) of two finite numbers, on an image of `shape` (H, W) if given, or a one-line PACLError."""
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError):
        raise PACLError(f"a point is two numbers (x, y) in the image's pixels, got {point!r}") from None
    if not (np.isfinite(x) and np.isfinite(y)):
        raise PACLError(f"a point is two finite numbers (x, y) in the image's pixels, got ({x}, {y})")
    if shape is not None and not (0 <= x < shape[1] and 0 <= y < shape[0]):
        raise PACLError(f"the point ({x:g}, {y:g}) is outside the {shape[1]}×{shape[0]} image; pick a point on it")
    return x, y


def _original_size(image, rgb: np.ndarray) -> tuple[int, int]:
    """(H, W) of the image as the caller gave it (to_rgb_array may have downscaled a very large one)."""
    if isinstance(image, Image.Image):
        return image.size[1], image.size[0]
    if isinstance(image, np.ndarray):
        return image.shape[0], image.shape[1]
    with Image.open(image) as im:  # a path: to_rgb_array has read it already, so the header is sound
        return im.size[1], im.size[0]


def patch_segmenters(backbone, methods, head=None, image_size: int | None = None) -> dict[str, Segmenter]:
    """One whole-image segmenter per method at one geometry (the chosen size, else the backbone's input size),
    without shifts or refinement: the patch scores a click reads."""
    size = image_size or backbone.image_size
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise PACLError("no method chosen: pick at least one (e.g. vanilla)")
    return {m: Segmenter(backbone, m, head=head if m == "pacl" else None, image_size=size, mode="whole")
            for m in methods}


@torch.no_grad()
def _method_patch_embeddings(backbone, segmenters: dict[str, Segmenter], image: np.ndarray):
    """One trunk pass of the whole image at the segmenters' geometry -> ({method: (T, D)}, frozen tokens (T, D_v),
    CLS embedding (D,), grid (h, w), resized (H', W')).

    The photo is resized as every segmenter's whole-image pass resizes it (short side, aspect kept); the methods'
    last blocks and vanilla CLIP's (the frozen ln_post tokens) read one trunk (segment.pass_tokens). The CLS
    embedding is CLIP's own at its native size, read from this pass when the pass is at that size, else from one
    native-size pass (as `explain` does)."""
    first = next(iter(segmenters.values()))
    x = backbone.preprocess(image, check_input_shape(backbone, image.shape, first.geometry))  # (1, 3, H', W')
    tokens, grid = pass_tokens(list(segmenters.values()), x, extra=("vanilla",))  # method -> (1, 1 + T, D_v)
    emb = {m: s.embed_tokens(tokens[m][:, 1:])[0].float() for m, s in segmenters.items()}  # (T, D) each
    frozen = tokens["vanilla"][0, 1:].float()  # (T, D_v)
    native = backbone.native_size
    if tuple(x.shape[-2:]) == (native, native):
        cls = F.normalize(tokens["vanilla"][:, 0] @ backbone.model.visual.proj, dim=-1)  # (1, D)
    else:
        cls = backbone.image_embedding(backbone.preprocess(image, (native, native)))  # (1, D)
    return emb, frozen, cls[0].float(), tuple(grid), tuple(x.shape[-2:])


def patch_pass(backbone, image, methods=("vanilla",), head=None, image_size: int | None = None) -> PatchPass:
    """Run the one backbone pass that `report_from_pass` reads, for an image (array, PIL or path) and methods."""
    rgb = to_rgb_array(image)  # (H, W, 3) uint8
    segmenters = patch_segmenters(backbone, methods, head, image_size)
    start = time.perf_counter()
    emb, frozen, cls, grid, resized = _method_patch_embeddings(backbone, segmenters, rgb)
    tau = head_tau(segmenters["pacl"]) if "pacl" in segmenters else None
    return PatchPass(image_shape=_original_size(image, rgb), resized=resized, grid=grid, segmenters=segmenters,
                     embeddings={m: _unit(e) for m, e in emb.items()}, tokens=_unit(frozen), cls=_unit(cls),
                     tau=tau, seconds=time.perf_counter() - start)


def _unit(x: torch.Tensor) -> np.ndarray:
    """A tensor (..., D) -> float32 numpy, L2-normalised along the last axis."""
    return F.normalize(x.detach().float(), dim=-1).cpu().numpy()


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def report_from_pass(pp: PatchPass, words, point) -> PatchReport:
    """What the patch under `point` matches, read from a kept pass: no backbone pass, only text embeddings (cached
    by the backbone) and a few dot products.

    The click's arithmetic is a handful of matrix-vector products, done in numpy: torch's threaded kernels took
    tens of milliseconds for them on a busy 2-core machine. They are the equations of pacl_core.pacl on unit
    vectors: s = cos(patch, word) (patch_similarity), a = softmax over patches of s / τ (patch_attention)."""
    first = next(iter(pp.segmenters.values()))
    words, _ = parse_words(words, first.max_words)
    row, col = pp.patch_at(point)
    h, w = pp.grid
    t = row * w + col  # this patch's index among the T tokens
    cosines, probs, scales, coherence = {}, {}, {}, {FROZEN: (pp.tokens @ pp.tokens[t]).reshape(h, w)}  # (h, w)
    share = None
    for m, seg in pp.segmenters.items():
        emb, text = pp.embeddings[m], _unit(seg.text(words))  # (T, D), (K, D)
        cosines[m], scales[m] = text @ emb[t], seg.logit_scale  # (K,)
        probs[m] = _softmax(seg.logit_scale * cosines[m])  # (K,), as the segmenter's scores_to_probs
        coherence[m] = (emb @ emb[t]).reshape(h, w)  # (h, w)
        if m == "pacl":
            share = _softmax((text @ emb.T) / pp.tau, axis=1)[:, t]  # (K, T) a(x, y) -> (K,) at this patch
    cls_cos = _unit(first.backbone.text_embeddings(words)) @ pp.cls  # (K,): CLIP's own text embeddings
    return PatchReport(patch=(row, col), point=_check_point(point), grid=(h, w), words=words, cls_cosines=cls_cos,
                       cosines=cosines, probs=probs, coherence=coherence, attention_share=share,
                       logit_scales=scales, tau=pp.tau)


def word_maps(pp: PatchPass, words, word: str) -> dict[str, np.ndarray]:
    """One word's cosine with every patch, per method of a kept pass: {method: (h, w)} (no backbone pass)."""
    words, _ = parse_words(words, next(iter(pp.segmenters.values())).max_words)
    keys = [w.casefold() for w in words]
    if word is None or str(word).casefold() not in keys:
        raise PACLError(f"'{word}' is not in the vocabulary ({', '.join(words)})")
    k = keys.index(str(word).casefold())
    return {m: (pp.embeddings[m] @ _unit(seg.text(words)[k])).reshape(*pp.grid)  # (h, w)
            for m, seg in pp.segmenters.items()}


def patch_report(backbone, image, words, point, methods=("vanilla",), head=None,
                 image_size: int | None = None) -> PatchReport:
    """What the patch under `point` = (x, y) (in the image's pixels) matches under each method, beside what the
    whole image (CLIP's CLS embedding) matches; its coherence with every patch; PACL's attention share.

    One backbone pass of the whole image at `image_size` (default the backbone's input size). A point outside
    the image, an empty vocabulary or PACL without a head is a one-line PACLError, raised before the pass."""
    rgb = to_rgb_array(image)  # (H, W, 3) uint8
    H, W = _original_size(image, rgb)
    x, y = _check_point(point, (H, W))  # before the pass
    parse_words(words)
    pp = patch_pass(backbone, rgb, methods, head, image_size)
    pp.image_shape = (H, W)
    return report_from_pass(pp, words, (x, y))
