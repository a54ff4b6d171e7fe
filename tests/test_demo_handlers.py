"""The demo's plain-Python handlers and model registry, called directly (no server): types, sizes, messages."""

import dataclasses
import json
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from demo import handlers as h
from demo.models import (
    TOY_LABEL,
    VIT_LABEL,
    ModelChoice,
    ModelRegistry,
    checkpoint_choices,
    default_registry,
    pick_default,
)
from pacl_core.backbone import load_backbone
from pacl_core.checkpoint import save_head
from pacl_core.errors import PACLError
from pacl_core.methods import METHODS
from pacl_core.pacl import VisionEmbedder
from pacl_core.segment import patch_scores, resized_shape
from pacl_core.viz import draw_heatmaps, draw_overlay

HEAD_LABEL = "PACL head: tiny_head (PACL-Tiny-Test:none)"
MODEL = TOY_LABEL  # the embedded toy model, which ships its own PACL head


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    tiny = load_backbone("PACL-Tiny-Test:none")
    save_head(folder / "tiny_head", VisionEmbedder(tiny.width, tiny.embed_dim), tiny, tau=0.5)
    (folder / "no_meta.safetensors").write_bytes(b"not even a safetensors file")
    (folder / "not_a_head.safetensors").write_bytes(b"x")
    (folder / "not_a_head.json").write_text(json.dumps({"format": "something-else"}))
    return folder


@pytest.fixture(scope="module")
def registry(checkpoints):
    return default_registry(checkpoints)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    rng = np.random.default_rng(0)
    img = np.zeros((120, 160, 3), np.uint8)
    img[:60] = (40, 90, 220)
    img[60:] = (40, 160, 50)
    img[30:90, 50:110] = (230, 40, 40)
    img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(img).save(path)
    return path


def test_registry_lists_toy_vit_and_valid_checkpoints_only(registry, checkpoints):
    assert registry.labels == [TOY_LABEL, VIT_LABEL, HEAD_LABEL]
    assert [c.label for c in checkpoint_choices(checkpoints)] == [HEAD_LABEL]
    choice = registry.choice(HEAD_LABEL)
    assert choice.spec == "PACL-Tiny-Test:none" and choice.head.endswith("tiny_head.safetensors")
    with pytest.raises(PACLError, match="unknown model"):
        registry.choice("GPT-9")


def test_models_load_once_lazily_and_are_cached(checkpoints):
    reg = default_registry(checkpoints)
    assert not reg.is_loaded(HEAD_LABEL)
    first = reg.backbone(HEAD_LABEL)
    assert reg.is_loaded(HEAD_LABEL) and reg.backbone(HEAD_LABEL) is first
    assert reg.segmenter(HEAD_LABEL, "pacl") is reg.segmenter(HEAD_LABEL, "pacl")
    assert reg.segmenter(HEAD_LABEL, "vanilla", 64).image_size == 64
    assert not reg.is_loaded(VIT_LABEL)  # never touched, never loaded


def test_default_model_falls_back_to_toy_with_a_notice_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    reg = ModelRegistry([])
    label, notice = pick_default(reg, None)
    assert label == TOY_LABEL and "ViT-B/16 weights are not available" in notice and "HF_HUB_OFFLINE" in notice
    assert pick_default(reg, "vit-b-16") == (VIT_LABEL, "")
    label, _ = pick_default(reg, "ViT-B-16-quickgelu:none")
    assert label == "ViT-B-16-quickgelu:none (custom)" and label in reg.labels
    with pytest.raises(PACLError, match="no such head file"):
        pick_default(reg, str(tmp_path / "missing.safetensors"))


