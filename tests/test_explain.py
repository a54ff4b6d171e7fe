"""The teaching view's numbers (pacl_core.explain) against independent computations from the backbone itself."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pacl_core.errors import PACLError
from pacl_core.explain import explain, head_tau
from pacl_core.pacl import VisionEmbedder
from pacl_core.segment import Segmenter, patch_scores, resized_shape

WORDS = ["red circle", "blue square", "green grass"]


@pytest.fixture(scope="module")
def pacl_segmenter(tiny):
    torch.manual_seed(3)
    head = VisionEmbedder(tiny.width, tiny.embed_dim)
    head.meta = {"tau": 0.05}
    return Segmenter(tiny, "pacl", head=head, image_size=64)


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(1)
    img = np.zeros((48, 80, 3), np.uint8)
    img[:, :40] = (220, 30, 30)
    img[:, 40:] = (30, 30, 220)
    return np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ex(pacl_segmenter, picture):
    return explain(pacl_segmenter, picture, WORDS)


def _embeddings(segmenter, image):
    x = segmenter.backbone.preprocess(image, resized_shape(image.shape, segmenter.image_size))  # aspect kept
    emb, grid = segmenter.patch_embeddings(x)
    return emb[0].double().numpy(), grid


def test_shapes_and_grid(ex, pacl_segmenter, picture):
    h, w = (side // pacl_segmenter.backbone.patch_size for side in resized_shape(picture.shape, 64))
    assert ex.words == WORDS and ex.grid == (h, w) == (8, 13)  # the 64 px short side, the aspect ratio kept
    assert ex.similarity.shape == ex.attention.shape == (3, h, w)
    assert ex.compatibility.shape == ex.cls_cosine.shape == (3,)
    assert ex.image.shape == picture.shape and ex.method == "pacl"


def test_similarity_is_the_cosine_of_each_patch_embedding(ex, pacl_segmenter, picture):
    emb, _ = _embeddings(pacl_segmenter, picture)  # (T, D)
    text = pacl_segmenter.backbone.text_embeddings(WORDS).double().numpy()  # (K, D)
    cos = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (text / np.linalg.norm(text, axis=1, keepdims=True)).T
    np.testing.assert_allclose(ex.similarity.reshape(3, -1), cos.T, atol=1e-5)


def test_attention_is_a_softmax_over_patches_at_the_heads_tau(ex, pacl_segmenter):
    assert ex.tau == head_tau(pacl_segmenter) == 0.05
    s = ex.similarity.reshape(3, -1).astype(np.float64) / ex.tau
    expect = np.exp(s - s.max(axis=1, keepdims=True))
    expect /= expect.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ex.attention.reshape(3, -1), expect, atol=1e-5)
    np.testing.assert_allclose(ex.attention.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_compatibility_is_the_cosine_of_the_attended_embedding(ex, pacl_segmenter, picture):
    emb, _ = _embeddings(pacl_segmenter, picture)  # (T, D)
    text = pacl_segmenter.backbone.text_embeddings(WORDS).double().numpy()
    for k in range(3):
        v_hat = ex.attention[k].reshape(-1).astype(np.float64) @ emb  # Σ_i a_i e_i
        cos = v_hat @ text[k] / np.linalg.norm(v_hat) / np.linalg.norm(text[k])
        assert ex.compatibility[k] == pytest.approx(cos, abs=1e-5)


def test_cls_cosine_is_clips_own_image_text_score(ex, tiny, picture):
    x = tiny.preprocess(picture, (tiny.native_size, tiny.native_size))
    with torch.no_grad():
        image_emb = F.normalize(tiny.model.encode_image(x), dim=-1)[0]
    text = tiny.text_embeddings(WORDS)
    np.testing.assert_allclose(ex.cls_cosine, (text @ image_emb).numpy(), atol=1e-5)


def test_lower_tau_concentrates_attention(pacl_segmenter, picture):
    wide = explain(pacl_segmenter, picture, WORDS, tau=1.0).effective_patches()
    sharp = explain(pacl_segmenter, picture, WORDS, tau=0.01).effective_patches()
    assert np.all(sharp < wide) and np.all(wide <= 8 * 13 + 1e-6) and np.all(sharp >= 1 - 1e-6)


def test_vanilla_segmenter_explains_clips_own_patches(tiny, picture):
    seg = Segmenter(tiny, "vanilla", image_size=32)
    ex = explain(seg, picture, "red circle, blue square")
    x = tiny.preprocess(picture, resized_shape(picture.shape, 32))
    logits = patch_scores([seg], x, [tiny.text_embeddings(ex.words)])[0][0][0].numpy()
    np.testing.assert_allclose(ex.similarity, logits, atol=1e-5)
    assert ex.method == "vanilla" and ex.tau == 1.0


def test_rows_index_and_errors(ex, pacl_segmenter, picture):
    rows = ex.rows()
    assert [r["word"] for r in rows] == WORDS
    assert rows[1]["compatibility"] == pytest.approx(float(ex.compatibility[1]))
    assert rows[2]["max_patch_cosine"] == pytest.approx(float(ex.similarity[2].max()))
    assert ex.index("BLUE square") == 1
    with pytest.raises(PACLError, match="not in the vocabulary"):
        ex.index("dog")
    with pytest.raises(PACLError, match="tau must be positive"):
        explain(pacl_segmenter, picture, WORDS, tau=0.0)
    with pytest.raises(PACLError, match="no words"):
        explain(pacl_segmenter, picture, " , ")


def test_both_sides_are_each_methods_own_explanation_at_the_heads_tau(pacl_segmenter, tiny, picture):
    """Reference: explain() run on each side alone, at the PACL head's τ."""
    from pacl_core.explain import explain_both

    vanilla = Segmenter(tiny, "vanilla", image_size=64)
    both = explain_both(pacl_segmenter, vanilla, picture, WORDS)
    alone_p, alone_v = explain(pacl_segmenter, picture, WORDS), explain(vanilla, picture, WORDS, tau=0.05)
    assert both.pacl.tau == both.vanilla.tau == 0.05 and both.vanilla.method == "vanilla"
    for got, want in ((both.pacl, alone_p), (both.vanilla, alone_v)):
        np.testing.assert_allclose(got.similarity, want.similarity, atol=1e-6)
        np.testing.assert_allclose(got.attention, want.attention, atol=1e-6)
        np.testing.assert_allclose(got.compatibility, want.compatibility, atol=1e-6)
    assert not np.allclose(both.pacl.similarity, both.vanilla.similarity), "two different patch embedders"
    np.testing.assert_allclose(both.pacl.cls_cosine, both.vanilla.cls_cosine, atol=1e-6)  # one CLIP, one CLS
    rows = both.rows()
    assert [r["word"] for r in rows] == WORDS
    assert rows[1]["vanilla_compatibility"] == pytest.approx(float(alone_v.compatibility[1]), abs=1e-6)
    assert rows[1]["pacl_compatibility"] == pytest.approx(float(alone_p.compatibility[1]), abs=1e-6)
    with pytest.raises(PACLError, match="same patch grid"):
        explain_both(pacl_segmenter, Segmenter(tiny, "vanilla", image_size=32), picture, WORDS)
