"""The benchmark evaluation: metrics against hand-computed confusion matrices, the label mapping of the
segmenter's output (background -> class 0 on voc21), the CLI's outputs, and `--dataset toy`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pacl_core.checkpoint import save_head
from pacl_core.cli import main
from pacl_core.eval.datasets import SegDataset
from pacl_core.eval.evaluate import (
    class_words,
    evaluate_methods,
    make_segmenter,
    mask_to_classes,
    metrics_from_confusion,
    resolve_protocol,
    using_templates,
)
from pacl_core.methods import METHODS
from pacl_core.metrics import confusion_matrix
from pacl_core.pacl import VisionEmbedder
from pacl_core.toy.world import write_split
from tests.helpers import write_layout

TINY = "PACL-Tiny-Test:none"


@pytest.fixture
def backbone(tiny):
    """The session's tiny random backbone (tests/conftest.py); evaluation restores its templates after use."""
    return tiny


def test_miou_matches_a_hand_computed_confusion_matrix():
    label = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    conf = confusion_matrix(pred, label, 3)
    # by hand, rows = truth: 0 -> (0, 1); 1 -> (1, 1, 0); 2 -> (2, 0); the 255 pixel is ignored
    np.testing.assert_array_equal(conf, [[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    m = metrics_from_confusion(conf, ["a", "b", "c"])
    # IoU = TP / (TP + FP + FN): a 1/(1+2+1) = 1/4, b 2/(2+1+1) = 1/2, c 1/(1+0+1) = 1/2
    assert m["per_class_iou"] == pytest.approx({"a": 0.25, "b": 0.5, "c": 0.5})
    assert m["miou"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 7)
    assert m["mean_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)


def test_absent_classes_are_left_out_of_the_mean():
    conf = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 0]])  # class 2 never appears, class 1 only predicted
    m = metrics_from_confusion(conf, ["a", "b", "c"])
    assert m["per_class_iou"]["c"] is None and m["per_class_iou"]["b"] == 0.0
    assert m["miou"] == pytest.approx((3 / 4 + 0) / 2)


def test_background_maps_to_class_zero_and_words_to_their_class():
    mask = np.array([[-1, 0, 19], [2, -1, 1]], dtype=np.int16)
    from pacl_core.eval.datasets import get_spec

    words, word_class = class_words(get_spec("voc21"))
    assert len(words) == 20 and words[0] == "aeroplane"
    np.testing.assert_array_equal(mask_to_classes(mask, word_class, mask.shape), [[0, 1, 20], [3, 0, 2]])
    _, word_class20 = class_words(get_spec("voc20"))
    np.testing.assert_array_equal(mask_to_classes(mask[:, 1:], word_class20, (2, 2)), [[0, 19], [255 - 255, 1]])


def _pixels(raws, values):
    return {v: sum(int((r == v).sum()) for r in raws) for v in values}


def test_voc21_all_background_gives_the_hand_computed_miou(tmp_path, backbone):
    root, raws = write_layout(tmp_path, "voc", n=2)  # raw values 0 (bg), 255, 1, 20, 7 in bands
    ds = SegDataset("voc21", root)
    res = evaluate_methods(ds, backbone, ["vanilla"], {"background": "score:2"}, progress=False)["vanilla"]
    n = _pixels(raws, [0, 1, 20, 7])  # a cosine never exceeds 2: every pixel is background = class 0
    total = sum(n.values())
    assert res["per_class_iou"]["background"] == pytest.approx(n[0] / total)
    assert res["per_class_iou"]["aeroplane"] == 0.0 and res["per_class_iou"]["tv monitor"] == 0.0
    assert res["per_class_iou"]["bird"] is None
    assert res["miou"] == pytest.approx(n[0] / total / 4)
    assert res["pixel_accuracy"] == pytest.approx(n[0] / total)
    assert np.asarray(res["confusion"]).sum() == total  # the 255 boundary pixels are not counted


@pytest.mark.slow
@pytest.mark.parametrize("method, user", [(m, {}) for m in METHODS if m != "pacl"] + [("pacl", {}),
                                           ("pacl", {"shifts": 2}), ("vanilla", {"shifts": 2})])
def test_confusion_equals_the_segmenter_output_on_every_method(tmp_path, backbone, method, user):
    root, raws = write_layout(tmp_path, "voc", n=2)
    head = None
    if method == "pacl":
        head = save_head(tmp_path / "head", VisionEmbedder(backbone.width, backbone.embed_dim), backbone)
    ds = SegDataset("voc20", root)
    res = evaluate_methods(ds, backbone, [method], user, head=head, progress=False)[method]
    # recompute independently: the same segmenter settings, pixel by pixel, ignoring 0 and 255 of the raw labels
    proto = resolve_protocol(ds.spec, method, backbone, user)
    assert proto["shifts"] == user.get("shifts", 1) and res["protocol"]["shifts"] == proto["shifts"]
    seg = make_segmenter(backbone, method, proto, head=head, num_words=20)
    assert seg.shifts == proto["shifts"]
    conf = np.zeros((20, 20), dtype=np.int64)
    for i, raw in enumerate(raws):
        _, image, _ = ds[i]
        with using_templates(backbone, proto["templates"]):
            mask = seg(image, list(ds.spec.words)).mask
        assert mask.min() >= 0, "voc20 has no background rule"
        for y, x in zip(*np.nonzero((raw != 0) & (raw != 255))):
            conf[raw[y, x] - 1, mask[y, x]] += 1
    np.testing.assert_array_equal(np.asarray(res["confusion"]), conf)
    assert res["miou"] == pytest.approx(metrics_from_confusion(conf, ds.spec.classes)["miou"])


@pytest.mark.slow
def test_cli_writes_table_plot_and_json(tmp_path, capsys):
    root, _ = write_layout(tmp_path, "ade", n=2)
    out = tmp_path / "eval"
    rc = main(["evaluate", "--dataset", "ade150", "--root", str(root), "--model", TINY, "--limit", "1",
               "--out", str(out), "--json", "--no-progress"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)  # --json: nothing but JSON on stdout
    saved = json.loads((out / "metrics.json").read_text())
    assert printed["vanilla"]["miou"] == pytest.approx(saved["vanilla"]["miou"])
    assert saved["vanilla"]["images"] == 1 and len(saved["vanilla"]["per_class_iou"]) == 150
    assert (out / "iou_vanilla.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "per_class_iou.csv").read_text().splitlines()[0] == "class,vanilla"
    assert "| **mIoU** |" in (out / "per_class_iou.md").read_text()
    rc = main(["evaluate", "--dataset", "ade150", "--root", str(root), "--model", TINY, "--no-progress"])
    assert rc == 0 and "mIoU" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    root, _ = write_layout(tmp_path, "voc", n=1)
    rc = main(["evaluate", "--dataset", "voc20", "--root", str(root), "--model", TINY, "--background", "entropy:1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: voc20 has no background class") and err.count("\n") == 1
    rc = main(["evaluate", "--dataset", "context59", "--root", str(root), "--model", TINY])
    assert rc == 2 and "no image folder" in capsys.readouterr().err


@pytest.mark.slow
def test_toy_dataset_runs_the_toy_evaluation_with_the_given_options(tmp_path, capsys):
    write_split(tmp_path / "toy", split="test", seed=1, n=4)
    rc = main(["evaluate", "--dataset", "toy", "--root", str(tmp_path / "toy"), "--model", TINY, "--json",
               "--limit", "3", "--out", str(tmp_path / "o"), "--shifts", "2", "--refine", "affinity",
               "--method", "vanilla"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert "vanilla" in res and res["n_images"] == 3 and res["shifts"] == 2
    assert res["refine"] == "affinity" and res["roc_png"].endswith("coherence_roc.png")
    assert (tmp_path / "o" / "coherence_roc.png").is_file()


@pytest.mark.parametrize("extra", [["--logit-scale", "50"], ["--mode", "slide", "--window", "48"], ["--split", "train"],
                                   ["--short-side", "144"], ["--background", "entropy:1.5"]])
def test_toy_rejects_benchmark_only_options(tmp_path, capsys, extra):
    """The toy world has one protocol; a benchmark option is refused, not silently ignored."""
    rc = main(["evaluate", "--dataset", "toy", "--root", str(tmp_path), "--model", TINY, *extra])
    err = capsys.readouterr().err
    assert rc == 2 and extra[0] in err and "apply to --dataset toy" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_toy_world_end_to_end(tmp_path, capsys):
    write_split(tmp_path / "toy", split="test", seed=1, n=2)
    rc = main(["evaluate", "--dataset", "toy", "--root", str(tmp_path / "toy"), "--model", TINY, "--method", "vanilla",
               "--json", "--out", str(tmp_path / "o")])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert 0.0 <= res["vanilla"]["miou"] <= 1.0 and res["n_images"] == 2
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["vanilla"]["miou"] == res["vanilla"]["miou"]


def test_toy_world_with_shifted_passes_says_so(tmp_path, capsys):
    write_split(tmp_path / "toy", split="test", seed=1, n=2)
    rc = main(["evaluate", "--dataset", "toy", "--root", str(tmp_path / "toy"), "--model", TINY, "--method", "vanilla",
               "--shifts", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "masks from 2x2 shifted passes" in out and "vanilla: miou" in out, out


@pytest.mark.slow
def test_several_methods_in_one_pass_equal_each_method_alone(tmp_path, backbone):
    root, _ = write_layout(tmp_path, "voc", n=2)
    head = save_head(tmp_path / "head", VisionEmbedder(backbone.width, backbone.embed_dim), backbone)
    ds = SegDataset("voc21", root)
    together = evaluate_methods(ds, backbone, list(METHODS), {}, head=head, progress=False)
    assert list(together) == list(METHODS)
    for m in METHODS:
        alone = evaluate_methods(ds, backbone, [m], {}, head=head, progress=False)[m]
        assert together[m]["protocol"] == alone["protocol"], m
        np.testing.assert_array_equal(np.asarray(together[m]["confusion"]), np.asarray(alone["confusion"]), m)