def test_compare_returns_a_panel_per_method_with_right_sizes(registry, photo):
    result = h.compare(registry, str(photo), "sky, grass, red square", ["vanilla", "pacl"], MODEL)
    assert [p.method for p in result.panels] == ["vanilla", "pacl"] and all(p.ok for p in result.panels)
    for p in result.panels:
        np.testing.assert_array_equal(p.overlay, draw_overlay(p.segmentation))  # the photo, regions and legend
        assert p.overlay.shape[0] == 360 and p.overlay.shape[1] > 480  # enlarged 3x, the legend beside it
        assert p.segmentation.mask.shape == (120, 160) and (p.segmentation.mask >= 0).all()  # all labelled
        # one sheet, 2 x 2 cells for 3 words: each word's untitled heatmap at its cell's size, below a caption
        tiles = draw_heatmaps(p.segmentation, max_side=h.SHEET_SIDE // 2, titled=False)
        assert [w for w, _ in tiles] == ["sky", "grass", "red square"]
        th, tw = tiles[0][1].shape[:2]
        assert (th, tw) == (288, 384)  # the 120 x 160 photo's heatmaps at a 384 px longer side
        strip = int(48 * 1.4)  # the caption: letters of tw / 8 = 48 px
        assert p.sheet.shape == (2 * (strip + th) + 4, 2 * tw + 4, 3)
        np.testing.assert_array_equal(p.sheet[strip: strip + th, :tw], tiles[0][1])
        np.testing.assert_array_equal(p.sheet[strip: strip + th, tw + 4:], tiles[1][1])
        np.testing.assert_array_equal(p.sheet[2 * strip + th + 4:, :tw], tiles[2][1])
        assert (p.sheet[:strip, :tw] < 128).any()  # the word is written above its heatmap
        assert (p.sheet[strip + th + 4:, tw + 4:] == 255).all()  # the empty cell
        assert p.title in p.status and " s · " in p.status
    assert len(result.table) == 6 and all(len(r) == len(h.TABLE_HEADERS) for r in result.table)
    for title in ("Vanilla CLIP", "PACL"):
        shares = [r[2] for r in result.table if r[0] == title]
        assert sum(shares) == pytest.approx(100.0, abs=0.2)
    assert result.notes == []


def test_download_archive_holds_every_methods_results(registry, photo):
    result = h.compare(registry, str(photo), "sky, grass", ["pacl", "vanilla"], MODEL, 0.0, "96")
    with zipfile.ZipFile(result.download) as zf:
        names = set(zf.namelist())
        summary = zf.read("summary.csv").decode()
        meta = json.loads(zf.read("02-pacl/result.json"))
    for folder in ("01-vanilla", "02-pacl"):
        assert {f"{folder}/overlay.png", f"{folder}/mask.png", f"{folder}/result.json",
                f"{folder}/heatmap_01-sky.png", f"{folder}/heatmap_02-grass.png"} <= names
    assert summary.splitlines()[0] == ",".join(h.TABLE_HEADERS) and len(summary.splitlines()) == 5
    assert meta["words"] == ["sky", "grass"] and meta["method"] == "pacl"


def test_archive_can_wait_until_the_results_are_shown(registry, photo):
    result = h.compare(registry, str(photo), "sky, grass", ["vanilla"], MODEL, package=False)
    assert result.download is None
    token = h.hold(result)
    archive = h.package_held(token)
    assert zipfile.ZipFile(archive).read("summary.csv").decode().count("Vanilla CLIP") == 2
    assert h.package_held(token) is None and h.package_held(None) is None
    tokens = [h.hold(result, "one visitor") for _ in range(h.HELD_PER_SESSION + 1)]  # a session's newest few
    others = [h.hold(result, f"visitor {i}") for i in range(40)]  # other sessions never push them out
    with pytest.raises(PACLError, match="no longer kept for download"):  # said, not silently lost
        h.package_held(tokens[0])
    assert all(h.package_held(t) is not None for t in [*tokens[1:], *others])


def test_held_results_are_small_expire_and_spill_to_disk_beyond_their_bound(registry, photo):
    result = h.compare(registry, str(photo), "sky, grass", ["vanilla", "pacl"], MODEL, package=False)
    size = h.comparison_bytes(result)
    held = h.HeldResults(per_session=2, seconds=600, max_bytes=size)  # room for about one in memory
    first, second = held.hold(result, "a"), held.hold(result, "b")
    assert held.nbytes() <= size  # the display pictures are not kept; the second result went to disk
    assert zipfile.ZipFile(held.take(second)).namelist() and zipfile.ZipFile(held.take(first)).namelist()
    assert len(held) == 0
    gone = held.hold(result, "closed tab")
    held.forget_session("closed tab")
    with pytest.raises(PACLError, match="no longer kept"):
        held.take(gone)
    expiring = h.HeldResults(seconds=-1)
    token = expiring.hold(result, "a")
    expiring.hold(result, "b")  # holding expires the old ones
    with pytest.raises(PACLError, match="press Segment again"):
        expiring.take(token)


def count_trunks(monkeypatch) -> list:
    from pacl_core.backbone import Backbone

    calls, real = [], Backbone.trunk
    monkeypatch.setattr(Backbone, "trunk", lambda self, images, keep=(): calls.append(1) or real(self, images, keep))
    return calls


@pytest.mark.slow
def test_an_explicit_resolution_runs_every_method_in_one_shared_pass(registry, photo, monkeypatch):
    calls = count_trunks(monkeypatch)
    result = h.compare(registry, str(photo), "sky, grass", list(METHODS), MODEL, 0.0, "96")
    assert len(calls) == 1  # one backbone trunk for all six methods
    for p in result.panels:
        assert p.ok and f"one shared pass for {len(METHODS)} methods at the chosen 96 px short side, whole image" \
            in p.status
        assert p.segmentation.patch_scores.shape[1:] == (12, 16)  # the whole 3:4 photo, 96x128 px, 8 px patches
        alone = h.compare(registry, str(photo), "sky, grass", [p.method], MODEL, 0.0, "96").panels[0]
        np.testing.assert_array_equal(alone.segmentation.mask, p.segmentation.mask)
        np.testing.assert_allclose(alone.segmentation.low_scores, p.segmentation.low_scores, atol=1e-5)


@pytest.mark.slow
def test_model_default_shares_the_pass_among_methods_of_one_protocol(registry, photo, monkeypatch):
    result = h.compare(registry, str(photo), "sky, grass", list(METHODS), MODEL)
    status = {p.method: p.status for p in result.panels}
    assert "shared pass with PACL (same protocol:" in status["vanilla"]
    assert "shared pass with MaskCLIP, NACLIP, SC-CLIP (same protocol:" in status["sclip"]
    assert "short side" in status["sclip"] and "px windows" in status["sclip"]
    assert "own protocol:" in status["clearclip"] and "shared" not in status["clearclip"]
    for p in result.panels:
        alone = h.compare(registry, str(photo), "sky, grass", [p.method], MODEL).panels[0]
        assert "own protocol" in alone.status or alone.method in ("vanilla", "pacl")
        np.testing.assert_array_equal(alone.segmentation.mask, p.segmentation.mask)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs(registry, photo, method):
    result = h.compare(registry, str(photo), "sky, grass", [method], MODEL)
    (panel,) = result.panels
    assert panel.ok, panel.status
    assert panel.overlay.ndim == 3 and panel.sheet.ndim == 3


def test_shifted_passes_reach_the_segmenter_status_and_archive(registry, photo):
    plain = h.compare(registry, str(photo), "sky, grass", ["pacl"], MODEL)
    shifted = h.compare(registry, str(photo), "sky, grass", ["pacl"], MODEL, shifts="2")
    (p1,), (p2,) = plain.panels, shifted.panels
    assert p2.ok and "2×2 shifted passes" in p2.status and "shifted" not in p1.status
    assert p2.segmentation.low_scores.shape[1:] == (96, 128)  # pixel-level: the average of the 4 passes
    assert not np.allclose(p1.segmentation.scores, p2.segmentation.scores)
    assert json.loads(zipfile.ZipFile(shifted.download).read("settings.json"))["shifts"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("refine", ["affinity", "pamr"])
def test_refinement_reaches_the_segmenter_status_and_archive(registry, photo, refine):
    plain = h.compare(registry, str(photo), "sky, grass", ["pacl"], MODEL)
    refined = h.compare(registry, str(photo), "sky, grass", ["pacl"], MODEL, refine=refine)
    (p1,), (p2,) = plain.panels, refined.panels
    assert p2.ok and f"{refine} refinement" in p2.status and "refinement" not in p1.status
    assert p2.segmentation.method == "pacl" and not np.allclose(p1.segmentation.scores, p2.segmentation.scores)
    assert json.loads(zipfile.ZipFile(refined.download).read("settings.json"))["refine"] == refine
    assert json.loads(zipfile.ZipFile(plain.download).read("settings.json"))["refine"] == "method default"


@pytest.fixture(scope="module")
def headless():
    """A registry whose only model has no PACL head (like ViT-B/16 before a head is dropped in checkpoints/)."""
    return ModelRegistry([ModelChoice("tiny, no head", "PACL-Tiny-Test:none")])


def test_pacl_without_a_head_is_a_message_not_a_failure(headless, photo):
    result = h.compare(headless, str(photo), "sky, grass", ["vanilla", "pacl"], "tiny, no head")
    vanilla, pacl = result.panels
    assert vanilla.ok and not pacl.ok and pacl.overlay is None and pacl.sheet is None
    assert "no trained PACL head" in pacl.status and "checkpoints/" in pacl.status
    assert any("no trained PACL head" in n for n in result.notes)
    assert {r[0] for r in result.table} == {"Vanilla CLIP"} and result.download is not None


def test_default_comparison_is_pacl_with_a_head_else_scclip(registry, headless, photo):
    fresh = default_registry(registry.choice(HEAD_LABEL).head.rsplit("/", 1)[0])
    assert h.default_methods(fresh, HEAD_LABEL) == ["vanilla", "pacl"] and h.methods_info(fresh, HEAD_LABEL) == ""
    assert h.default_methods(fresh, VIT_LABEL) == ["vanilla", "scclip"]  # ViT-B/16 ships no head
    assert "no trained PACL head" in h.methods_info(fresh, VIT_LABEL)
    assert h.default_methods(fresh, TOY_LABEL) == ["vanilla", "pacl"]
    assert not any(fresh.is_loaded(label) for label in fresh.labels), "deciding must not load a model"
    ticked = h.default_methods(headless, "tiny, no head")
    assert ticked == ["vanilla", "scclip"] and "pacl" in dict(map(reversed, h.method_choices()))
    result = h.compare(headless, str(photo), "sky, grass", ticked, "tiny, no head")
    assert [p.title for p in result.panels] == ["Vanilla CLIP", "SC-CLIP"] and all(p.ok for p in result.panels)


def test_background_threshold_adds_a_background_row(registry, photo):
    result = h.compare(registry, str(photo), "sky, grass", ["vanilla"], MODEL, threshold=1.0)
    rows = {r[1]: r for r in result.table}
    assert rows["background"][2] == 100.0 and rows["background"][3] is None  # no cosine reaches 1
    assert (result.panels[0].segmentation.mask == -1).all()
    np.testing.assert_array_equal(result.panels[0].overlay, draw_overlay(result.panels[0].segmentation))


def test_duplicates_and_huge_images_produce_notes(registry, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 1500), (90, 120, 200)).save(big)
    result = h.compare(registry, str(big), "sky, Sky, grass", ["vanilla"], MODEL)
    assert result.words == ["sky", "grass"]
    assert any("duplicate" in n for n in result.notes) and any("downscaled" in n for n in result.notes)
    assert result.panels[0].segmentation.image.shape == (512, 1024, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"image": None}, "no image"),
    ({"words": "  , ;"}, "no words given"),
    ({"words": ", ".join(f"w{i}" for i in range(60))}, "at most 50 words"),
    ({"methods": []}, "no method selected"),
    ({"methods": ["magic"]}, "unknown method"),
    ({"threshold": 1.5}, "between 0 and 1"),
    ({"resolution": "9999"}, "input resolution"),
    ({"shifts": "3"}, "shifted passes"),
    ({"refine": "crf"}, "refinement 'crf' must be one of"),
    ({"model": "nope"}, "unknown model"),
    ({"words": 12345}, "the vocabulary must be text.*got a number"),
    ({"model": [MODEL]}, "the model must be one of the names in the Model list, got a list"),
    ({"methods": 5}, "the methods must be a list"),
    ({"methods": [["vanilla"]]}, "the methods must be a list"),
    ({"threshold": [0.5]}, "background threshold must be a number"),
    ({"resolution": float("inf")}, "input resolution"),
    ({"resolution": "448\n\n448"}, "input resolution '448 448'"),
    ({"refine": ["pamr"]}, "refinement must be one of"),
    ({"shifts": {"m": 2}}, "shifted passes"),
    ({"image": 12345}, "must be an uploaded image file, got a number"),
    ({"model": "no\nsuch model"}, "unknown model 'no such model'"),
])
def test_bad_inputs_are_one_line_errors(registry, photo, kwargs, message):
    args = {"image": str(photo), "words": "sky", "methods": ["vanilla"], "model": MODEL, "threshold": 0.0,
            "resolution": "model default", **kwargs}
    with pytest.raises(PACLError, match=message) as err:
        h.compare(registry, **args)
    assert "\n" not in str(err.value)


