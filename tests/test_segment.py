"""Segmenter: shapes at any image size, patch logits against a direct computation, background rules, shifts."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pacl_core.checkpoint import save_head
from pacl_core.errors import PACLError
from pacl_core.pacl import VisionEmbedder
from pacl_core.segment import (
    MAX_GRID,
    Segmenter,
    label_mask,
    parse_background,
    patch_scores,
    resized_shape,
    shift_offsets,
    shifted_scores,
    upsample_scores,
)
from tests.helpers import random_image


@pytest.mark.parametrize("shape", [(1, 1, 3), (37, 53, 3), (64, 20, 4), (33, 47, 1), (200, 120, 3)])
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_mask_size_equals_image(tiny, rng, shape, mode):
    h, w, c = shape
    img = random_image(rng, h, w, c)
    seg = Segmenter(tiny, mode=mode, image_size=48)(img, "dog, grass, sky")
    assert seg.mask.shape == (h, w) and seg.scores.shape == (3, h, w) and seg.heatmaps.shape == (3, h, w)
    assert seg.image.shape == (h, w, 3)
    assert seg.mask.min() >= 0 and seg.mask.max() < 3
    assert seg.patch_scores.ndim == 3 and seg.patch_scores.shape[0] == 3
    assert np.array_equal(seg.mask, seg.scores.argmax(0))


def test_sixteen_bit_array_is_accepted(tiny, rng):
    img = random_image(rng, 40, 40, 3, np.uint16)
    assert Segmenter(tiny)(img, ["a", "b"]).mask.shape == (40, 40)


def test_patch_scores_are_cosines(tiny):
    seg = Segmenter(tiny, image_size=32)
    x = torch.randn(2, 3, 32, 32)
    text = tiny.text_embeddings(["dog", "cat", "sky"])
    got = patch_scores([seg], x, [text])[0][0]
    assert got.shape == (2, 3, 4, 4)
    tokens, _ = tiny.patch_tokens(x)
    emb = tokens @ tiny.model.visual.proj  # (2, 16, D)
    ref = F.normalize(emb, dim=-1) @ F.normalize(text, dim=-1).T  # (2, 16, 3)
    torch.testing.assert_close(got, ref.permute(0, 2, 1).reshape(2, 3, 4, 4))


@pytest.mark.slow
def test_whole_mode_keeps_the_aspect_ratio(vitb, rng):
    seg = Segmenter(vitb, image_size=448)(random_image(rng, 300, 500), ["sky"])
    assert seg.patch_scores.shape == (1, 28, 46)  # 448x747 px (mmcv's rule), the 11 px remainder dropped
    assert resized_shape((233, 350), 336) == (336, 505) and resized_shape((350, 233), 336) == (505, 336)
    assert resized_shape((100, 4000), 336) == (51, 2048)  # the long side is capped at 2048 px


def test_heatmaps_and_probs(tiny, rng):
    seg = Segmenter(tiny)(random_image(rng, 30, 30), "a, b, c")
    assert 0 <= seg.heatmaps.min() and seg.heatmaps.max() <= 1
    np.testing.assert_allclose(seg.probs.sum(0), 1, atol=1e-5)
    one = Segmenter(tiny)(random_image(rng, 30, 30), "a")
    assert one.heatmaps.min() == 0 and one.heatmaps.max() == pytest.approx(1)


def test_background_rules(tiny, rng):
    img = random_image(rng, 40, 40)
    high = Segmenter(tiny, background="score:1.01")(img, "a, b")
    assert (high.mask == -1).all()  # cosines never exceed 1
    low = Segmenter(tiny, background="score:-1.01")(img, "a, b")
    assert (low.mask >= 0).all()
    ent = Segmenter(tiny, background="entropy:0.0")(img, "a, b")
    assert (ent.mask == -1).all()  # any spread-out distribution has entropy > 0
    rows = high.summary()
    assert rows[-1]["word"] == "background" and rows[-1]["pixel_share"] == 1.0


def test_entropy_rule_against_hand_computation():
    scores = torch.tensor([[[0.30, 0.10]], [[0.29, 0.50]]])  # (K=2, H=1, W=2)
    p = torch.softmax(scores * 100, 0)
    entropy = -(p * p.log()).sum(0)
    mask = label_mask(scores, 100.0, ("entropy", 0.5))
    expected = [-1 if entropy[0, j] > 0.5 else int(scores[:, 0, j].argmax()) for j in range(2)]
    assert mask[0].tolist() == expected and -1 in expected


def test_background_spec_errors():
    assert parse_background("none") is None
    assert parse_background("entropy:1.5") == ("entropy", 1.5)
    with pytest.raises(PACLError, match="must look like"):
        parse_background("score:high")
    with pytest.raises(PACLError, match="unknown background rule"):
        parse_background("colour:1")


def test_bad_method_and_mode(tiny):
    with pytest.raises(PACLError, match="unknown method 'magic'; valid methods: vanilla, pacl"):
        Segmenter(tiny, method="magic")
    with pytest.raises(PACLError, match="unknown mode"):
        Segmenter(tiny, mode="tiles")


def test_pacl_needs_a_head(tiny):
    with pytest.raises(PACLError, match="needs a trained PACL head"):
        Segmenter(tiny, method="pacl")


def test_pacl_with_a_head_from_disk(tiny, tmp_path, rng):
    head = VisionEmbedder(tiny.width, tiny.embed_dim).init_from_projection(tiny.model.visual.proj)
    path = save_head(tmp_path / "head.safetensors", head, tiny, logit_scale=33.0)
    pacl = Segmenter(tiny, method="pacl", head=str(path))
    vanilla = Segmenter(tiny)
    assert pacl.logit_scale == 33.0
    img = random_image(rng, 40, 40)
    a, b = pacl(img, "a, b"), vanilla(img, "a, b")
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)  # e_v initialised as CLIP's projection


def test_vocabulary_bad_input(tiny, rng):
    seg = Segmenter(tiny)
    img = random_image(rng, 20, 20)
    with pytest.raises(PACLError, match="no words given"):
        seg(img, " , ")
    with pytest.raises(PACLError, match="at most"):
        seg(img, [f"w{i}" for i in range(200)])
    out = seg(img, "dog, dog, 🐶, " + "y" * 500)
    assert out.words == ["dog", "🐶", "y" * 500] and out.notes


@pytest.mark.parametrize("low_shape,size", [((3, 4, 4), (37, 53)), ((2, 28, 28), (1500, 2000)), ((1, 5, 9), (5, 9)),
                                            ((4, 30, 40), (7, 3)), ((2, 100, 120), (150, 90))])
def test_blockwise_upsampling_equals_interpolate(low_shape, size):
    low = torch.randn(*low_shape, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(low[None], size=size, mode="bilinear", align_corners=False)[0]
    # float32 rounding of the source coordinates at 2000 px reaches 1.01e-5 for about 1 draw in 40; a pixel
    # misplaced by one would differ by ~1e-2
    torch.testing.assert_close(upsample_scores(low, size), ref, atol=3e-5, rtol=0)


def test_blockwise_mask_equals_full_argmax(monkeypatch):
    import pacl_core.segment as segment

    monkeypatch.setattr(segment, "UPSAMPLE_BLOCK", 3 * 50 * 7)  # many small blocks
    assert len(list(segment.upsample_blocks(torch.randn(3, 6, 8), (41, 50)))) == 6
    low = torch.randn(3, 6, 8)
    for background in (None, ("score", 0.3), ("entropy", 0.8)):
        mask = segment.mask_from_low(low, (41, 50), 40.0, background)
        full = segment.upsample_scores(low, (41, 50))
        assert torch.equal(mask, label_mask(full, 40.0, background))


@pytest.mark.parametrize("patch, m, expected", [(8, 1, [0]), (8, 2, [-2, 2]), (8, 4, [-3, -1, 1, 3]),
                                                (16, 2, [-4, 4]), (16, 4, [-6, -2, 2, 6]),
                                                (8, 8, [-4, -3, -2, -1, 0, 1, 2, 3])])
def test_shift_offsets_spread_evenly_inside_a_patch(patch, m, expected):
    assert shift_offsets(patch, m) == expected


def _patch_means(x: torch.Tensor, patch: int) -> torch.Tensor:
    """A stand-in for patch logits: each patch's mean colour, (B, 3, H, W) -> (B, 3, h, w)."""
    return F.avg_pool2d(x, patch)


