"""The area threshold (SCLIP's and SC-CLIP's area_thd) on hand-computed cases, in the Segmenter and in evaluate.

The official rule (wangf3014/SCLIP clip_segmentor.py and SuleBai/SC-CLIP scclip_segmentor.py, postprocess_result):
count each class's pixels by argmax; a class with no more than area_thd of the counted pixels has its probability
set to 0 everywhere, so its pixels take the next best class; then the probability threshold applies.
"""

import math

import numpy as np
import pytest
import torch

from pacl_core.cli import main
from pacl_core.errors import PACLError
from pacl_core.eval.datasets import get_spec
from pacl_core.eval.evaluate import class_words, make_segmenter, resolve_protocol
from pacl_core.segment import Segmenter, area_keep, label_mask, parse_background, upsample_scores
from tests.helpers import random_image


def probability_scores(p):
    """Per-pixel word probabilities (K, H, W) -> cosines whose softmax at logit scale 1 gives exactly them."""
    return torch.log(torch.as_tensor(p, dtype=torch.float32))


def hand_case():
    """4 x 5 pixels, 3 words: word 0 best at 12 pixels, word 1 at 6, word 2 at 2 (10%, the threshold)."""
    p = np.zeros((3, 4, 5))
    p[:, :, :] = np.array([0.6, 0.3, 0.1])[:, None, None]  # every pixel word 0 ...
    p[:, 2:, 2:] = np.array([0.2, 0.7, 0.1])[:, None, None]  # ... but 6 pixels word 1
    p[:, 0, 0] = [0.3, 0.2, 0.5]  # word 2 best here; next best word 0 (0.3)
    p[:, 0, 1] = [0.1, 0.4, 0.5]  # word 2 best here; next best word 1 (0.4)
    return probability_scores(p)


def test_hand_computed_case():
    scores = hand_case()
    counts = torch.bincount(scores.argmax(0).flatten(), minlength=3)
    assert counts.tolist() == [12, 6, 2]
    keep = area_keep(counts, 0.1)
    assert keep.tolist() == [True, True, False]  # 2/20 is not above 0.1 (the official '>')
    assert area_keep(counts, 0.09).tolist() == [True, True, True]
    plain = label_mask(scores, 1.0)
    assert plain[0, 0] == 2 and plain[0, 1] == 2
    mask = label_mask(scores, 1.0, keep=keep)
    expected = plain.clone()
    expected[0, 0], expected[0, 1] = 0, 1  # the next best words
    assert torch.equal(mask, expected)
    # with the prob rule at 0.35 the zeroed word's probability no longer counts: (0, 0) keeps 0.3 < 0.35
    bg = parse_background("prob:0.35")
    assert label_mask(scores, 1.0, bg)[0, 0] == 2  # 0.5 without the area threshold
    with_area = label_mask(scores, 1.0, bg, keep)
    expected[0, 0] = -1
    assert torch.equal(with_area, expected)


def test_synonyms_count_as_one_class():
    counts = torch.tensor([12, 6, 2])
    assert area_keep(counts, 0.1, groups=[5, 7, 5]).tolist() == [True, True, True]  # words 0, 2: 14 of 20
    assert area_keep(counts, 0.35, groups=[5, 7, 5]).tolist() == [True, False, True]  # word 1: 6 of 20


def test_background_words_are_kept_and_not_counted():
    """The official class 0 (background words, here group -1) is never dropped and not part of the total."""
    counts = torch.tensor([12, 6, 2, 30])  # word 3 names the background: 30 of 50 pixels
    bg = [1, 2, 3, -1]
    assert area_keep(counts, 0.1, groups=bg).tolist() == [True, True, False, True]  # 2 of 20 is not above 0.1
    assert area_keep(counts, 0.25, groups=bg).tolist() == [True, True, False, True]  # 6 of 20 is above 0.25
    assert area_keep(counts, 0.25).tolist() == [False, False, False, True]  # counted as a class: 6 of 50 is not
    assert area_keep(counts, 0.7, groups=bg).tolist() == [False, False, False, True]
    assert area_keep(torch.tensor([5, 5]), 0.5, groups=[-1, -1]).tolist() == [True, True]


def test_names_file_may_name_the_background_first(tmp_path):
    lines = ["sky, wall, tree", *get_spec("voc21").words]
    (tmp_path / "cls_voc21.txt").write_text("\n".join(lines))
    words, word_class = class_words(get_spec("voc21"), tmp_path / "cls_voc21.txt")
    assert words[:4] == ["sky", "wall", "tree", "aeroplane"] and word_class[:4].tolist() == [0, 0, 0, 1]
    assert word_class[-1] == 20 and len(words) == 23
    with pytest.raises(PACLError, match="needs 20"):
        class_words(get_spec("voc20"), tmp_path / "cls_voc21.txt")


