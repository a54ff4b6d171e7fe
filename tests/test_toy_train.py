"""Miniature toy training: both stages run in seconds, their losses fall, and `toy train` writes loadable files."""

import json

import numpy as np
import pytest
import torch

from pacl_core import toymodel, toyworld
from pacl_core.checkpoint import load_head
from pacl_core.cli import main
from pacl_core.toytrain import ToyTrainConfig, _batches, make_pool, steps_per_epoch, train_clip, train_pacl

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
    from pacl_core.toytrain import sincos_grid

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


def test_toy_train_cli_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "toy"
    code = main(["toy", "train", "--out", str(out), "--clip-steps", "2,2", "--pacl-steps", "2", "--pool", "16,16",
                 "--threads", "1", "--eval-n", "3", "--pacl-captions", "scene"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "toy_clip.json").read_text())
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
    from pacl_core import toytrain

    if toytrain._fork_context() is None:
        pytest.skip("this platform cannot fork")
    serial = make_pool(5, 40, 48, 4, progress=False, mention_draws=2)
    monkeypatch.setattr(toytrain, "PARALLEL_MIN_GROUPS", 2)  # 10 groups: 8 chunks over 2 workers
    parallel = make_pool(5, 40, 48, 4, progress=False, mention_draws=2, workers=2)
    assert np.array_equal(serial[0], parallel[0]) and serial[1:] == parallel[1:]
    assert len(parallel[1]) == 40 and len(parallel[2]) == 2 and all(len(d) == 40 for d in parallel[2])


def test_config_checks_the_caption_switch():
    with pytest.raises(AssertionError, match="pacl_captions"):
        ToyTrainConfig(pacl_captions="masks")


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