def _shifted_reference(img: np.ndarray, patch: int, m: int, scale: float | None = None) -> np.ndarray:
    """shifted_scores written out pixel by pixel with numpy: mirror, cut, score, upsample, look back, average.
    With a scale, each pass's patch scores become word probabilities (and a log-normaliser) first."""
    C, H, W = img.shape
    total, norm = np.zeros((C, H, W)), np.zeros((1, H, W))
    for dy in shift_offsets(patch, m):
        for dx in shift_offsets(patch, m):
            mirrored = np.pad(img, ((0, 0), (patch, patch), (patch, patch)), mode="reflect")
            view = mirrored[:, patch + dy:patch + dy + H, patch + dx:patch + dx + W]  # view[y, x] = img[y+dy, x+dx]
            low = _patch_means(torch.from_numpy(view)[None], patch)[0].numpy()  # (C, h, w)
            parts = [low]
            if scale is not None:
                z = scale * low
                lse = np.log(np.exp(z).sum(0, keepdims=True))  # (1, h, w)
                parts = [np.exp(z - lse), lse]
            for part, acc in zip(parts, (total, norm)):
                up = F.interpolate(torch.from_numpy(part)[None], size=(H, W), mode="bilinear",
                                   align_corners=False)[0].numpy()
                for y in range(H):
                    for x in range(W):  # pixel (y, x) sits at (y - dy, x - dx) in this pass (clamped at the border)
                        acc[:, y, x] += up[:, min(max(y - dy, 0), H - 1), min(max(x - dx, 0), W - 1)]
    if scale is None:
        return total / m ** 2
    return (norm / m ** 2 + np.log(total / m ** 2)) / scale


