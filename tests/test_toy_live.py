"""Live stage 2 (pacl_core.toy.live): its check-set numbers are evaluate_toy's, and the generator trains, measures,
shows the chosen scene and stops when asked."""

import numpy as np
import pytest
import torch

from pacl_core.checkpoint import load_head
from pacl_core.segment import Segmenter
from pacl_core.toy import live as toylive
from pacl_core.toy import model as toymodel
from pacl_core.toy import world as toyworld
from pacl_core.toy.evaluate import evaluate_toy

pytestmark = pytest.mark.slow  # live training (python -m pytest -m "not slow" skips it)
TINY = toylive.LiveConfig(steps=6, pool=32, check=4, every=3, seed=2)


@pytest.fixture(scope="module")
def toy():
    return toymodel.load_toy_backbone()


def test_live_measurements_are_evaluate_toys_one_pass_numbers(toy, tmp_path):
    """Reference: the full evaluator on the same scenes written to disk."""
    check = toylive.make_check_set(toy, 6, seed=77)
    toyworld.write_split(tmp_path, "test", seed=77, n=6, size=toy.native_size)
    want = evaluate_toy(tmp_path, toy, roc_png=False)
    head = load_head(toy.default_head, toy)
    with torch.no_grad():
        got = toylive.measure(Segmenter(toy), head(check.tokens), check)
    vanilla = toylive.measure(Segmenter(toy), toy.vanilla_patch_embeddings(check.tokens), check)
    for name, row in (("pacl", got), ("vanilla", vanilla)):
        assert row["miou"] == pytest.approx(want[name]["miou"], abs=1e-6), name
        assert row["patch_acc"] == pytest.approx(want[name]["patch_acc"], abs=1e-6), name


def test_live_training_trains_measures_and_keeps_vanilla_fixed(toy):
    snaps = list(toylive.live_training(toy, TINY, scene=1, words=("background", "star", "ring")))
    assert [s.step for s in snaps] == [0, 3, 6]
    assert [s.done for s in snaps] == [False, False, True] and not snaps[-1].stopped
    assert [len(s.losses) for s in snaps] == [0, 3, 6] and all(np.isfinite(snaps[-1].losses))
    assert [c["step"] for c in snaps[-1].checks] == [0, 3, 6]
    assert all(0 <= c["miou"] <= 1 for c in snaps[-1].checks)
    first, last = snaps[0].head.state_dict(), snaps[-1].head.state_dict()
    assert any(not torch.equal(first[k], last[k]) for k in first), "the head learns"
    assert not any(p.requires_grad for p in toy.model.parameters()), "CLIP stays frozen"
    for s in snaps:  # vanilla CLIP's view and numbers never change: stage 2 does not touch CLIP
        assert np.array_equal(s.vanilla_view.mask, snaps[0].vanilla_view.mask) and s.vanilla == snaps[0].vanilla
        assert s.pacl_view.words == ["background", "star", "ring"]
    check = toylive.make_check_set(toy, TINY.check)
    assert np.array_equal(snaps[0].pacl_view.image, check.images[1]), "the chosen check scene"
    with torch.no_grad():
        again = toylive.measure(Segmenter(toy), snaps[-1].head(check.tokens), check)
    assert again == {k: snaps[-1].checks[-1][k] for k in again}, "each snapshot's head is the one measured"
    assert snaps[-1].example_captions and all(isinstance(c, str) for c in snaps[-1].example_captions)


def test_live_training_is_the_recipes_stage_2(toy):
    """Reference: the same steps through toytrain.train_pacl on the same pool."""
    from pacl_core.toy.train import stage2_pool, train_pacl

    cfg = TINY.train_config()
    images, draws = stage2_pool(cfg, progress=False)
    want, losses = train_pacl(toy, images, draws, cfg, progress=False)
    last = list(toylive.live_training(toy, TINY))[-1]
    assert last.losses == losses
    for k, v in want.state_dict().items():
        assert torch.equal(last.head.state_dict()[k], v), k


def test_stop_ends_the_run_with_a_last_snapshot(toy):
    calls = []
    snaps = list(toylive.live_training(toy, TINY, stop=lambda: calls.append(1) or len(calls) >= 2))
    assert [s.step for s in snaps] == [0, 2] and snaps[-1].stopped and snaps[-1].done
    gen = toylive.live_training(toy, TINY)
    next(gen)
    gen.close()  # a closed generator (a closed browser tab) just ends