def test_no_class_left_is_all_background():
    scores = hand_case()
    keep = area_keep(torch.bincount(scores.argmax(0).flatten(), minlength=3), 0.7)
    assert not keep.any()
    assert (label_mask(scores, 1.0, keep=keep) == -1).all()


def test_segmenter_applies_it(tiny, rng):
    words = ["cat", "dog", "sky", "tree", "road", "car"]
    image = random_image(rng, 40, 56)
    plain = Segmenter(tiny, "vanilla", mode="whole", image_size=32)
    seg = plain(image, words)
    scores = upsample_scores(torch.from_numpy(seg.low_scores), image.shape[:2])  # (K, H, W)
    shares = np.bincount(seg.mask.flatten(), minlength=len(words)) / seg.mask.size
    present = sorted(s for s in shares if s > 0)
    assert len(present) >= 2, "the random case must predict at least two words"
    thr = (present[0] + present[1]) / 2  # drops the smallest predicted word only
    dropped = int(np.flatnonzero(shares == present[0])[0])
    out = Segmenter(tiny, "vanilla", mode="whole", image_size=32, area_threshold=thr)(image, words).mask
    second = scores.clone()
    second[dropped] = -math.inf
    expected = np.where(seg.mask == dropped, second.argmax(0).numpy(), seg.mask)
    np.testing.assert_array_equal(out, expected)
    assert (out != dropped).all() and (seg.mask == dropped).any()


def test_segmenter_checks_it(tiny):
    for bad in (-0.1, 1.0, "lots"):
        with pytest.raises(PACLError, match="area threshold"):
            Segmenter(tiny, "vanilla", area_threshold=bad)


def test_evaluate_takes_the_official_value(tiny):
    voc21, voc20 = get_spec("voc21"), get_spec("voc20")
    for method in ("sclip", "scclip"):
        proto = resolve_protocol(voc21, method, tiny, {})
        assert proto["area_threshold"] == 0.1
        assert make_segmenter(tiny, method, proto).area_threshold == 0.1
        assert resolve_protocol(voc20, method, tiny, {})["area_threshold"] is None
        assert resolve_protocol(voc21, method, tiny, {"area_threshold": "none"})["area_threshold"] is None
    assert resolve_protocol(voc21, "naclip", tiny, {})["area_threshold"] is None
    assert resolve_protocol(voc20, "vanilla", tiny, {"area_threshold": 0.2})["area_threshold"] == 0.2


def test_cli_refuses_a_bad_value(tmp_path, capsys):
    code = main(["evaluate", "--dataset", "voc20", "--root", str(tmp_path), "--area-threshold", "2",
                 "--model", "PACL-Tiny-Test:none"])
    err = capsys.readouterr().err
    assert code == 2 and "area threshold" in err and len(err.strip().splitlines()) == 1


def test_voc21_with_background_words_and_the_area_threshold(tmp_path, tiny):
    """evaluate on voc21 with background words first: its confusion equals the mask computed here, pixel by
    pixel, with background words -> class 0 and the area threshold counting only the 20 classes."""
    from pacl_core.eval.datasets import SegDataset
    from pacl_core.eval.evaluate import evaluate_methods, using_templates
    from tests.helpers import write_layout

    root, raws = write_layout(tmp_path, "voc", n=2)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(["sky, wall", *get_spec("voc21").words]))
    ds = SegDataset("voc21", root)
    user = {"area_threshold": 0.05, "background": "prob:0.06"}
    res = evaluate_methods(ds, tiny, ["vanilla"], user, names_file=names, progress=False)["vanilla"]
    proto = resolve_protocol(ds.spec, "vanilla", tiny, user)
    seg = make_segmenter(tiny, "vanilla", proto, num_words=22)
    words = ["sky", "wall", *get_spec("voc21").words]
    word_class = [0, 0, *range(1, 21)]
    conf = np.zeros((21, 21), dtype=np.int64)
    dropped = 0
    for i, raw in enumerate(raws):
        _, image, _ = ds[i]
        with using_templates(tiny, proto["templates"]):
            plain = seg(image, words, groups=[-1, -1, *range(1, 21)]).mask
            counted = seg(image, words, groups=word_class).mask  # background words counted as a class
        dropped += int((plain != counted).sum())
        for y, x in zip(*np.nonzero(raw != 255)):
            conf[raw[y, x], 0 if plain[y, x] < 2 else word_class[plain[y, x]]] += 1
    np.testing.assert_array_equal(np.asarray(res["confusion"]), conf)
    assert dropped > 0, "the case must tell background words from a class"