@pytest.mark.parametrize("m", [1, 2, 4])
def test_shifted_scores_match_a_pixelwise_reference(rng, m):
    img = rng.standard_normal((3, 24, 32))
    got = shifted_scores(lambda x: _patch_means(x, 8), torch.from_numpy(img)[None], 8, m)[0]
    np.testing.assert_allclose(got.numpy(), _shifted_reference(img, 8, m), atol=1e-10)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_shifted_probability_ensemble_matches_a_pixelwise_reference(rng, m):
    img = rng.uniform(-1, 1, (3, 24, 32))
    got = shifted_scores(lambda x: _patch_means(x, 8), torch.from_numpy(img)[None], 8, m, logit_scale=20.0)[0]
    np.testing.assert_allclose(got.numpy(), _shifted_reference(img, 8, m, 20.0), atol=1e-9)


def test_probability_ensemble_is_in_cosine_units_and_averages_probabilities(rng):
    """Where every pass agrees the ensemble returns the cosines themselves; in general softmax(scale · result)
    is the mean of the passes' upsampled probabilities, so the argmax is the ensemble's vote."""
    flat = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    torch.testing.assert_close(shifted_scores(lambda x: _patch_means(x, 8), flat, 8, 4, logit_scale=50.0), flat)
    img = torch.from_numpy(rng.uniform(-1, 1, (1, 3, 24, 32)))
    got = shifted_scores(lambda x: _patch_means(x, 8), img, 8, 2, logit_scale=30.0)
    probs = shifted_scores(lambda x: torch.softmax(30.0 * _patch_means(x, 8), dim=1), img, 8, 2)  # linear mean
    torch.testing.assert_close(torch.softmax(30.0 * got, dim=1), probs)
    # a word no pass gives any probability stays finite
    far = torch.tensor([1.0, -1.0], dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, 16, 16)
    assert bool(torch.isfinite(shifted_scores(lambda x: _patch_means(x, 8), far, 8, 2, logit_scale=100.0)).all())


def test_shifted_scores_keep_a_constant_and_follow_a_moved_edge():
    flat = torch.full((1, 3, 32, 32), 0.25, dtype=torch.float64)
    torch.testing.assert_close(shifted_scores(lambda x: _patch_means(x, 8), flat, 8, 4), flat)
    # a vertical edge inside a patch: one pass blurs it over the whole patch pair, the shifted passes locate it
    edge = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    edge[..., 13:] = 1.0

    def error(m):
        return float((shifted_scores(lambda x: _patch_means(x, 8), edge, 8, m) - edge).abs().mean())
    assert error(4) < error(2) < error(1), (error(1), error(2), error(4))


