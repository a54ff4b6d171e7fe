"""The command line: outputs of `segment`, and bad input as one line on stderr with no partial files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pacl_core.backbone import load_backbone
from pacl_core.checkpoint import save_head
from pacl_core.cli import main
from pacl_core.pacl import VisionEmbedder
from tests.helpers import run_cli

TINY = ["--model", "PACL-Tiny-Test:none"]


@pytest.fixture
def images(tmp_path, rng):
    paths = []
    for i, size in enumerate([(40, 30), (25, 50)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.mark.slow
def test_help_lists_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0 and "segment" in out.stdout


@pytest.mark.parametrize("argv, unknown", [
    (["segment", "--image", "x.png", "--words", "dog", "--out", "o"], "--image"),  # not --image-size
    (["segment", "x.png", "--words", "dog", "--out", "o", "--shift", "2"], "--shift"),  # not --shifts
    (["toy", "generate", "--split", "test", "--see", "3", "--n", "2", "--out", "o"], "--see"),  # not --seed
])
def test_option_prefixes_are_not_read_as_other_options(argv, unknown, tmp_path, capsys):
    argv = [str(tmp_path / a) if a == "o" else a for a in argv]  # where anything wrongly run would write
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {unknown}" in err and "invalid int value" not in err, err
    assert not (tmp_path / "o").exists()


def test_toy_train_help_states_the_real_defaults(capsys):
    from pacl_core.toy.train import PACL_CAPTIONS, ToyTrainConfig

    with pytest.raises(SystemExit):
        main(["toy", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    phases = ToyTrainConfig().clip_phases
    assert "recipe, " + ",".join(str(p[1]) for p in phases) + ")" in text
    assert "recipe, " + ",".join(str(p[2]) for p in phases) + ")" in text
    assert "--pacl-captions {" + ",".join(PACL_CAPTIONS) + "}" in text, "the CLI offers exactly the config's choices"


def test_segment_writes_every_output(tmp_path, images, capsys):
    out = tmp_path / "out"
    code = main(["segment", *map(str, images), "--words", "dog, grass, dog, 🐶", "--out", str(out),
                 "--background", "score:0.0", *TINY])
    assert code == 0
    assert "removed duplicate word: dog" in capsys.readouterr().out
    for p, (h, w) in zip(images, [(40, 30), (25, 50)]):
        folder = out / p.stem
        names = sorted(f.name for f in folder.iterdir())
        assert names == ["heatmap_01-dog.png", "heatmap_02-grass.png", "heatmap_03-word.png", "mask.png",
                         "overlay.png", "result.json"]
        mask = np.asarray(Image.open(folder / "mask.png"))
        assert mask.shape == (h, w) and mask.max() <= 3
        result = json.loads((folder / "result.json").read_text())
        assert result["words"] == ["dog", "grass", "🐶"] and result["image_size"] == [w, h]
        assert result["mask_labels"] == ["background", "dog", "grass", "🐶"]
        assert result["method"] == "scclip" and result["model"] == "PACL-Tiny-Test:none"  # no head: SC-CLIP
        assert sum(result["pixel_share"].values()) == pytest.approx(1.0)
        for k, word in enumerate(result["mask_labels"]):  # the JSON shares agree with the mask PNG
            assert result["pixel_share"][word] == pytest.approx((mask == k).mean())
    assert not [f for f in tmp_path.iterdir() if "staging" in f.name]


@pytest.mark.slow
def test_segment_several_methods_writes_one_folder_per_method(tmp_path, images, capsys):
    out = tmp_path / "out"
    torch.manual_seed(0)  # the same random weights for every run below
    code = main(["segment", *map(str, images), "--words", "dog, grass", "--out", str(out),
                 "--method", "vanilla, sclip,vanilla,naclip", *TINY])
    assert code == 0 and "wrote 6 result folders" in capsys.readouterr().out
    assert sorted(f.name for f in out.iterdir()) == ["naclip", "sclip", "vanilla"]
    for method in ("vanilla", "sclip", "naclip"):
        alone = tmp_path / f"alone-{method}"
        torch.manual_seed(0)
        assert main(["segment", *map(str, images), "--words", "dog, grass", "--out", str(alone),
                     "--method", method, *TINY]) == 0
        for p in images:
            folder = out / method / p.stem
            assert json.loads((folder / "result.json").read_text())["method"] == method
            np.testing.assert_array_equal(np.asarray(Image.open(folder / "mask.png")),
                                          np.asarray(Image.open(alone / p.stem / "mask.png")))
    assert not [f for f in tmp_path.iterdir() if "staging" in f.name]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["non_image", "corrupt", "empty_words", "too_many_words", "missing", "bad_method",
                                  "bad_method_in_list", "empty_method_list",
                                  "zero_shifts", "too_many_shifts", "zero_image_size", "huge_image_size",
                                  "too_many_patches", "zero_window", "bad_device", "bad_templates"])
def test_bad_input_exits_nonzero_with_one_line_and_no_files(tmp_path, images, case):
    out = tmp_path / "out"
    words = "dog, sky"
    imgs = [images[0]]
    extra = []
    if case == "non_image":
        bad = tmp_path / "notes.png"
        bad.write_text("not really a png")
        imgs = [images[0], bad]  # the good image first: nothing of it may remain
    elif case == "corrupt":
        bad = tmp_path / "cut.png"
        bad.write_bytes(images[1].read_bytes()[:60])
        imgs = [images[0], bad]
    elif case == "empty_words":
        words = " , "
    elif case == "too_many_words":
        words = ", ".join(f"w{i}" for i in range(200))
    elif case == "missing":
        imgs = [tmp_path / "nope.jpg"]
    elif case == "bad_method":
        extra = ["--method", "magic"]
    elif case == "bad_method_in_list":
        extra = ["--method", "vanilla,magic"]
    elif case == "empty_method_list":
        extra = ["--method", " , "]
    elif case == "zero_shifts":
        extra = ["--shifts", "0"]
    elif case == "too_many_shifts":
        extra = ["--shifts", "9"]  # more than the 8 px patch has positions
    elif case == "zero_image_size":
        extra = ["--image-size", "0"]
    elif case == "huge_image_size":
        extra = ["--image-size", "100000"]  # resizing to it alone would need 30 GB
    elif case == "too_many_patches":
        extra = ["--image-size", "2000", "--method", "vanilla"]  # 250 x 250 patches of 8 px in one whole pass
    elif case == "zero_window":
        extra = ["--mode", "slide", "--window", "0"]
    elif case == "bad_device":
        extra = ["--device", "gpu"]
    elif case == "bad_templates":
        extra = ["--templates", "nope"]
    res = run_cli("segment", *imgs, "--words", words, "--out", out, *TINY, *extra)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()
    assert not [f for f in tmp_path.iterdir() if "staging" in f.name]


@pytest.mark.slow
def test_default_method_is_pacl_with_a_head_else_scclip(tmp_path, images, capsys):
    torch.manual_seed(0)
    tiny = load_backbone("PACL-Tiny-Test:none")
    head = save_head(tmp_path / "head", VisionEmbedder(tiny.width, tiny.embed_dim), tiny)
    for extra, method in (([], "scclip"), (["--head", str(head)], "pacl"), (["--method", "naclip"], "naclip")):
        out = tmp_path / method
        assert main(["segment", str(images[0]), "--words", "a, b", "--out", str(out), *TINY, *extra]) == 0
        assert json.loads((out / "img0" / "result.json").read_text())["method"] == method
        said = capsys.readouterr().out
        assert ("no PACL head" in said) == (method == "scclip")


@pytest.mark.slow
def test_offline_real_model_is_one_line(tmp_path, images, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = run_cli("segment", images[0], "--words", "dog", "--out", tmp_path / "o", "--model", "vit-b-16")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "cannot load ViT-B-16-quickgelu 'openai' weights" in res.stderr


def test_slide_mode_and_progress(tmp_path, images, capsys):
    out = tmp_path / "o"
    assert main(["segment", *map(str, images), "--words", "a, b", "--out", str(out), "--mode", "slide",
                 *TINY]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img0", "img1"]


@pytest.mark.slow
def test_shifted_passes_are_recorded_and_change_the_maps(tmp_path, images):
    outs = {}
    for m in (1, 4):
        out = tmp_path / f"m{m}"
        assert main(["segment", str(images[0]), "--words", "a, b", "--out", str(out), "--shifts", str(m), *TINY]) == 0
        outs[m] = json.loads((out / "img0" / "result.json").read_text())
        assert outs[m]["shifts"] == m
    assert outs[1]["mean_score"] != outs[4]["mean_score"]


def test_affinity_refinement_is_recorded_and_changes_the_maps(tmp_path, images):
    outs = {}
    for refine in ("none", "affinity"):
        out = tmp_path / refine
        assert main(["segment", str(images[0]), "--words", "a, b", "--out", str(out), "--refine", refine, *TINY]) == 0
        outs[refine] = json.loads((out / "img0" / "result.json").read_text())
        assert outs[refine]["refine"] == refine
    assert outs["none"]["mean_score"] != outs["affinity"]["mean_score"]


@pytest.mark.parametrize("command", [
    ["segment", "IMG", "--words", "dog", "--model", "toy"],
    ["evaluate", "--dataset", "toy", "--root", "ROOT", "--model", "toy"],
    ["toy", "generate", "--n", "2"],
    ["toy", "train", "--clip-steps", "1,1", "--pool", "8,8", "--pacl-steps", "1", "--eval-n", "0"],
    ["train", "--train-data", "DATA", "--model", "PACL-Tiny-Test:none", "--max-steps", "1"],
])
def test_an_out_folder_that_cannot_be_made_fails_first(tmp_path, images, capsys, command):
    (tmp_path / "ROOT").mkdir()
    (tmp_path / "a_file").write_text("x")
    subs = {"IMG": str(images[0]), "ROOT": str(tmp_path / "ROOT"), "DATA": str(tmp_path / "pairs.tsv")}
    argv = [subs.get(a, a) for a in command] + ["--out", str(tmp_path / "a_file" / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a_file is not a folder" in err[0], err


def test_a_file_system_failure_mid_run_is_one_line(monkeypatch, capsys):
    import pacl_core.cli.toy as toy_command

    def disk_full(args):
        raise OSError(28, "No space left on device", "/data/out/000001.png")

    monkeypatch.setattr(toy_command, "run_generate", disk_full)
    assert main(["toy", "generate", "--n", "2", "--out", "x"]) == 1
    assert capsys.readouterr().err.strip() == "error: No space left on device: /data/out/000001.png"
