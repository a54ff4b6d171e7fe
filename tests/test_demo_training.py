"""The "Train PACL yourself" handlers (demo/training.py), called directly: a live run, its stop flag, the head it
leaves in the session's Model list (usable by Compare and the teaching view), and bad inputs."""

from pathlib import Path

import numpy as np
import pytest

from demo import handlers as h
from demo import training as tr
from demo.models import TOY_LABEL, ModelChoice, ModelRegistry
from pacl_core.checkpoint import load_head
from pacl_core.errors import PACLError
from pacl_core.toy.live import LiveConfig, check_scene

pytestmark = pytest.mark.slow  # live training in the demo (python -m pytest -m "not slow" skips it)
TINY = LiveConfig(pool=32, check=4, every=5)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry([ModelChoice(TOY_LABEL, "toy")])


@pytest.fixture(scope="module")
def run(registry):
    trainings, snaps = tr.Trainings(), []
    to_view = tr.to_view
    tr.to_view = lambda snap, *args, **kwargs: snaps.append(snap) or to_view(snap, *args, **kwargs)
    try:
        views = list(tr.train(registry, trainings, "alice", scene=2, word="background", steps=10, live=TINY))
    finally:
        tr.to_view = to_view
    return trainings, views, snaps


def curves(snap):
    """The numbers behind the two plots of a view: (loss rows, check rows)."""
    loss = [{"step": i + 1, "loss": v} for i, v in enumerate(snap.losses)]
    checks = [row for c in snap.checks for row in (
        {"step": c["step"], "measure": "PACL mIoU", "value": c["miou"]},
        {"step": c["step"], "measure": "PACL patch accuracy", "value": c["patch_acc"]},
        {"step": c["step"], "measure": "vanilla CLIP mIoU", "value": snap.vanilla["miou"]})]
    return loss, checks


def test_a_live_run_shows_progress_and_leaves_a_head_for_its_session(registry, run):
    trainings, views, snaps = run
    assert [v.done for v in views] == [False, False, True] and len(snaps) == len(views)
    assert views[0].status.startswith("Made 32 training scenes") and "Done in" in views[-1].status
    loss, checks = curves(snaps[-1])
    assert [row["step"] for row in loss] == list(range(1, 11))
    assert {row["measure"] for row in checks} == {"PACL mIoU", "PACL patch accuracy", "vanilla CLIP mIoU"}
    assert [row["step"] for row in checks] == [0, 0, 0, 5, 5, 5, 10, 10, 10]
    assert not np.array_equal(views[0].loss_plot, views[-1].loss_plot), "the curves are redrawn"
    for v in views:  # vanilla CLIP's pictures never change; PACL's are redrawn
        assert np.array_equal(v.vanilla_mask, views[0].vanilla_mask)
        assert np.array_equal(v.vanilla_heat, views[0].vanilla_heat)
    assert not np.array_equal(views[0].pacl_heat, views[-1].pacl_heat)
    label = views[-1].model_label
    assert label in registry.labels and label in views[-1].status
    assert label in trainings.labels_for(registry, "alice") and label not in trainings.labels_for(registry, "bob")
    assert trainings.running() == []
    weights, meta = map(Path, views[-1].files)
    assert weights.suffix == ".safetensors" and meta.suffix == ".json" and meta.is_file()
    assert REPO not in weights.parents, "nothing is written into the project's folders"
    head = load_head(weights, registry.backbone(TOY_LABEL))
    assert head.meta["training"]["steps"] == 10 and head.meta["tau"] == 0.1


def test_the_trained_head_runs_in_compare_and_the_teaching_view(registry, run, tmp_path):
    _, views, _ = run
    label = views[-1].model_label
    image = check_scene(2)
    result = h.compare(registry, image, "background, star, ring", ["vanilla", "pacl"], label, package=False)
    assert [p.ok for p in result.panels] == [True, True]
    lesson = h.lesson(registry, image, "background, star, ring", "star", label)
    assert lesson.method == "pacl"
    shipped = h.compare(registry, image, "background, star, ring", ["pacl"], TOY_LABEL, package=False)
    assert not np.array_equal(shipped.panels[0].segmentation.patch_scores, result.panels[1].segmentation.patch_scores)


def test_stop_ends_the_run_and_keeps_the_head_so_far(registry):
    trainings = tr.Trainings()
    views = []
    for v in tr.train(registry, trainings, "carol", steps=500, live=TINY):
        views.append(v)
        trainings.stop("carol")  # as the Stop button does, from another request
    assert len(views) == 2 and views[-1].done and views[-1].status.startswith("Stopped at step 1.")
    assert views[-1].model_label in trainings.labels_for(registry, "carol")
    assert not trainings.stop("carol"), "nothing left to stop"


def test_a_closed_tab_stops_its_run_and_forgets_its_heads(registry):
    trainings = tr.Trainings()
    views = list(tr.train(registry, trainings, "dave", steps=10, live=TINY))
    label, files = views[-1].model_label, [Path(f) for f in views[-1].files]
    gen = tr.train(registry, trainings, "dave", steps=500, live=TINY)
    next(gen)
    trainings.close(registry, "dave")  # the page's unload event
    rest = list(gen)
    assert rest[-1].done and "Stopped" in rest[-1].status and rest[-1].model_label is None
    assert label not in registry.labels and not any(f.exists() for f in files)
    assert trainings._heads.get("dave", []) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"scene": 7}, "check scene 7 must be from 0 to 3"),
    ({"word": "dog"}, "pick the word to watch"),
    ({"steps": 5}, "training steps must be from 10"),
    ({"steps": "many"}, "must be a whole number"),
])
def test_bad_inputs_are_one_sentence_before_any_work(registry, kwargs, message):
    trainings = tr.Trainings()
    with pytest.raises(PACLError, match=message):
        next(tr.train(registry, trainings, "erin", **{"steps": 10, **kwargs}, live=TINY))
    assert trainings.running() == []


def test_scene_picker_shows_the_scene_and_a_word_in_it():
    img = tr.scene_preview(3)
    assert img.shape == (96, 96, 3) and np.array_equal(img, check_scene(3))
    assert tr.scene_word(3) in tr.CLASSES[1:]
    with pytest.raises(PACLError):
        tr.scene_preview(-1)