def test_non_image_and_corrupt_files_are_refused(registry, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    with pytest.raises(PACLError, match="not an image"):
        h.compare(registry, str(text), "sky", ["vanilla"], MODEL)
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(PACLError, match="corrupt or truncated"):
        h.compare(registry, str(truncated), "sky", ["vanilla"], MODEL)


def test_lesson_gives_the_teaching_view_for_one_word(registry, photo):
    lesson = h.lesson(registry, str(photo), "sky, grass", "grass", MODEL)
    assert lesson.word == "grass" and lesson.method == "pacl"
    assert lesson.similarity_image.shape == lesson.attention_image.shape
    assert lesson.similarity_image.shape == (360, 480, 3)  # the 120x160 photo, enlarged 3x to stay legible
    lo, hi = lesson.similarity_range
    assert -1.0 <= lo <= hi <= 1.0 and lesson.attention_range[0] == 0.0 < lesson.attention_range[1] <= 1.0
    assert [r[0] for r in lesson.table] == ["sky", "grass"]
    assert all(len(r) == len(h.LESSON_HEADERS) for r in lesson.table)
    assert "“grass”" in lesson.summary and "CLS cosine" in lesson.summary and "vanilla CLIP's φ̂" in lesson.summary
    v = lesson.vanilla  # vanilla CLIP's side, for the same word at the same τ
    assert v.similarity_image.shape == lesson.similarity_image.shape
    assert not np.array_equal(v.similarity_image, lesson.similarity_image)
    backbone = registry.backbone(MODEL)
    rgb, _ = h.check_image(str(photo))
    vanilla = registry.segmenter(MODEL, "vanilla")  # reference: CLIP's own patch cosines for "grass"
    x = backbone.preprocess(rgb, resized_shape(rgb.shape, vanilla.image_size))  # the whole photo, aspect kept
    want = patch_scores([vanilla], x, [backbone.text_embeddings(["sky", "grass"])])[0][0][0, 1].numpy()
    assert v.similarity_range == pytest.approx((float(want.min()), float(want.max())), abs=1e-5)
    pacl_phi, vanilla_phi, cls = lesson.table[1][1:4]
    assert pacl_phi != vanilla_phi and -1 <= cls <= 1
    custom = h.lesson(registry, str(photo), "sky", "red square", MODEL, "model default", 0.05)
    assert [r[0] for r in custom.table] == ["sky", "red square"] and "τ = 0.05" in custom.summary
    first = h.lesson(registry, str(photo), "sky, grass", None, MODEL)
    assert first.word == "sky"


def test_lesson_without_a_head_falls_back_to_vanilla_with_a_note(headless, registry, photo):
    lesson = h.lesson(headless, str(photo), "sky, grass", "sky", "tiny, no head")
    assert lesson.method == "vanilla" and "no trained PACL head" in lesson.notes[0]
    assert np.array_equal(lesson.similarity_image, lesson.vanilla.similarity_image), "vanilla on both sides"
    with pytest.raises(PACLError, match="attention temperature"):
        h.lesson(registry, str(photo), "sky", "sky", MODEL, "model default", -1)


def test_concurrent_requests_all_succeed(registry, photo):
    words = ["sky, grass", "grass, red square, sky", "sky"]
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(h.compare, registry, str(photo), words[i % 3], ["vanilla", "pacl"], MODEL, 0.0,
                               ["model default", "96"][i % 2]) for i in range(6)]
        results = [f.result(timeout=120) for f in futures]
    assert [len(r.words) for r in results] == [2, 3, 1, 2, 3, 1]
    assert all(all(p.ok for p in r.panels) for r in results)


