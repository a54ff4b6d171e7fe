"""Miniature toy training: both stages run in seconds, their losses fall, and `toy train` writes loadable files."""


import json
import time

import numpy as np
import pytest
import torch

from pacl_core.checkpoint import load_head
from pacl_core.cli import main
from pacl_core.errors import PACLError
from pacl_core.toy import model as toymodel
from pacl_core.toy import world as toyworld
from pacl_core.toy.train import ToyTrainConfig, _batches, make_pool, steps_per_epoch, train_clip, train_pacl

pytestmark = pytest.mark.slow  # trains toy towers and heads (python -m pytest -m "not slow" skips it)
TINY = dict(clip_phases=((48, 14, 32), (96, 14, 32)), variants=4, clip_batch=32, clip_warmup=2, pacl_steps=14,
            pacl_batch=32, threads=1)


@pytest.fixture(scope="module")
def tiny_run():
    torch.set_num_threads(1)
    cfg = ToyTrainConfig(**TINY)
    torch.manual_seed(0)
    model = toymodel.create_toy_clip()
    clip_losses = {}
    for size, steps, pool in cfg.clip_phases:  # 48 px, then the native 96 px
        images, captions, mentions = make_pool(0, pool, size, cfg.variants, progress=False)
        clip_losses[size] = train_clip(model, open_clip_tokenizer(), images, captions, cfg, steps, progress=False)
    backbone = toymodel.toy_backbone(model)
    head, pacl_losses = train_pacl(backbone, images, mentions, cfg, progress=False)
    return cfg, clip_losses, pacl_losses, head, backbone


def open_clip_tokenizer():
    import open_clip

    return open_clip.get_tokenizer(toymodel.CONFIG_NAME)


def test_batches_keep_scene_variants_together():
    batches = list(_batches(n=40, batch=8, steps=12, seed=0, variants=4))
    assert all(len(b) == 8 for b in batches)
    for b in batches:
        groups = b.reshape(-1, 4) // 4
        assert (groups == groups[:, :1]).all(), "a batch holds whole groups of 4 variants"
    seen = np.concatenate(batches[:5])
    assert len(set(seen.tolist())) == 40, "an epoch visits every scene once"


@pytest.mark.parametrize("n,batch,variants", [(40, 8, 4), (44, 8, 4), (30, 7, 1)])
def test_steps_per_epoch_is_where_batches_draw_a_new_permutation(n, batch, variants):
    """Reference: epoch e's batches are consecutive slices of the e-th seeded permutation of the groups."""
    per, groups, per_batch = steps_per_epoch(n, batch, variants), n // variants, batch // variants
    assert per == groups // per_batch
    got = list(_batches(n=n, batch=batch, steps=3 * per, seed=1, variants=variants))
    g = np.random.default_rng(1)
    for e in range(3):
        order = g.permutation(groups)
        for s in range(per):
            chosen = order[s * per_batch:(s + 1) * per_batch]
            want = (chosen[:, None] * variants + np.arange(variants)[None, :]).ravel()
            assert np.array_equal(got[e * per + s], want), (e, s)
    assert steps_per_epoch(16, 128, 4) == 1, "a pool smaller than one batch: every batch is a whole epoch"


def test_clip_stage_loss_falls_in_both_phases(tiny_run):
    _, losses, _, _, _ = tiny_run
    for size, phase in losses.items():
        assert len(phase) == 14 and all(np.isfinite(phase))
        assert np.mean(phase[-3:]) < np.mean(phase[:3]) - 0.2, (size, phase)


def test_sincos_grid_swaps_positions_only_inside():
    from pacl_core.toy.train import sincos_grid

    visual = toymodel.create_toy_clip().visual
    native = visual.positional_embedding.detach().clone()  # (1 + 144, W)
    with sincos_grid(visual, 6):
        assert visual.positional_embedding.shape == (1 + 36, native.shape[1])
        assert visual(torch.zeros(2, 3, 48, 48)).shape == (2, 64)
    assert torch.equal(visual.positional_embedding, native)


def test_pacl_stage_loss_falls_and_backbone_stays_frozen(tiny_run):
    _, _, losses, head, backbone = tiny_run
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert head.linear.weight.shape == (backbone.embed_dim, backbone.width)


