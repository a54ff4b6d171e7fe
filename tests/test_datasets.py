"""The segmentation benchmarks read from tiny synthetic copies of their standard on-disk layouts.

Every test writes its own few images and label maps (palette / greyscale PNGs) in the real folder structure and
checks the labels the loader returns: train ids, the ignore index 255, the class counts and reduce_zero_label.
"""

from __future__ import annotations

import numpy as np
import pytest

from pacl_core.errors import PACLError
from pacl_core.eval.datasets import DATASETS, SegDataset, convert_label, get_spec
from tests.helpers import H, W, write_layout

# Raw values each benchmark's files hold: background / ignore / first / last class.


KIND = {"voc21": "voc", "voc20": "voc", "context60": "context", "context59": "context", "cocostuff171": "cocostuff",
        "ade150": "ade"}


def expected_ids(name: str, raw: np.ndarray) -> np.ndarray:
    """The standard conversions, written out by hand per benchmark."""
    r = raw.astype(np.int64)
    if name in ("voc21", "context60", "cocostuff171"):
        return r  # as stored: 0 = background (voc21/context60), 255 ignore
    out = np.full_like(r, 255)
    keep = (r != 0) & (r != 255)
    out[keep] = r[keep] - 1  # reduce_zero_label: 0 and 255 ignored, 1..K -> 0..K-1
    return out


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_each_layout_reads_labels_exactly(tmp_path, name):
    root, raws = write_layout(tmp_path, KIND[name])
    ds = SegDataset(name, root)
    assert len(ds) == 3
    for i, raw in enumerate(raws):
        iid, image, label = ds[i]
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert label.shape == (H, W) and label.dtype == np.uint8
        np.testing.assert_array_equal(label.astype(np.int64), expected_ids(name, raw))
        present = set(np.unique(label).tolist()) - {255}
        assert max(present) < ds.spec.num_classes


def test_class_counts_and_label_conventions():
    counts = {n: s.num_classes for n, s in DATASETS.items()}
    assert counts == {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "cocostuff171": 171, "ade150": 150}
    assert get_spec("voc21").classes[0] == "background" and get_spec("voc21").words == get_spec("voc20").classes
    assert get_spec("context60").words == get_spec("context59").classes
    assert get_spec("ade150").classes[0] == "wall" and get_spec("ade150").classes[-1] == "flag"
    assert get_spec("cocostuff171").classes[0] == "person" and get_spec("cocostuff171").classes[80] == "banner"
    # voc20: background (0) and boundaries (255) are ignored; aeroplane (1) -> 0, tv monitor (20) -> 19
    raw = np.array([[0, 255, 1, 20]], dtype=np.uint8)
    assert convert_label(raw, get_spec("voc20")).tolist() == [[255, 255, 0, 19]]
    assert convert_label(raw, get_spec("voc21")).tolist() == [[0, 255, 1, 20]]
    # ADE: 0 = other -> ignore, 150 -> 149
    assert convert_label(np.array([[0, 1, 150]]), get_spec("ade150")).tolist() == [[255, 0, 149]]


def test_wrong_annotation_files_are_refused(tmp_path):
    # raw COCO-Stuff ids (up to 182) instead of labelTrainIds: values beyond 170 must not pass silently
    root, _ = write_layout(tmp_path, "cocostuff", n=1, values=[0, 182])
    with pytest.raises(PACLError, match="outside its 171 classes"):
        SegDataset("cocostuff171", root)[0]


def test_missing_layout_is_one_clear_error(tmp_path):
    with pytest.raises(PACLError, match="no image folder"):
        SegDataset("ade150", tmp_path)
    root, _ = write_layout(tmp_path, "voc", n=2)
    assert len(SegDataset("voc21", root / "VOCdevkit", limit=1)) == 1  # VOCdevkit/ or VOC2012/ both work
    with pytest.raises(PACLError, match="no split"):
        SegDataset("voc21", root, split="test")


def test_context_class_names_follow_the_converters_train_ids():
    """mmsegmentation's Context converter numbers the 59 classes alphabetically (1 = aeroplane, 2 = bag, ...)."""
    from pacl_core.eval.datasets import CONTEXT_CLASSES

    assert len(CONTEXT_CLASSES) == 59 and len(set(CONTEXT_CLASSES)) == 59
    assert list(CONTEXT_CLASSES) == sorted(CONTEXT_CLASSES, key=lambda c: c.replace(" ", ""))
    assert CONTEXT_CLASSES[:3] == ("aeroplane", "bag", "bed") and CONTEXT_CLASSES[-1] == "wood"
    assert get_spec("context60").classes[0] == "background" and get_spec("context60").classes[1:] == CONTEXT_CLASSES
