"""Training on cached frozen tokens (--cache-tokens): the same loss trajectory as without the cache (fp32 cache:
1e-5; fp16 cache: 1e-3), the frozen towers run once per image / caption and never on a cache hit, a killed first
epoch resumes, and a cache made with other settings is a one-line error that writes nothing."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from PIL import Image

from pacl_core.backbone import Backbone
from pacl_core.cli import main
from pacl_core.train.loop import Trainer, read_log
from tests.helpers import make_pairs, write_csv

pytestmark = pytest.mark.slow  # tower passes and training epochs (python -m pytest -m "not slow" skips it)
TINY = "PACL-Tiny-Test:none"
FP16_TOLERANCE = 1e-3  # loss difference allowed with a float16 cache (measured: about 2e-4 on this run)


@pytest.fixture
def counted(monkeypatch):
    """How many images / captions really went through the frozen ViT and text tower."""
    calls = {"vit": 0, "text": 0}
    patch_tokens, encode_text = Backbone.patch_tokens, open_clip.model.CLIP.encode_text

    def count_vit(self, images, *a, **k):
        calls["vit"] += images.shape[0]
        return patch_tokens(self, images, *a, **k)

    def count_text(self, text, *a, **k):
        calls["text"] += text.shape[0]
        return encode_text(self, text, *a, **k)

    monkeypatch.setattr(Backbone, "patch_tokens", count_vit)
    monkeypatch.setattr(open_clip.model.CLIP, "encode_text", count_text)
    return calls


def _args(data, out, *extra, steps=18):
    return ["train", "--train-data", data, "--model", TINY, "--batch-size", "8", "--lr", "2e-3", "--warmup", "2",
            "--max-steps", str(steps), "--save-every", "3", "--log-every", "1", "--workers", "0", "--out", str(out),
            "--no-progress", *extra]


def _run(argv) -> int:
    torch.manual_seed(0)
    return main(argv)


@pytest.fixture(scope="module")
def data_and_reference(tmp_path_factory):
    """48 pairs (29 distinct captions) and an 18-step (3-epoch) run without a cache."""
    root = tmp_path_factory.mktemp("cache")
    data = str(write_csv(root / "data", make_pairs(48), missing=False))
    assert _run(_args(data, root / "plain")) == 0
    return data, read_log(root / "plain")


def _losses(out):
    return [r["loss"] for r in read_log(out)]


def test_fp32_cache_gives_the_uncached_losses_and_runs_the_towers_once(data_and_reference, tmp_path, counted):
    data, ref = data_and_reference
    captions = {c for _, c in make_pairs(48)}
    cache = tmp_path / "cache"
    assert _run(_args(data, tmp_path / "a", "--cache-tokens", str(cache), "--cache-dtype", "fp32")) == 0
    assert _losses(tmp_path / "a") == pytest.approx([r["loss"] for r in ref], abs=1e-5)
    assert counted == {"vit": 48, "text": len(captions)}  # epoch 0 only: epochs 1 and 2 read the cache
    assert not list(cache.rglob("*.tmp"))
    manifest = json.loads((cache / "manifest.json").read_text())
    assert (manifest["model"], manifest["image_size"], manifest["dtype"]) == ("PACL-Tiny-Test", 32, "fp32")
    counted.update(vit=0, text=0)  # a new run on the full cache: the towers never run, the losses are the same
    assert _run(_args(data, tmp_path / "b", "--cache-tokens", str(cache), "--cache-dtype", "fp32")) == 0
    assert counted == {"vit": 0, "text": 0}
    assert _losses(tmp_path / "b") == pytest.approx([r["loss"] for r in ref], abs=1e-5)


def test_fp16_cache_stays_within_its_stated_tolerance(data_and_reference, tmp_path):
    data, ref = data_and_reference
    assert _run(_args(data, tmp_path / "a", "--cache-tokens", str(tmp_path / "cache"))) == 0
    losses = _losses(tmp_path / "a")
    assert losses[0] == pytest.approx(ref[0]["loss"], abs=1e-6)  # the first step uses freshly computed values
    assert losses == pytest.approx([r["loss"] for r in ref], abs=FP16_TOLERANCE)
    assert losses[6:] != [r["loss"] for r in ref[6:]]  # but later epochs really read float16
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["dtype"] == "fp16"


def test_a_killed_first_epoch_resumes_and_only_redoes_what_was_not_checkpointed(data_and_reference, tmp_path,
                                                                                monkeypatch, counted):
    data, ref = data_and_reference
    cache, out = tmp_path / "cache", tmp_path / "run"
    step, steps = Trainer.step, {"n": 0}

    def killed_at_step_5(self, batch, lr):
        steps["n"] += 1
        if steps["n"] == 5:
            raise KeyboardInterrupt
        return step(self, batch, lr)

    monkeypatch.setattr(Trainer, "step", killed_at_step_5)
    args = _args(data, out, "--cache-tokens", str(cache), "--cache-dtype", "fp32")
    assert _run(args) == 130  # killed after the step-3 checkpoint, in the middle of epoch 0
    assert counted["vit"] == 32  # steps 1-4 computed; step 4's tokens were pending, not yet in a shard
    monkeypatch.setattr(Trainer, "step", step)
    counted.update(vit=0, text=0)
    assert _run([*args, "--resume"]) == 0
    assert counted["vit"] == 48 - 24  # the 3 checkpointed steps' images are read from the cache
    assert _losses(out) == pytest.approx([r["loss"] for r in ref], abs=1e-5)
    assert not list(cache.rglob("*.tmp"))


def test_coco_embeds_every_caption_once_so_later_picks_are_cached(tmp_path, counted):
    pairs = make_pairs(32, seed=4)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "train2017").mkdir()
    images, anns = [], []
    for i in range(16):  # 16 images with 2 captions each: each epoch picks one at random
        (tmp_path / "train2017" / f"{i:012d}.png").write_bytes(pairs[i][0])
        images.append({"id": i, "file_name": f"{i:012d}.png"})
        anns += [{"id": 2 * i, "image_id": i, "caption": pairs[i][1]},
                 {"id": 2 * i + 1, "image_id": i, "caption": f"{pairs[16 + i][1]} (image {i})"}]
    spec = tmp_path / "annotations" / "captions_train2017.json"
    spec.write_text(json.dumps({"images": images, "annotations": anns}))
    assert _run(_args(str(spec), tmp_path / "plain", steps=8)) == 0
    counted.update(vit=0, text=0)
    assert _run(_args(str(spec), tmp_path / "cached", "--cache-tokens", str(tmp_path / "c"), "--cache-dtype", "fp32",
                      steps=8)) == 0
    assert counted["vit"] == 16
    assert counted["text"] == len({a["caption"] for a in anns})  # all of them in epoch 0, none after
    assert _losses(tmp_path / "cached") == pytest.approx(_losses(tmp_path / "plain"), abs=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--image-size", "48"], "image_size 32 (now 48)"),
    (["--model", "PACL-Toy:none"], "model 'PACL-Tiny-Test' (now 'PACL-Toy')"),
    (["--cache-dtype", "fp32"], "dtype 'fp16' (now 'fp32')"),
])
def test_a_cache_made_with_other_settings_is_refused_and_nothing_is_written(data_and_reference, tmp_path, capsys,
                                                                            extra, message):
    data, _ = data_and_reference
    cache = tmp_path / "cache"
    assert _run(_args(data, tmp_path / "first", "--cache-tokens", str(cache), steps=2)) == 0
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    capsys.readouterr()
    argv = _args(data, tmp_path / "second", "--cache-tokens", str(cache), steps=2)
    if extra[0] == "--model":
        argv[argv.index("--model") + 1] = extra[1]
    else:
        argv += extra
    assert _run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made with another setting" in err[0] and message in err[0], err
    assert not (tmp_path / "second").exists()
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before


def test_a_folder_that_is_not_a_cache_is_refused(data_and_reference, tmp_path, capsys):
    data, _ = data_and_reference
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "photos" / "mine.png")
    assert _run(_args(data, tmp_path / "run", "--cache-tokens", str(tmp_path / "photos"), steps=2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a token cache" in err[0], err
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["mine.png"] and not (tmp_path / "run").exists()
