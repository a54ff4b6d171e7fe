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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pacl_core.errors import PACLError
from pacl_core.inputs import parse_words, to_rgb_array
from pacl_core.pacl import compatibility, patch_attention, patch_similarity


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
    x = bb.preprocess(image, (size, size))  # (1, 3, S, S), as the segmenter's whole-image mode sees it
    emb, (h, w) = segmenter.patch_embeddings(x)  # (1, T, D): e_v(f_v(x))_i for each patch i
    emb = emb.float()
    text = bb.text_embeddings(words).to(emb.device).float()  # (K, D): e_t(f_t(y))
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