def test_a_model_without_weights_is_a_message(monkeypatch, tmp_path, checkpoints, photo):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    reg = default_registry(checkpoints)
    with pytest.raises(PACLError, match="could not load ViT-B/16 .*not cached") as err:
        h.compare(reg, str(photo), "sky", ["vanilla"], VIT_LABEL)
    assert "\n" not in str(err.value) and not reg.is_loaded(VIT_LABEL)


def test_app_refuses_a_bad_model_or_port_in_one_line(capsys, monkeypatch):
    import gradio as gr

    import app

    def no_launch(*args, **kwargs):
        raise AssertionError("the demo started instead of refusing")

    monkeypatch.setattr(gr.Blocks, "launch", no_launch)

    for argv, message in ((["--model", "nope"], "error: unknown model 'nope'"),
                          (["--port", "99999"], "error: --port must be from 1 to 65535, got 99999"),
                          (["--mod", "toy"], "unrecognized arguments: --mod")):
        with pytest.raises(SystemExit) as exit_:
            app.main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1], err


def test_shown_pictures_are_files_the_app_writes_and_gradio_is_left_as_it_is(tmp_path):
    """No monkey-patch of Gradio: the page's pictures are JPEG files written under a temporary name and renamed
    into place at a unique path (Gradio copies a returned file atomically), and old ones are deleted."""
    from gradio import processing_utils

    import demo.ui  # noqa: F401  (importing the page must not patch Gradio)

    assert processing_utils.save_pil_to_cache.__module__ == "gradio.processing_utils"
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    files = h.DisplayFiles(seconds=60)
    first, second = files.write(img), files.write(img)
    assert first != second and Path(first).suffix == ".jpeg" and Image.open(first).size == (60, 40)
    assert not any(p.name.startswith(".") for p in files.folder().iterdir())  # no staging file left
    os.utime(first, (0, 0))  # long ago
    files._pruned = 0.0  # pruning is due
    files.write(img)
    assert not Path(first).exists() and files.write(None) is None


