"""Point at a patch (pacl_core.explain.patch_report) against independent computations: the segmenter's own patch
scores, the backbone's own tokens and CLIP's own image embedding."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pacl_core.errors import PACLError
from pacl_core.explain import FROZEN, patch_pass, patch_report, report_from_pass, word_maps
from pacl_core.pacl import VisionEmbedder
from pacl_core.segment import Segmenter, patch_scores, resized_shape

WORDS = ["red circle", "blue square", "green grass"]
METHODS = ("vanilla", "pacl", "sclip", "scclip")


@pytest.fixture(scope="module")
def head(tiny):
    torch.manual_seed(3)
    head = VisionEmbedder(tiny.width, tiny.embed_dim)
    head.meta = {"tau": 0.05}
    return head


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(1)
    img = np.zeros((48, 80, 3), np.uint8)  # not square: the point maps to the resized image per axis
    img[:, :40] = (220, 30, 30)
    img[:, 40:] = (30, 30, 220)
    return np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def report(tiny, picture, head):
    return patch_report(tiny, picture, WORDS, (61.0, 10.0), METHODS, head=head, image_size=64)


def _segmenter(tiny, method, head, size=64):
    return Segmenter(tiny, method, head=head if method == "pacl" else None, image_size=size, mode="whole")


def test_the_point_picks_its_patch_per_axis(report):
    # a 64 px short side, the aspect ratio kept: 48x80 -> 64x107 px, 8x13 patches (the 3 px remainder dropped, the
    # grid stretched over the input as the upsampled scores are): x 61 of 80 -> 81.6 px -> column 81 * 13 // 107 = 9;
    # y 10 of 48 -> 13.3 px -> row 1
    assert report.grid == (8, 13) and report.patch == (1, 9) and report.point == (61.0, 10.0)
    assert report.words == WORDS


@pytest.mark.parametrize("method", METHODS)
def test_cosines_are_the_segmenters_patch_scores_at_that_patch(report, tiny, picture, head, method):
    seg = _segmenter(tiny, method, head)
    x = tiny.preprocess(picture, resized_shape(picture.shape, 64))
    logits = patch_scores([seg], x, [seg.text(WORDS)])[0][0][0].numpy()  # (K, h, w)
    np.testing.assert_allclose(report.cosines[method], logits[:, 1, 9], atol=1e-5)
    scale = seg.logit_scale
    assert report.logit_scales[method] == scale
    z = scale * logits[:, 1, 9].astype(np.float64)
    np.testing.assert_allclose(report.probs[method], np.exp(z - z.max()) / np.exp(z - z.max()).sum(), atol=1e-5)
    assert report.best_words()[method] == WORDS[int(np.argmax(logits[:, 1, 9]))]


def test_cls_cosine_is_clips_own_image_text_score(report, tiny, picture):
    x = tiny.preprocess(picture, (tiny.native_size, tiny.native_size))
    with torch.no_grad():
        image_emb = F.normalize(tiny.model.encode_image(x), dim=-1)[0]
    np.testing.assert_allclose(report.cls_cosines, (tiny.text_embeddings(WORDS) @ image_emb).numpy(), atol=1e-5)


def test_cls_from_the_pass_itself_at_the_native_size(tiny, picture):
    rep = patch_report(tiny, picture, WORDS, (0, 0), ("vanilla",), image_size=tiny.native_size)
    x = tiny.preprocess(picture, (tiny.native_size, tiny.native_size))
    with torch.no_grad():
        image_emb = F.normalize(tiny.model.encode_image(x), dim=-1)[0]
    np.testing.assert_allclose(rep.cls_cosines, (tiny.text_embeddings(WORDS) @ image_emb).numpy(), atol=1e-5)
    assert rep.grid == (4, 6) and rep.patch == (0, 0)  # a 32 px short side: not the native square, CLS apart


def _cosine_with_all(vectors: np.ndarray, t: int) -> np.ndarray:
    v = vectors.astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v @ v[t]


def test_coherence_is_the_cosine_of_the_patchs_token_with_every_token(report, tiny, picture, head):
    x = tiny.preprocess(picture, resized_shape(picture.shape, 64))
    t = 1 * 13 + 9
    tokens, _ = tiny.patch_tokens(x, "vanilla")  # (1, T, D_v), the frozen tokens
    np.testing.assert_allclose(report.coherence[FROZEN], _cosine_with_all(tokens[0].numpy(), t).reshape(8, 13),
                               atol=1e-5)
    assert report.coherence[FROZEN][1, 9] == pytest.approx(1.0, abs=1e-5)
    for method in METHODS:
        emb, _ = _segmenter(tiny, method, head).patch_embeddings(x)  # (1, T, D)
        np.testing.assert_allclose(report.coherence[method], _cosine_with_all(emb[0].numpy(), t).reshape(8, 13),
                                   atol=1e-5)


def test_attention_share_is_pacls_attention_on_this_patch_at_the_heads_tau(report, tiny, picture, head):
    seg = _segmenter(tiny, "pacl", head)
    x = tiny.preprocess(picture, resized_shape(picture.shape, 64))
    s = patch_scores([seg], x, [seg.text(WORDS)])[0][0][0].numpy().reshape(3, -1)  # (K, T)
    z = s.astype(np.float64) / 0.05
    a = np.exp(z - z.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    assert report.tau == 0.05
    np.testing.assert_allclose(report.attention_share, a[:, 1 * 13 + 9], atol=1e-5)


def test_no_attention_share_without_pacl(tiny, picture):
    rep = patch_report(tiny, picture, WORDS, (5, 5), ("vanilla", "maskclip"), image_size=64)
    assert rep.attention_share is None and rep.tau is None and set(rep.cosines) == {"vanilla", "maskclip"}


def test_a_kept_pass_answers_every_click_without_a_backbone_pass(tiny, picture, head, report, monkeypatch):
    pp = patch_pass(tiny, picture, METHODS, head=head, image_size=64)
    calls = []
    monkeypatch.setattr(type(tiny), "trunk", lambda *a, **k: calls.append(1))
    again = report_from_pass(pp, WORDS, (61.0, 10.0))
    for method in METHODS:
        np.testing.assert_allclose(again.cosines[method], report.cosines[method], atol=1e-6)
    np.testing.assert_allclose(again.cls_cosines, report.cls_cosines, atol=1e-6)
    corner = report_from_pass(pp, WORDS, (79.9, 47.9))
    assert corner.patch == (7, 12)  # the last patch of the 8x13 grid
    maps = word_maps(pp, WORDS, "Blue square")
    assert maps["vanilla"].shape == (8, 13)
    np.testing.assert_allclose(maps["sclip"][1, 9], report.cosines["sclip"][1], atol=1e-5)
    assert calls == [], "no trunk pass after the first"
    assert pp.nbytes > 0


def test_plain_data_is_json_ready(report):
    data = json.loads(json.dumps(report.to_dict()))
    assert data["patch"] == [1, 9] and data["words"] == WORDS and len(data["cls_cosines"]) == 3
    assert len(data["coherence"][FROZEN]) == 8 and set(data["cosines"]) == set(METHODS)


@pytest.mark.parametrize("point", [(80, 10), (-1, 0), (10, 48), (float("nan"), 1), "here", None])
def test_a_point_off_the_image_is_one_line(tiny, picture, point):
    with pytest.raises(PACLError, match="point"):
        patch_report(tiny, picture, WORDS, point)


def test_bad_vocabulary_and_missing_head_are_one_line(tiny, picture):
    with pytest.raises(PACLError, match="no words"):
        patch_report(tiny, picture, " , ", (1, 1))
    with pytest.raises(PACLError, match="PACL head"):
        patch_report(tiny, picture, WORDS, (1, 1), ("pacl",))
    with pytest.raises(PACLError, match="no method"):
        patch_report(tiny, picture, WORDS, (1, 1), ())


# ---- the demo's handler (demo/patch.py), called directly -----------------------------------------------------
TOY_WORDS = "background, circle, square, triangle, star, heart, cross, ring, moon"


@pytest.fixture(scope="module")
def toy_registry(tmp_path_factory):
    from demo.models import default_registry

    return default_registry(tmp_path_factory.mktemp("no-checkpoints"), hub_heads="")


@pytest.fixture(scope="module")
def scene():
    from demo.ui import EXAMPLES_DIR

    return str(EXAMPLES_DIR / "toy_01.png")


def test_a_click_reads_the_kept_pass_and_equals_the_api(toy_registry, scene, monkeypatch):
    from demo.models import TOY_LABEL
    from demo.patch import PassCache, point_at
    from pacl_core.backbone import Backbone as ToyBackbone  # the toy tower is a plain Backbone

    cache = PassCache()
    first = point_at(toy_registry, cache, "s1", scene, TOY_WORDS, ["vanilla", "pacl"], TOY_LABEL, x=70, y=20)
    assert not first.data["pass_kept"] and len(cache) == 1
    calls = []
    real = ToyBackbone.trunk
    monkeypatch.setattr(ToyBackbone, "trunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = point_at(toy_registry, cache, "s1", scene, TOY_WORDS, ["vanilla", "pacl"], TOY_LABEL, x=70, y=20)
    assert again.data["pass_kept"] and calls == [], "a click costs no backbone pass"
    backbone = toy_registry.backbone(TOY_LABEL)
    head = toy_registry.segmenter(TOY_LABEL, "pacl").head
    monkeypatch.setattr(ToyBackbone, "trunk", real)
    want = patch_report(backbone, scene, TOY_WORDS, (70, 20), ("vanilla", "pacl"), head=head)
    assert again.report.patch == want.patch == (2, 8)  # 96 px scene, 96 px input, 8 px patches
    for m in ("vanilla", "pacl"):
        np.testing.assert_allclose(again.report.cosines[m], want.cosines[m], atol=1e-6)
    np.testing.assert_allclose(again.report.attention_share, want.attention_share, atol=1e-6)
    assert json.loads(json.dumps(again.data))["patch"] == [2, 8]
    assert again.picture.shape == (384, 384, 3) and again.bars.ndim == 3 and again.word_view.ndim == 3
    assert again.headers[:2] == ["word", "CLS cosine"] and len(again.table) == 9
    assert "row 3, column 9" in again.status and "kept pass" in again.status


def test_a_click_on_the_picture_lands_on_its_patch():
    from demo.patch import picture_shape, to_image_point

    assert picture_shape((96, 96)) == (384, 384)  # small scenes are drawn 4x, browsers report picture pixels
    assert to_image_point((383, 0), (96, 96)) == pytest.approx((95.875, 0.125))
    with pytest.raises(PACLError, match="click"):
        to_image_point(None, (96, 96))


def test_the_cache_is_bounded_per_session_and_in_bytes_and_forgets_closed_sessions(tiny, picture):
    from demo.patch import PassCache

    pp = patch_pass(tiny, picture, ("vanilla",), image_size=32)
    cache = PassCache(per_session=2, max_bytes=3 * pp.nbytes)
    for i in range(3):
        cache.put("a", ("img", i), pp)
    assert cache.get("a", ("img", 0)) is None and cache.get("a", ("img", 2)) is pp and len(cache) == 2
    cache.put("b", ("img", 0), pp)
    cache.put("c", ("img", 0), pp)
    assert len(cache) == 3 and cache.nbytes() <= 3 * pp.nbytes  # the least recently used went first
    cache.drop("c")
    assert "c" not in cache.sessions()


@pytest.mark.parametrize("image, words, x, y, match", [
    (None, TOY_WORDS, 1, 1, r"no image yet: upload a photo \(or pick an example\), then click"),
    ("scene", " , ", 1, 1, "no words"),
    ("scene", TOY_WORDS, 96, 1, "outside"),
    ("scene", TOY_WORDS, "left", 1, "two numbers"),
])
def test_bad_input_is_one_line(toy_registry, scene, image, words, x, y, match):
    from demo.models import TOY_LABEL
    from demo.patch import PassCache, point_at

    with pytest.raises(PACLError, match=match):
        point_at(toy_registry, PassCache(), "s", scene if image else None, words, ["vanilla"], TOY_LABEL, x=x, y=y)


def test_pacl_without_a_head_is_left_out_with_a_note(tiny, picture, tmp_path):
    from demo.models import ModelChoice, ModelRegistry
    from demo.patch import PassCache, point_at

    registry = ModelRegistry([ModelChoice("tiny", "PACL-Tiny-Test:none")])
    path = tmp_path / "pic.png"
    from PIL import Image

    Image.fromarray(picture).save(path)
    view = point_at(registry, PassCache(), "s", str(path), WORDS, ["vanilla", "pacl"], "tiny")
    assert list(view.report.cosines) == ["vanilla"] and "PACL is left out" in view.notes[0]
    assert view.report.point == (39.5, 23.5)  # no point yet: the centre
    with pytest.raises(PACLError, match="no trained PACL head"):
        point_at(registry, PassCache(), "s", str(path), WORDS, ["pacl"], "tiny")


@pytest.mark.slow
def test_the_patch_endpoint_serves_the_same_data(toy_registry, scene):
    """/patch over HTTP (gradio_client, a live server): the report's data, the pass kept between calls."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from demo import build_demo
    from demo.models import TOY_LABEL
    from tests.helpers import serving

    with serving(build_demo(model="toy", registry=toy_registry)) as url:
        client = Client(url, verbose=False)
        args = (handle_file(scene), TOY_WORDS, ["vanilla", "pacl"], TOY_LABEL, "model default")
        first = client.predict(*args, 70, 20, None, api_name="/patch")[-1]
        again = client.predict(*args, 10, 90, "ring", api_name="/patch")[-1]
        with pytest.raises(AppError, match="outside"):
            client.predict(*args, 96, 20, None, api_name="/patch")
    backbone = toy_registry.backbone(TOY_LABEL)
    want = patch_report(backbone, scene, TOY_WORDS, (70, 20), ("vanilla", "pacl"),
                        head=toy_registry.segmenter(TOY_LABEL, "pacl").head)
    assert first["patch"] == [2, 8] and not first["pass_kept"] and first["words"] == want.words
    np.testing.assert_allclose(first["cosines"]["pacl"], want.cosines["pacl"], atol=1e-5)
    np.testing.assert_allclose(first["cls_cosines"], want.cls_cosines, atol=1e-5)
    assert again["patch"] == [11, 1] and again["pass_kept"], "the second call read the kept pass"


def test_examples_follow_the_model(toy_registry):
    """The toy model lists its scenes (and its heads run on the toy CLIP); a real model lists the photos."""
    from demo.examples import is_toy, split_examples
    from demo.models import TOY_LABEL, VIT_LABEL
    from demo.ui import load_examples

    toy, photos = split_examples(load_examples())
    assert [Path(r[0]).name for r in toy] == ["toy_01.png", "toy_02.png", "toy_03.png", "toy_04.png"]
    assert [Path(r[0]).name for r in photos] == ["chelsea.jpg", "coffee.jpg", "astronaut.jpg"]
    assert is_toy(toy_registry, TOY_LABEL) and not is_toy(toy_registry, VIT_LABEL)
    assert not is_toy(toy_registry, "no such model")
