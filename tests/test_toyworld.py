"""Toy-world generator: determinism, masks that agree with captions, held-out pairs, the on-disk layout."""


import json

import numpy as np
import pytest

from pacl_core.cli import main
from pacl_core.errors import PACLError
from pacl_core.toy import world as toyworld
from pacl_core.toy.world import CLASSES, SHAPES, UNSEEN_PAIRS, ToyDataset, make_scene, write_split


def test_scene_is_a_pure_function_of_seed_index_split():
    a, b = make_scene(3, 17, "test"), make_scene(3, 17, "test")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.caption == b.caption and a.objects == b.objects
    other = [make_scene(4, 17, "test"), make_scene(3, 18, "test"), make_scene(3, 17, "train")]
    assert all(not np.array_equal(a.image, o.image) for o in other)


def test_scene_arrays_have_the_right_shapes_and_ranges():
    s = make_scene(0, 0, size=64)
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (64, 64) and s.mask.max() < len(CLASSES)
    assert 1 <= len(s.objects) <= 3


@pytest.mark.parametrize("split", ["train", "test"])
def test_masks_agree_with_objects_and_captions(split):
    for i in range(40):
        s = make_scene(5, i, split)
        caption_words = set(s.caption.replace(",", " ").split())
        for k, obj in enumerate(s.objects, start=1):
            assert obj["shape"] in caption_words, f"'{obj['shape']}' missing from caption '{s.caption}'"
            pixels = s.instances == k
            assert pixels.sum() > 30, f"object {k} of scene {i} is (nearly) invisible"
            assert (s.mask[pixels] == CLASSES.index(obj["shape"])).all()
        assert ((s.instances == 0) == (s.mask == 0)).all(), "background in the mask must be background in instances"
        named = {w for w in caption_words if w in SHAPES}
        assert named == {o["shape"] for o in s.objects}, "the caption names exactly the shapes present"


def test_held_out_pairs_only_in_test_split():
    assert len(UNSEEN_PAIRS) == len(SHAPES)
    assert len({c for _, c in UNSEEN_PAIRS}) == len(SHAPES), "one held-out colour per shape, all different"
    train = [(o["shape"], o["colour"]) for i in range(300) for o in make_scene(0, i, "train").objects]
    assert not set(train) & UNSEEN_PAIRS
    test = [(o["shape"], o["colour"]) for i in range(100) for o in make_scene(0, i, "test").objects]
    assert set(test) & UNSEEN_PAIRS and set(test) - UNSEEN_PAIRS, "test mixes seen and unseen pairs"


def test_variants_differ_only_in_shape():
    variants = [make_scene(2, 9, "train", variant=v) for v in range(4)]
    shapes = [tuple(o["shape"] for o in v.objects) for v in variants]
    for j in range(len(shapes[0])):
        assert len({s[j] for s in shapes}) == 4, "each object has a different shape in every variant"
    assert len({(v.background["colour"], v.background["texture"]) for v in variants}) == 1
    assert len({tuple(tuple(o["centre"]) for o in v.objects) for v in variants}) == 1


def test_write_split_and_dataset_round_trip(tmp_path):
    write_split(tmp_path / "d", "test", seed=1, n=6, size=64)
    ds = ToyDataset(tmp_path / "d")
    assert len(ds) == 6 and ds.classes == CLASSES
    item, scene = ds[2], make_scene(1, 2, "test", 64)
    assert np.array_equal(item["image"], scene.image) and np.array_equal(item["mask"], scene.mask)
    assert item["caption"] == scene.caption
    unseen = ToyDataset.unseen_pixels(item)
    expect = np.zeros_like(unseen)
    for k, o in enumerate(scene.objects, start=1):
        expect |= (scene.instances == k) & o["unseen"]
    assert np.array_equal(unseen, expect)