def tiny_cli_train(out, capsys, *extra) -> dict:
    """`toy train` in miniature (2 + 2 stage-1 steps, 2 stage-2 steps, 16 scenes); returns toy_clip.json."""
    code = main(["toy", "train", "--out", str(out), "--clip-steps", "2,2", "--pacl-steps", "2", "--pool", "16,16",
                 "--threads", "1", *extra])
    assert code == 0, capsys.readouterr().err
    return json.loads((out / "toy_clip.json").read_text())


def test_toy_train_cli_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "toy"
    meta = tiny_cli_train(out, capsys, "--eval-n", "3", "--pacl-captions", "scene")
    assert meta["config"] == toymodel.CONFIG_NAME
    assert [p[1] for p in meta["training"]["train"]["clip_phases"]] == [2, 2]
    assert meta["training"]["train"]["pacl_captions"] == "scene"
    for method in ("vanilla", "pacl"):
        for key in ("miou", "patch_acc", "coherence_auc"):
            assert 0 <= meta["training"]["eval"][method][key] <= 1
    backbone = toymodel.load_toy_backbone(root=out)
    assert backbone.default_head == out / toymodel.HEAD_FILE
    head = load_head(backbone.default_head, backbone)
    assert head.meta["training"]["train"]["pacl_steps"] == 2
    assert main(["toy", "train", "--out", str(out), "--pool", "0,5"]) == 2
    assert "error: --pool needs 2 comma-separated integers of at least 1" in capsys.readouterr().err


def test_pool_mentions_name_one_object_per_scene_in_every_draw():
    images, captions, draws = make_pool(3, 24, 48, 4, progress=False, mention_draws=3)
    assert images.shape == (24, 48, 48, 3) and len(captions) == 24
    assert len(draws) == 3 and all(len(d) == 24 for d in draws)
    assert draws[0] != draws[1], "draws are independent"
    assert make_pool(3, 24, 48, 4, progress=False, mention_draws=3)[2] == draws, "and seeded"
    for g in range(6):
        scenes = [toyworld.make_scene(3, g, "train", 48, variant=v) for v in range(4)]
        assert [s.caption for s in scenes] == captions[4 * g:4 * g + 4]
        for d in draws:
            named = d[4 * g:4 * g + 4]
            # one object index is named in every variant that does not name the background
            k = [i for i in range(len(scenes[0].objects))
                 if all(m.endswith("background") or m.endswith(" " + s.objects[i]["shape"])
                        for m, s in zip(named, scenes))]
            assert k, named


def test_pool_from_worker_processes_equals_the_serial_pool(monkeypatch):
    """Generation in forked workers (the shipped recipe uses one per thread) changes the speed, never the pool."""
    from pacl_core.toy import train as toytrain

    if toytrain._fork_context() is None:
        pytest.skip("this platform cannot fork")
    serial = make_pool(5, 40, 48, 4, progress=False, mention_draws=2)
    monkeypatch.setattr(toytrain, "PARALLEL_MIN_GROUPS", 2)  # 10 groups: 8 chunks over 2 workers
    parallel = make_pool(5, 40, 48, 4, progress=False, mention_draws=2, workers=2)
    assert np.array_equal(serial[0], parallel[0]) and serial[1:] == parallel[1:]
    assert len(parallel[1]) == 40 and len(parallel[2]) == 2 and all(len(d) == 40 for d in parallel[2])


def test_config_checks_the_caption_switch():
    with pytest.raises(PACLError, match="pacl_captions must be one of"):
        ToyTrainConfig(pacl_captions="masks")
    with pytest.raises(PACLError, match="pacl_lr must be in"):
        ToyTrainConfig(pacl_lr=0.0)


def test_pacl_stage_uses_the_next_draw_each_epoch(tiny_run):
    cfg, _, _, _, backbone = tiny_run
    images, captions, draws = make_pool(1, 32, 96, 4, progress=False, mention_draws=2)
    cfg = ToyTrainConfig(**{**TINY, "pacl_steps": 6, "pacl_batch": 16})  # 2 steps per epoch of 8 groups
    _, one = train_pacl(backbone, images, draws[0], cfg, progress=False)
    _, same = train_pacl(backbone, images, [draws[0], draws[0]], cfg, progress=False)
    _, two = train_pacl(backbone, images, draws, cfg, progress=False)
    assert one == same
    assert two[:2] == one[:2], "the first epoch uses the first draw"
    assert two[2:4] != one[2:4], "the second epoch uses the second"


