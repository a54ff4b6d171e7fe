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
from pacl_core.datasets import get_spec
from pacl_core.errors import PACLError
from pacl_core.evaluate import make_segmenter, resolve_protocol
from pacl_core.segment import Segmenter, area_keep, label_mask, parse_background, upsample_scores
from tests.conftest import random_image


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
    scores = upsample_scores(torch.from_numpy(seg.low_logits), image.shape[:2])  # (K, H, W)
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
