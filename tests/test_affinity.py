"""Patch-affinity refinement: the random walk against a loop-by-loop reference, and what it does to scores."""

import numpy as np
import pytest
import torch

from pacl_core.affinity import affinity_refine, affinity_transition
from pacl_core.errors import PACLError
from pacl_core.segment import Segmenter, patch_scores, resized_shape
from tests.helpers import random_image


def reference_refine(emb, scores, temperature, steps):
    """The same walk, one patch and one word at a time, in float64 numpy."""
    e = emb / np.linalg.norm(emb, axis=-1, keepdims=True)  # (T, D)
    T = e.shape[0]
    P = np.zeros((T, T))
    for i in range(T):
        logits = np.array([e[i] @ e[j] / temperature for j in range(T)])
        P[i] = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    out = scores.copy()  # (K, T)
    for _ in range(steps):
        out = np.array([[sum(P[i, j] * out[k, j] for j in range(T)) for i in range(T)] for k in range(out.shape[0])])
    return out


@pytest.mark.parametrize("temperature, steps", [(0.05, 2), (0.5, 1), (0.1, 3), (0.2, 0)])
def test_refine_matches_a_loop_reference(rng, temperature, steps):
    emb = rng.standard_normal((2, 12, 5))
    scores = rng.uniform(-1, 1, (2, 3, 12))
    got = affinity_refine(torch.from_numpy(emb), torch.from_numpy(scores), temperature, steps)
    for b in range(2):
        np.testing.assert_allclose(got[b].numpy(), reference_refine(emb[b], scores[b], temperature, steps),
                                   rtol=1e-4, atol=1e-5)


def test_transition_is_a_row_stochastic_softmax(rng):
    P = affinity_transition(torch.from_numpy(rng.standard_normal((3, 7, 4))), 0.1)
    assert P.shape == (3, 7, 7) and bool((P > 0).all())
    torch.testing.assert_close(P.sum(-1), torch.ones(3, 7))
    assert bool((P.argmax(-1) == torch.arange(7)).all()), "each patch is most similar to itself"


def test_a_wrong_patch_is_outvoted_by_its_region():
    """Two regions with distinct embeddings; one patch of region A scores region B's word. After the walk it
    agrees with its region, and the regions keep their own words (no bleeding across embeddings)."""
    emb = torch.zeros(1, 8, 2)
    emb[0, :4, 0], emb[0, 4:, 1] = 1.0, 1.0  # patches 0-3 are A, 4-7 are B
    scores = torch.zeros(1, 2, 8)
    scores[0, 0, :4], scores[0, 1, 4:] = 0.3, 0.3
    scores[0, :, 1] = torch.tensor([0.1, 0.4])  # patch 1 (an A) prefers B's word
    assert scores[0].argmax(0).tolist() == [0, 1, 0, 0, 1, 1, 1, 1]
    out = affinity_refine(emb, scores)
    assert out[0].argmax(0).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # a constant map is a fixed point of the walk
    flat = torch.full((1, 2, 8), 0.7)
    torch.testing.assert_close(affinity_refine(emb, flat), flat)


def test_shapes_are_checked():
    with pytest.raises(AssertionError, match="scores"):
        affinity_refine(torch.zeros(1, 4, 3), torch.zeros(1, 2, 5))
    with pytest.raises(AssertionError, match="temperature"):
        affinity_transition(torch.zeros(1, 4, 3), 0.0)


def test_segmenter_affinity_refine(tiny, rng):
    """refine="affinity" applies the walk to each pass's patch scores, with the method's own embeddings."""
    img = random_image(rng, 40, 52)
    words = ["dog", "grass", "sky"]
    plain = Segmenter(tiny, image_size=48)
    refined = Segmenter(tiny, image_size=48, refine="affinity")
    seg = refined(img, words)
    x = tiny.preprocess(img, resized_shape(img.shape, 48))
    text = tiny.text_embeddings(words)
    emb, (h, w) = plain.patch_embeddings(x)
    raw = patch_scores([plain], x, [text])[0][0]  # (1, 3, h, w)
    expected = affinity_refine(emb, raw.flatten(2)).view(1, 3, h, w)[0]  # by hand
    torch.testing.assert_close(torch.from_numpy(seg.patch_scores), expected)
    assert np.array_equal(seg.mask, seg.scores.argmax(0)) and seg.mask.shape == (40, 52)
    assert not np.allclose(seg.patch_scores, plain(img, words).patch_scores)
    both = Segmenter(tiny, image_size=48, refine="affinity", shifts=2, mode="slide", window=32)(img, words)
    assert both.mask.shape == (40, 52)
    with pytest.raises(PACLError, match="affinity"):
        Segmenter(tiny, refine="crf")
