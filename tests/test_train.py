"""Training data and the training loop: the three caption formats, skipping of broken samples, the resumable
data order, the schedule, and a 20-step run on generated pairs that lowers the loss and resumes exactly."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pacl_core.cli import main
from pacl_core.errors import PACLError
from pacl_core.train.data import CaptionLoader, TarShards, expand_braces, open_source
from pacl_core.train.loop import cosine_lr, list_checkpoints, read_log
from tests.helpers import make_pairs, write_csv

TINY = "PACL-Tiny-Test:none"


BROKEN = (b"\xff\xd8\xff\xe0 this is not a jpeg", "a broken picture")  # undecodable image
EMPTY = None  # replaced by a valid image with an empty caption


def with_bad(pairs):
    """The pairs plus one undecodable image and one empty caption, at fixed places."""
    bad = list(pairs)
    bad.insert(2, BROKEN)
    bad.insert(5, (pairs[0][0], "   "))
    return bad


def write_coco(root: Path, pairs) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "train2017").mkdir(exist_ok=True)
    images, anns = [], []
    for i, (data, cap) in enumerate(pairs):
        (root / "train2017" / f"{i:012d}.jpg").write_bytes(data)  # PNG bytes under .jpg: Pillow reads the content
        images.append({"id": 100 + i, "file_name": f"{i:012d}.jpg"})
        anns.append({"id": 1000 + i, "image_id": 100 + i, "caption": cap})
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root / "annotations" / "captions_train2017.json"


def write_shards(root: Path, pairs, per_shard: int) -> str:
    """img2dataset-style shards: KEY.jpg, KEY.txt and KEY.json per sample, consecutive in each tar."""
    root.mkdir(parents=True, exist_ok=True)
    n_shards = -(-len(pairs) // per_shard)
    for s in range(n_shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tf:
            for i in range(s * per_shard, min(len(pairs), (s + 1) * per_shard)):
                data, cap = pairs[i]
                for ext, payload in (("jpg", data), ("txt", cap.encode()), ("json", b"{}")):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    return str(root / f"{{00000..{n_shards - 1:05d}}}.tar")


class Words:
    """A stand-in tokenizer that keeps the captions visible: returns the caption index in a fixed vocabulary."""

    def __init__(self, captions):
        self.vocab = {c: i for i, c in enumerate(sorted(set(captions)))}

    def __call__(self, captions):
        return torch.tensor([self.vocab[c] for c in captions])


def epoch_captions(source, batch: int, world: int = 1, rank: int = 0, steps: int = 1, state=None):
    loader = CaptionLoader(source, batch, 16, lambda caps: caps, rank=rank, world=world, workers=0, prefetch=0,
                           state=state)
    it = loader.batches()
    out = [next(it) for _ in range(steps)]
    return [c for b in out for c in b.captions], out[-1].state


@pytest.mark.parametrize("fmt", ["csv", "coco", "wds"])
def test_every_format_reads_all_pairs_and_counts_the_bad_ones(tmp_path, fmt):
    pairs = make_pairs(10)
    data = with_bad(pairs)
    spec = {"csv": lambda: str(write_csv(tmp_path, data)), "coco": lambda: str(write_coco(tmp_path, data)),
            "wds": lambda: write_shards(tmp_path, data, per_shard=5)}[fmt]()
    source = open_source(spec)
    assert source.name == fmt
    caps, state = epoch_captions(source, batch=10)  # exactly the 10 good pairs make one epoch's batch
    assert sorted(caps) == sorted(c for _, c in pairs)
    assert state["epoch"] == 0
    # the skip counts are those of the bad records read so far, in the source's own order
    seen = Counter()
    for rec, cursor in source.records(0, 0, 1, 10):
        if not rec.caption:
            seen["empty_caption"] += 1
        elif rec.caption in (BROKEN[1], "a file that does not exist"):
            seen["unreadable_image"] += 1
        if cursor == state["cursor"]:
            break
    assert state["skipped"] == dict(seen)
    _, state = epoch_captions(source, batch=10, steps=2)  # past the end of epoch 0: every bad record was met
    assert state["skipped"]["empty_caption"] >= 1
    assert state["skipped"]["unreadable_image"] >= (2 if fmt == "csv" else 1)  # CSV also lists a missing file


def test_truncated_shard_is_counted_not_fatal(tmp_path):
    pairs = make_pairs(8)
    spec = write_shards(tmp_path, pairs, per_shard=4)
    raw = (tmp_path / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(raw[:600])  # cut inside the first member's data
    caps, state = epoch_captions(TarShards(spec, seed=0), batch=4, steps=3)  # 3 epochs of the one good shard
    assert sorted(caps) == sorted(c for _, c in pairs[:4] for _ in range(3))
    assert state["skipped"] == {"broken_shard": 2}  # met once per finished epoch, never fatal
    (tmp_path / "00001.tar").write_bytes(raw[:1024])  # cut right after the first image: its caption is missing
    caps, state = epoch_captions(TarShards(spec, seed=0), batch=4, steps=3)
    assert sorted(caps) == sorted(c for _, c in pairs[:4] for _ in range(3))
    assert state["skipped"] == {"missing_caption": 2}


def test_brace_notation_and_errors():
    assert expand_braces("s/{008..011}.tar") == ["s/008.tar", "s/009.tar", "s/010.tar", "s/011.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    with pytest.raises(PACLError, match="no such tar shard"):
        TarShards("/nonexistent/{0..3}.tar")
    with pytest.raises(PACLError, match="cannot tell the format"):
        open_source("pairs.parquet")


@pytest.mark.parametrize("fmt", ["csv", "wds"])
def test_a_saved_position_continues_with_exactly_the_next_samples(tmp_path, fmt):
    pairs = make_pairs(23)
    if fmt == "csv":
        source = open_source(str(write_csv(tmp_path, with_bad(pairs))), seed=3)
    else:
        source = TarShards(write_shards(tmp_path, with_bad(pairs), per_shard=7), seed=3, block=3)
    straight, _ = epoch_captions(source, batch=4, steps=9)  # crosses an epoch boundary (23 good pairs)
    first, state = epoch_captions(source, batch=4, steps=4)
    rest, _ = epoch_captions(source, batch=4, steps=5, state=json.loads(json.dumps(state)))
    assert first + rest == straight
    assert sorted(straight[:23]) == sorted(c for _, c in pairs)  # one epoch = every good pair once
    assert straight[:23] != [c for _, c in pairs]  # and shuffled


def test_global_batch_is_the_same_for_any_number_of_processes(tmp_path):
    source = open_source(str(write_csv(tmp_path, make_pairs(16), missing=False)), seed=1)  # nothing to skip
    single, _ = epoch_captions(source, batch=8, steps=2)
    for step in range(2):
        parts = [epoch_captions(source, batch=4, world=2, rank=r, steps=step + 1)[0][4 * step:] for r in (0, 1)]
        assert parts[0] + parts[1] == single[8 * step:8 * (step + 1)]


def test_cosine_schedule():
    lrs = [cosine_lr(s, 1.0, warmup=4, total=20) for s in range(20)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] < 0.01


def _train_args(data: str, out: Path, *extra) -> list[str]:
    return ["train", "--train-data", data, "--model", TINY, "--batch-size", "8", "--lr", "2e-3", "--warmup", "2",
            "--max-steps", "20", "--save-every", "10", "--log-every", "1", "--workers", "0", "--out", str(out),
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def run20(tmp_path_factory):
    """One 20-step training run on 48 generated pairs (checkpoints at 10 and 20), shared by the tests below."""
    root = tmp_path_factory.mktemp("run20")
    data = str(write_csv(root / "data", make_pairs(48)))
    torch.manual_seed(0)
    assert main(_train_args(data, root / "run")) == 0
    return data, root / "run"


@pytest.mark.slow
def test_twenty_steps_lower_the_loss(run20):
    _, out = run20
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, 21))
    losses = [r["loss"] for r in log]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses
    assert (out / "head.safetensors").is_file()
    assert json.loads((out / "head.json").read_text())["training"]["step"] == 20
    assert [p.stem for p in list_checkpoints(out)] == ["step_00000020", "step_00000010"]


@pytest.mark.slow
def test_resume_continues_exactly(run20, tmp_path, capsys):
    data, out = run20
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    for p in copy.glob("checkpoints/step_00000020.*"):  # as if killed between step 10 and step 20
        p.unlink()
    assert main(_train_args(data, copy, "--resume")) == 0
    assert "resuming at step 10" in capsys.readouterr().out
    a, b = read_log(out), read_log(copy)
    assert [r["step"] for r in b] == list(range(1, 21))
    for ra, rb in zip(a, b):
        assert (ra["loss"], ra["lr"], ra["grad_norm"]) == (rb["loss"], rb["lr"], rb["grad_norm"])
    from safetensors.torch import load_file

    ha, hb = load_file(str(out / "head.safetensors")), load_file(str(copy / "head.safetensors"))
    assert all(torch.equal(ha[k], hb[k]) for k in ha)


@pytest.mark.slow
def test_resume_refuses_other_settings_and_damaged_checkpoints_fall_back(run20, tmp_path, capsys):
    data, out = run20
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    assert main(_train_args(data, copy)) == 2  # no --resume: existing checkpoints are not overwritten
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(_train_args(data, copy, "--resume", "--lr", "1e-3")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: step_00000020.safetensors: was trained with lr=0.002") and err.count("\n") == 1
    (copy / "checkpoints" / "step_00000020.safetensors").write_bytes(b"truncated")
    assert main(_train_args(data, copy, "--resume", "--max-steps", "20")) == 0
    assert "resuming at step 10" in capsys.readouterr().out


def test_no_usable_pairs_is_a_clear_error(tmp_path, capsys):
    data = str(write_csv(tmp_path / "data", [BROKEN, BROKEN]))
    assert main(_train_args(data, tmp_path / "run")) == 2
    assert "no usable image-caption pair" in capsys.readouterr().err


@pytest.mark.slow
def test_bfloat16_autocast_gives_the_float32_loss_closely(run20, tmp_path):
    data, out = run20
    args = _train_args(data, tmp_path / "bf16", "--precision", "amp_bf16")
    args[args.index("--max-steps") + 1] = "2"
    torch.manual_seed(0)
    assert main(args) == 0
    bf16, fp32 = read_log(tmp_path / "bf16"), read_log(out)
    assert bf16[0]["loss"] == pytest.approx(fp32[0]["loss"], abs=0.05)  # same batch, same initial head
    assert bf16[0]["loss"] != fp32[0]["loss"]  # but really computed in bfloat16


@pytest.mark.parametrize("option, value, message", [
    ("--tau", "0", "--tau must be positive, got 0.0"),
    ("--keep", "0", "--keep must be positive, got 0"),
    ("--max-steps", "0", "--max-steps must be positive when given, got 0"),
    ("--hidden-dim", "0", "--hidden-dim must be positive when given, got 0"),
    ("--logit-scale", "-1", "--logit-scale must be positive when given, got -1.0"),
    ("--workers", "-1", "--workers must be 0 (load in this process) or more, got -1"),
    ("--beta2", "1", "--beta1 and --beta2 must be in [0, 1)"),
    ("--image-size", "0", "--image-size must be a whole number of pixels from 1 to 2048, got 0"),
    ("--device", "gpu", "unknown device 'gpu'; use cpu, cuda or cuda:N"),
])
def test_settings_that_cannot_work_are_one_line_errors_before_training(tmp_path, capsys, option, value, message):
    write_csv(tmp_path / "data", make_pairs(8))
    out = tmp_path / "run"
    argv = ["train", "--train-data", str(tmp_path / "data" / "pairs.tsv"), "--model", "PACL-Tiny-Test:none",
            "--out", str(out), "--batch-size", "4", "--workers", "0", "--no-progress", option, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert not out.exists() or not any(out.iterdir()), "nothing may be written"