@pytest.mark.parametrize("width, height, message", [
    (1, 5000, "too small"), (5000, 1, "too small"), (1, 300, "too small"), (5, 1024, "too small"),
    (40, 1024, "too thin"), (2000, 100, "too thin"),
])
def test_thin_and_tiny_images_are_refused_in_one_line_naming_the_visitors_file(registry, tmp_path, width, height,
                                                                                message):
    path = tmp_path / "upload-3f9a" / "image.png"
    path.parent.mkdir()
    Image.new("RGB", (width, height), (200, 30, 30)).save(path)
    with pytest.raises(PACLError, match=message) as err:
        h.compare(registry, str(path), "sky", ["vanilla"], MODEL, image_name="my thin photo.png")
    assert str(err.value).startswith("my thin photo.png:") and str(tmp_path) not in str(err.value)


def test_the_thinnest_accepted_image_is_segmented_and_drawn_within_bounds(registry, tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (16 * 64, 64), (30, 200, 30)).save(path)  # 16:1, the most the demo takes
    result = h.compare(registry, str(path), "grass, sky", ["vanilla", "pacl"], MODEL, package=False)
    for panel in result.panels:
        assert max(panel.overlay.shape[:2]) <= 2048 + 400 and max(panel.sheet.shape[:2]) <= 2048  # legend beside