@pytest.mark.slow
def test_segmenter_shifts(tiny, rng):
    img = random_image(rng, 40, 56)
    plain = Segmenter(tiny, image_size=48)(img, "dog, grass, sky")
    shifted = Segmenter(tiny, image_size=48, shifts=2)
    seg = shifted(img, "dog, grass, sky")
    assert seg.mask.shape == (40, 56) and np.array_equal(seg.mask, seg.scores.argmax(0))
    assert seg.low_scores.shape == (3, 48, 67) and seg.patch_scores.shape == plain.patch_scores.shape == (3, 6, 8)
    x = tiny.preprocess(img, (48, 67))  # short side 48, the aspect ratio kept
    text = tiny.text_embeddings(["dog", "grass", "sky"])
    ref = shifted_scores(lambda v: patch_scores([shifted], v, [text])[0][0], x, 8, 2, shifted.logit_scale)[0]
    torch.testing.assert_close(torch.from_numpy(seg.low_scores), ref)
    assert not np.allclose(seg.scores, plain.scores)
    slide = Segmenter(tiny, image_size=48, mode="slide", window=32, shifts=2)(img, "dog, grass, sky")
    assert slide.mask.shape == (40, 56)
    one_patch = Segmenter(tiny, image_size=8, shifts=8)(img, "dog, grass")  # a 1x1 grid: offsets up to half a patch
    assert one_patch.mask.shape == (40, 56) and one_patch.low_scores.shape == (2, 8, 11)


@pytest.mark.parametrize("shifts", [0, 9, -1, 1.5])
def test_bad_shifts_are_one_clear_error(tiny, shifts):
    with pytest.raises(PACLError, match="shifts must be a whole number from 1 to the patch size"):
        Segmenter(tiny, shifts=shifts)


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=0), "image_size must be a whole number of pixels from 1 to 2048, got 0"),
    (dict(image_size=-5), "image_size must be a whole number of pixels from 1 to 2048, got -5"),
    (dict(image_size=100_000), "image_size must be a whole number of pixels from 1 to 2048, got 100000"),
    (dict(image_size=40.5), "image_size must be a whole number"),
    (dict(mode="slide", window=0), "window must be a whole number of pixels from 1 to 2048, got 0"),
    (dict(mode="slide", stride=-3), "stride must be a whole number of pixels from 1 to 2048, got -3"),
    (dict(logit_scale=-1.0), "logit_scale must be a positive number, got -1.0"),
    (dict(logit_scale=0), "logit_scale must be a positive number, got 0"),
])
def test_bad_sizes_are_one_clear_error(tiny, kwargs, message):
    with pytest.raises(PACLError, match=re.escape(message)):
        Segmenter(tiny, **kwargs)


def test_one_pass_is_capped_at_max_grid_patches(tiny):
    p = tiny.patch_size
    assert Segmenter(tiny, image_size=MAX_GRID * p).image_size == MAX_GRID * p  # the cap itself is allowed
    with pytest.raises(PACLError, match=f"is {MAX_GRID + 1}x{MAX_GRID + 1} patches in one pass; .*slide mode"):
        Segmenter(tiny, image_size=(MAX_GRID + 1) * p)
    # in slide mode the image may be larger, as long as each window stays within the cap
    assert Segmenter(tiny, mode="slide", image_size=(MAX_GRID + 1) * p, window=4 * p).window == 4 * p
    with pytest.raises(PACLError, match="window .* patches in one pass"):
        Segmenter(tiny, mode="slide", window=(MAX_GRID + 1) * p)


@pytest.mark.parametrize("shape", [(1, 5000), (5000, 1), (3, 2000)])
def test_a_photo_too_thin_for_one_patch_is_one_clear_error(tiny, shape):
    """mmcv's rule caps the long side at 2048 px, so a thin photo's short side can fall under one patch."""
    image = np.zeros((*shape, 3), np.uint8)
    for mode in ("whole", "slide"):
        with pytest.raises(PACLError, match=r"too thin: resized to a 48 px short side .* under one 8 px patch"):
            Segmenter(tiny, image_size=48, mode=mode, window=32)(image, "sky")
    assert Segmenter(tiny, image_size=48, mode="slide", window=32)(np.zeros((20, 2000, 3), np.uint8), "sky") \
        .mask.shape == (20, 2000)  # 20 px short side -> 20x2000 at most 2048: a window smaller than 32 px, as mmseg