def test_dataset_refuses_other_folders(tmp_path):
    with pytest.raises(PACLError, match="not a toy-world folder"):
        ToyDataset(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    (tmp_path / "annotations.jsonl").write_text("")
    with pytest.raises(PACLError, match="not a 'pacl-toyworld'"):
        ToyDataset(tmp_path)


def test_cli_generate_writes_the_layout(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["toy", "generate", "--split", "test", "--seed", "2", "--n", "3", "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n"] == 3 and meta["split"] == "test" and meta["image_size"] == toyworld.DEFAULT_SIZE
    rows = (out / "annotations.jsonl").read_text().splitlines()
    assert len(rows) == 3
    for sub in ("images", "masks", "instances"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert main(["toy", "generate", "--n", "0", "--out", str(out)]) == 2
    assert "error: --n must be at least 1" in capsys.readouterr().err
    assert main(["toy", "generate", "--n", "2", "--size", "0", "--out", str(tmp_path / "zero")]) == 2
    assert "error: --size must be between 32 and 1024 pixels, got 0" in capsys.readouterr().err
    assert not (tmp_path / "zero").exists()


def test_outline_darkens_edges_only_and_keeps_masks(monkeypatch):
    monkeypatch.setattr(toyworld, "OUTLINE", 0.0)
    plain = make_scene(5, 2, "train", size=96)
    monkeypatch.setattr(toyworld, "OUTLINE", 2 / 96)
    lined = make_scene(5, 2, "train", size=96)
    assert np.array_equal(plain.mask, lined.mask) and plain.caption == lined.caption
    changed = np.abs(plain.image.astype(int) - lined.image.astype(int)).sum(-1) > 30  # (H, W)
    assert changed.any()
    inner = np.zeros_like(changed)
    m = plain.mask
    inner[1:-1, 1:-1] = (m[1:-1, 1:-1] == m[:-2, 1:-1]) & (m[1:-1, 1:-1] == m[2:, 1:-1])
    # every darkened pixel lies within a few pixels of an object edge
    import cv2
    edges = cv2.dilate((~inner).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert not (changed & ~edges).any()
    assert lined.image[changed].mean() < plain.image[changed].mean()


def test_caption_attribute_probabilities(monkeypatch):
    monkeypatch.setitem(toyworld.CAPTION_P, "colour", 0.0)
    monkeypatch.setitem(toyworld.CAPTION_P, "texture", 0.0)
    monkeypatch.setitem(toyworld.CAPTION_P, "background", 0.0)
    for i in range(30):
        s = make_scene(9, i)
        words = set(s.caption.replace(",", " ").split())
        assert not words & (set(toyworld.COLOURS) | set(toyworld.TEXTURES) | {"background"}), s.caption
        assert all(o["shape"] in words for o in s.objects)


def test_shape_grating_is_inside_objects_only_and_oriented_by_shape(monkeypatch):
    monkeypatch.setattr(toyworld, "SHAPE_GRATING", 0.0)
    plain = make_scene(5, 2, "train", size=96)
    monkeypatch.setattr(toyworld, "SHAPE_GRATING", 0.3)
    grated = make_scene(5, 2, "train", size=96)
    assert np.array_equal(plain.mask, grated.mask) and plain.caption == grated.caption
    changed = np.abs(plain.image.astype(int) - grated.image.astype(int)).max(-1) > 0  # (H, W)
    assert changed.any() and not (changed & (plain.mask == 0)).any(), "the grating never touches the background"
    # the grating of SHAPES[k] is constant along its own direction (checked where that direction hits pixels exactly)
    for k, shape in enumerate(SHAPES):
        g = toyworld.shape_grating(shape, 24, 24)[..., 0]  # (24, 24)
        assert g.shape == (24, 24) and np.abs(g).max() <= 0.3 + 1e-6
        theta = k * np.pi / len(SHAPES)
        along = np.array([-np.sin(theta), np.cos(theta)])  # (dx, dy) perpendicular to the wave vector
        ys, xs = np.mgrid[4:20, 4:20]
        x2, y2 = np.round(xs + 3 * along[0]).astype(int), np.round(ys + 3 * along[1]).astype(int)
        exact = np.isclose(xs + 3 * along[0], x2) & np.isclose(ys + 3 * along[1], y2)
        if exact.any():  # for axis-aligned directions the shifted point is a pixel: the value is unchanged
            assert np.allclose(g[ys[exact], xs[exact]], g[y2[exact], x2[exact]], atol=1e-5)
    assert not np.allclose(toyworld.shape_grating("circle", 12, 12), toyworld.shape_grating("square", 12, 12))


def test_mentions_name_one_thing_in_the_scene(monkeypatch):
    rng = np.random.default_rng(0)
    kinds = {"object": 0, "background": 0}
    for i in range(60):
        s = make_scene(2, i)
        k = i % len(s.objects)
        words = toyworld.mention(s.objects, s.background, k, rng).split()
        assert words[0] in ("a", "an")
        if words[-1] == "background":
            kinds["background"] += 1
            assert set(words[1:-1]) <= {s.background["colour"], s.background["texture"]}
        else:
            kinds["object"] += 1
            o = s.objects[k]
            assert words[1:] == [o["colour"]] + ([o["texture"]] if o["texture"] != "plain" else []) + [o["shape"]]
    assert kinds["background"] > 5 and kinds["object"] > 30, kinds
    monkeypatch.setattr(toyworld, "MENTION_BACKGROUND_P", 0.0)
    s = make_scene(2, 0)
    assert all(toyworld.mention(s.objects, s.background, 0, rng).endswith(s.objects[0]["shape"]) for _ in range(20))