def test_too_large_images_are_called_too_large(registry, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(path)  # 400 megapixels, a few kB on disk
    with pytest.raises(PACLError, match="too large") as err:
        h.compare(registry, str(path), "sky", ["vanilla"], MODEL, image_name="huge.png")
    assert "corrupt" not in str(err.value)
    with pytest.raises(PACLError, match="too large"):
        h.compare(registry, str(path), "sky", ["vanilla"], MODEL)


def test_messages_about_a_corrupt_file_name_the_visitors_file(registry, tmp_path):
    path = tmp_path / "gradio-upload-path" / "x.jpg"
    path.parent.mkdir()
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    with pytest.raises(PACLError) as err:
        h.compare(registry, str(path), "sky", ["vanilla"], MODEL, image_name="holiday.jpg")
    assert str(err.value).startswith("holiday.jpg:") and "gradio-upload-path" not in str(err.value)


def test_a_request_over_the_budget_is_refused_naming_its_cost_and_what_to_lower(registry, photo):
    with pytest.raises(PACLError, match=r"would take about \d+ s .*choose fewer shifted passes per axis, a lower "
                                        r"input resolution.*no PAMR refinement, fewer methods"):
        h.compare(registry, str(photo), "sky, grass", list(METHODS), MODEL, resolution="672", shifts="4",
                  refine="pamr")


def test_a_heavy_request_runs_in_the_heavy_lane_on_its_own_copy_of_the_model(registry, photo):
    from demo import budget

    cost = h.request_cost(registry, MODEL, ["vanilla", "pacl"], (120, 160), 2, h.Settings(448))
    light = h.request_cost(registry, MODEL, ["vanilla", "pacl"], (120, 160), 2, h.Settings())
    assert light.lane == "light" and light.seconds < cost.seconds
    lane = registry.heavy_lane()
    assert lane is registry.heavy_lane() and lane.labels == registry.labels
    budget.heavy_lane.enter(cost)  # someone else's heavy request is running
    try:
        with pytest.raises(PACLError, match="another visitor's heavy request is running"):
            with h.lane_for(registry, MODEL, dataclasses.replace(cost, seconds=budget.LIGHT_SECONDS + 1)):
                pass
    finally:
        budget.heavy_lane.leave()
    with h.lane_for(registry, MODEL, dataclasses.replace(cost, seconds=budget.LIGHT_SECONDS + 1)) as used:
        assert used is lane and lane.backbone(MODEL) is not registry.backbone(MODEL)
    assert not budget.heavy_lane.busy()


def test_a_sessions_heads_are_visible_and_usable_only_in_that_session(registry, photo, checkpoints):
    mine = ModelChoice("Your PACL head 1 (secret)", "PACL-Tiny-Test:none",
                       head=str(checkpoints / "tiny_head.safetensors"))
    reg = default_registry(checkpoints)
    reg.add(mine, owner="alice")
    assert mine.label in reg.labels_for("alice") and mine.label not in reg.labels_for("bob")
    with pytest.raises(PACLError, match="unknown model") as err:
        h.compare(reg, str(photo), "sky", ["pacl"], mine.label, session="bob")
    assert "secret" not in str(err.value).split("pick one of")[1]  # bob typed the label; nothing lists it
    with pytest.raises(PACLError, match="unknown model") as err:
        h.compare(reg, str(photo), "sky", ["pacl"], "nope", session="alice")
    assert "secret" in str(err.value)  # one's own heads are listed to oneself
    with pytest.raises(PACLError) as err:
        h.compare(reg, str(photo), "sky", ["pacl"], "nope", session="bob")
    assert "secret" not in str(err.value)
    result = h.compare(reg, str(photo), "sky", ["pacl"], mine.label, session="alice", package=False)
    assert result.panels[0].ok


def test_the_cost_of_a_pass_is_fitted_from_two_timed_forwards_and_corrected_by_finished_requests(monkeypatch):
    from demo import budget

    assert budget.fit_unit(4, 0.4, 9, 0.9) == pytest.approx((0.1, 1.0, 0.0))  # all linear in the patches
    assert budget.fit_unit(4, 0.16, 9, 0.81) == pytest.approx((0.01, 0.0, 1.0))  # all attention
    monkeypatch.setattr(budget, "_factors", {})
    budget.observe("m", estimated=10.0, actual=30.0)  # slower than estimated: later estimates grow
    assert budget.correction("m") == pytest.approx(2.0)
    budget.observe("m", estimated=20.0, actual=2.0)  # quicker: back down halfway to what it took ...
    assert budget.correction("m") == pytest.approx(1.1)
    budget.observe("m", estimated=11.0, actual=1.1)
    assert budget.correction("m") == 1.0  # ... never below the measured cost


def test_the_toy_model_opens_with_its_best_quick_setting(registry, headless):
    assert h.default_view(registry, MODEL) == ("2", "affinity") == h.TOY_VIEW  # 0.71 mIoU, ~0.2 s a request
    assert h.default_view(headless, "tiny, no head") == (h.SHIFTS[0], h.REFINES[0])  # one pass, each method's own
    assert all(v in choices for v, choices in zip(h.TOY_VIEW, (h.SHIFTS, h.REFINES)))
    with pytest.raises(PACLError, match="unknown model"):
        h.default_view(registry, "no such model")