# ---- stage 2 alone on a given tower (`toy train --clip`) ----------------------------------------------------
def test_stage2_alone_trains_only_the_head_on_the_frozen_tower(tmp_path, capsys):
    """Reference: the same stage 2 run by hand on the tower and the pool train_toy would give it."""
    import copy

    from pacl_core.toy.train import file_sha256, stage2_pool

    tower = toymodel.clip_path()
    before = file_sha256(tower)
    out = tmp_path / "head"
    code = main(["toy", "train", "--out", str(out), "--clip", str(tower), "--pacl-steps", "3", "--pool", "32",
                 "--threads", "1", "--eval-n", "3", "--seed", "4", "--pacl-lr", "3e-3"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["toy_pacl_head.json", "toy_pacl_head.safetensors"]
    assert file_sha256(tower) == before, "the tower is frozen"
    backbone = toymodel.load_toy_backbone()
    head = load_head(out / toymodel.HEAD_FILE, backbone)
    info = head.meta["training"]
    assert info["stage"] == "pacl only" and info["tower_sha256"] == before and info["train"]["seed"] == 4
    assert info["train"]["pacl_lr"] == 3e-3
    assert 0 <= info["eval"]["pacl"]["miou"] <= 1 and info["eval"]["n_images"] == 3

    cfg = ToyTrainConfig(seed=4, pacl_steps=3, pacl_lr=3e-3, threads=1,
                         clip_phases=(ToyTrainConfig().clip_phases[0], (96, 250, 32)))
    images, draws = stage2_pool(cfg, progress=False)
    assert images.shape == (32, 96, 96, 3) and len(draws) == cfg.mention_draws
    want, _ = train_pacl(copy.deepcopy(toymodel.load_toy_tower(tower)), images, draws, cfg, progress=False)
    for k, v in want.state_dict().items():
        assert torch.equal(head.state_dict()[k], v), k

    split = tmp_path / "split"
    assert main(["toy", "generate", "--split", "test", "--seed", "1000", "--n", "2", "--out", str(split)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--dataset", "toy", "--root", str(split), "--model", "toy", "--json",
                 "--head", str(out / toymodel.HEAD_FILE)]) == 0, "--head takes it"
    assert json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kind, message", [
    ("a head, not a tower", "is a 'pacl-head' checkpoint, expected 'pacl-toy-clip'"),
    ("no such file", "no such checkpoint file"),
    ("stage-1 option", "--clip-steps sets stage 1, which --clip skips"),
    ("two pools", "--pool needs 1 comma-separated integers"),
    ("zero learning rate", "--pacl-lr must be in (0, 1], got 0.0"),
])
def test_stage2_alone_refuses_bad_input_in_one_line(tmp_path, capsys, kind, message):
    args = ["--clip", str(toymodel.head_path())]
    if kind == "no such file":
        args = ["--clip", str(tmp_path / "missing.safetensors")]
    elif kind == "stage-1 option":
        args = ["--clip", str(toymodel.clip_path()), "--clip-steps", "2,2"]
    elif kind == "two pools":
        args = ["--clip", str(toymodel.clip_path()), "--pool", "32,32"]
    elif kind == "zero learning rate":
        args = ["--clip", str(toymodel.clip_path()), "--pacl-lr", "0"]
    out = tmp_path / "out"
    assert main(["toy", "train", "--out", str(out), "--eval-n", "0", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists(), "nothing written"


def test_tower_candidates_keep_the_tower_with_the_lowest_held_out_caption_loss(tmp_path, capsys):
    """The rule reads captions only; the kept tower and head are the best-scored candidate's, byte for byte."""
    from safetensors.torch import load_file

    out = tmp_path / "toy"
    meta = tiny_cli_train(out, capsys, "--clip-steps", "2,4", "--tower-candidates", "2", "--eval-n", "0")
    record = meta["training"]["tower_selection"]
    scores = {int(k): v for k, v in record["held_out_loss"].items()}
    assert sorted(scores) == [2, 4] and all(np.isfinite(list(scores.values())))
    chosen = min(scores, key=scores.get)
    assert record["chosen_last_phase_step"] == chosen and "no masks" in record["rule"]
    for step in (2, 4):  # every candidate stays on disk, the phase's end included
        assert (out / f"candidate_{step}" / "toy_clip.safetensors").is_file()
        assert (out / f"candidate_{step}" / toymodel.HEAD_FILE).is_file()
    for name in ("toy_clip.safetensors", toymodel.HEAD_FILE):  # the kept files are the chosen candidate's
        a, b = load_file(out / name), load_file(out / f"candidate_{chosen}" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    backbone = toymodel.load_toy_backbone(root=out)
    head = load_head(backbone.default_head, backbone)
    from pacl_core.toy.train import held_out_pacl_loss

    cfg = ToyTrainConfig(clip_phases=((48, 2, 16), (96, 4, 16)), pacl_steps=2, threads=1)
    assert held_out_pacl_loss(backbone, head, cfg) == pytest.approx(scores[chosen], rel=1e-5)
    assert main(["toy", "train", "--out", str(tmp_path / "x"), "--clip-steps", "2,4", "--tower-candidates", "4"]) == 2
    assert "--tower-candidates must be steps from 1 to 3" in capsys.readouterr().err


class Killed(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("kill_at", [("clip", 0, 4), ("pacl", 0, 4)])
def test_a_killed_toy_run_resumes_from_its_last_checkpoint_to_the_same_weights(tmp_path, monkeypatch, kill_at):
    from pacl_core.toy import train as toytrain

    monkeypatch.setattr(toytrain, "CHECKPOINT_EVERY", 2)
    cfg = dict(clip_phases=((48, 6, 32), (96, 6, 32)), variants=4, clip_batch=32, clip_warmup=2, pacl_steps=6,
               pacl_batch=32, threads=1)
    toytrain.train_toy(tmp_path / "whole", ToyTrainConfig(**cfg), progress=False, evaluate_n=0)
    real_save = toytrain.RunCheckpoint.save

    def save_then_die(self, stage, phase, step, *args, **kwargs):
        real_save(self, stage, phase, step, *args, **kwargs)
        if (stage, phase, step) == kill_at:
            raise Killed

    monkeypatch.setattr(toytrain.RunCheckpoint, "save", save_then_die)
    with pytest.raises(Killed):
        toytrain.train_toy(tmp_path / "broken", ToyTrainConfig(**cfg), progress=False, evaluate_n=0)
    assert (tmp_path / "broken" / ".resume" / "checkpoint.safetensors").is_file()
    monkeypatch.setattr(toytrain.RunCheckpoint, "save", real_save)
    toytrain.train_toy(tmp_path / "broken", ToyTrainConfig(**cfg), progress=False, evaluate_n=0, resume=True)
    assert not (tmp_path / "broken" / ".resume").exists()  # removed once the run is done
    for name in ("toy_clip.safetensors", toymodel.HEAD_FILE):
        whole, resumed = _tensors(tmp_path / "whole" / name), _tensors(tmp_path / "broken" / name)
        assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole), name
    with pytest.raises(PACLError, match="holds a run with other settings"):
        monkeypatch.setattr(toytrain.RunCheckpoint, "save", save_then_die)
        with pytest.raises(Killed):
            toytrain.train_toy(tmp_path / "other", ToyTrainConfig(**cfg), progress=False, evaluate_n=0)
        toytrain.train_toy(tmp_path / "other", ToyTrainConfig(**{**cfg, "seed": 5}), progress=False, evaluate_n=0,
                           resume=True)


def test_toy_train_refuses_an_unwritable_output_folder_before_any_work(tmp_path, capsys):
    start = time.perf_counter()
    assert main(["toy", "train", "--out", "/proc/pacl-run", "--clip-steps", "2,2", "--eval-n", "0"]) == 2
    assert time.perf_counter() - start < 5 and "cannot write there" in capsys.readouterr().err


def test_a_folder_that_became_unwritable_is_one_line_at_save_time(tmp_path):
    from pacl_core.checkpoint import save_tensors

    gone = tmp_path / "run"
    gone.write_text("the run's folder was replaced by a file")
    with pytest.raises(PACLError, match="cannot write there"):
        save_tensors(gone / "toy_pacl_head", {"w": torch.zeros(2)}, {})
